"""The code sandbox (strop.sandbox) and the code_tests reward on it. Every escape found in
issue 18 is replayed: each is contained (the host shows no trace), scores 0 and records why.
The bounds hold: the wall clock with a setsid grandchild holding stderr, an stderr flood that
costs the trainer no memory, fork and memory bombs. No backend means a refusal, unless the
caller opts into 'unsafe'. Each escape runs on every backend that works on this machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from strop import sandbox as S
from strop.errors import StropError
from strop.train import rewards as R

WORKING = [b for b in ("bwrap", "namespaces") if not S._probe(b)]
P = [[{"role": "user", "content": "q"}]]
ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5"
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture(params=WORKING or ["none"])
def backend(request):
    if request.param == "none":
        pytest.skip(f"no sandbox backend works here: {S._PROBLEMS or 'probe failed'}")
    return request.param


def scored(code: str, backend: str, **kw) -> tuple[float, str, str]:
    """(score, reason, kind) of a completion ``code`` under code_tests; the completion also
    defines a working add(), so it scores 1 unless the escape part fails."""
    got = R.code_tests(P, [ADD + code], tests=[TESTS], sandbox=backend, **kw)
    assert isinstance(got, R.Scores)
    return got[0], got.reasons[0], got.kinds[0]


def test_a_passing_solution_scores_one_with_scratch_space_and_no_environment(backend, monkeypatch):
    monkeypatch.setenv("STROP_SECRET", "x")
    code = (
        "import os\nopen('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'"
        "\nassert 'STROP_SECRET' not in os.environ and os.getcwd() == '/work'\n"
    )
    assert scored(code, backend) == (1.0, "", "")
    bad = R.code_tests(P, ["def add(a, b):\n    return a - b"], tests=[TESTS], sandbox=backend)
    assert bad == [0.0] and bad.kinds == ["failed"] and "AssertionError" in bad.reasons[0]


def test_host_files_are_not_visible(backend, tmp_path):
    (tmp_path / "mine.txt").write_text("trainer data")
    home = os.path.expanduser("~")
    paths = [
        "/etc/passwd",
        "/etc/shadow",
        f"{home}/.ssh",
        f"{home}/.bashrc",
        "/home",
        "/tmp",
        REPO,
        str(tmp_path),
        "/bin/sh",
        "/usr/bin",
        "/sys",
    ]
    r = S.run(f"import os\nprint([os.path.exists(p) for p in {paths!r}])", backend=backend)
    assert r.ok, r.reason
    assert r.stdout.strip() == str([False] * len(paths))
    # what there is: the interpreter, its stdlib, the system libraries, /dev, /proc, /work
    view = S._interpreter()[1]
    r = S.run("import os\nprint(sorted(os.listdir('/')))", backend=backend)
    tops = {p.split("/")[1] for _, p, _ in view} | {"dev", "proc", "work"}
    assert r.stdout.strip() == str(sorted(tops))
    score, reason, kind = scored(
        "data = open('/etc/passwd').read()\nassert 'root:' in data", backend
    )
    assert (score, kind) == (0.0, "violation") and "/etc/passwd" in reason


def test_no_privileges_inside(backend):
    code = (
        "import os\nstatus = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print(os.getuid(), int(status['CapEff'], 16), status['NoNewPrivs'].strip())"
    )
    r = S.run(code, backend=backend)
    assert r.ok, r.reason
    uid, cap_eff, no_new_privs = r.stdout.split()
    assert cap_eff == "0" and no_new_privs == "1"
    if os.geteuid() == 0:
        assert uid == str(S.NOBODY)  # root never runs model code as root


def test_a_shell_via_spawnv_passfds_does_not_escape(backend, tmp_path):
    target = tmp_path / "shell-ran"
    code = (
        "import multiprocessing.util as u, os, time\n"
        f"u.spawnv_passfds(b'/bin/sh', [b'sh', b'-c', b'id > {target}'], ())\n"
        f"time.sleep(0.3)\nassert os.path.exists({str(target)!r}), 'no shell'\n"
    )
    score, reason, _ = scored(code, backend)
    assert score == 0.0 and "no shell" in reason and not target.exists()
    score, reason, kind = scored(
        "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id'])", backend
    )
    assert (score, kind) == (0.0, "violation") and "/bin/sh" in reason


@pytest.mark.parametrize(
    "escape",
    [
        "open({target!r}, 'w').write('escaped')",
        "import os\nfd = os.open({target!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
        "import sqlite3\nsqlite3.connect({target!r}).execute('create table t (x)')",
        "import os\nos.mkfifo({target!r})",
        "import shutil\nshutil.copy(__file__, {target!r})",
        "import os\nos.remove({victim!r})",
        "open('/usr/lib/strop-escaped', 'w')",  # inside the view: read-only
    ],
)
def test_writes_outside_the_scratch_dir_fail(backend, tmp_path, escape):
    target, victim = tmp_path / "escaped", tmp_path / "victim.txt"
    victim.write_text("keep me")
    score, reason, kind = scored(escape.format(target=str(target), victim=str(victim)), backend)
    assert score == 0.0 and reason
    assert not target.exists() and victim.read_text() == "keep me"
    assert not Path("/usr/lib/strop-escaped").exists()


def test_signals_to_host_processes_fail(backend):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for code in (
            f"import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({victim.pid}), 9)",
            f"import os\nos.kill({victim.pid}, 9)",
            f"import os\nos.kill({os.getpid()}, 0)",  # the trainer: not even visible
        ):
            score, reason, kind = scored(code, backend)
            assert (score, kind) == (0.0, "violation") and "sandbox boundary" in reason
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_a_local_listener_receives_nothing_even_with_the_old_hook_globals_reset(backend):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    code = (
        "import sys\n_DENY, _ROOT = (), ''\nsys.modules['__main__'].__dict__.update(_DENY=())\n"
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'x')\n"
    )
    try:
        score, reason, kind = scored(code, backend)
        assert (score, kind) == (0.0, "violation") and "sandbox boundary" in reason
        with pytest.raises(TimeoutError):
            srv.accept()
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("code", "want"),
    [
        ("import os\nwhile True:\n    os.fork()", ("process limit", "timeout")),
        ("x = bytearray(4 * 2**30)", ("memory limit",)),
        ("x = [0] * (2**31)", ("memory limit",)),
        ("while True:\n    pass", ("timeout", "cpu limit")),
    ],
)
def test_bombs_and_loops_are_stopped(backend, code, want):
    t0 = time.monotonic()
    score, reason, kind = scored(code, backend, timeout_s=2)
    assert score == 0.0 and reason.startswith(want) and kind in ("violation", "timeout")
    assert time.monotonic() - t0 < 2 + 3


def _alive(marker: str) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def test_a_setsid_grandchild_holding_stderr_does_not_stretch_the_timeout(backend):
    marker = f"strop-sandbox-test-{uuid.uuid4().hex}"
    code = (
        "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
        f"'{marker}'])\n    os._exit(0)\nwhile True:\n    pass\n"
    )
    t0 = time.monotonic()
    score, reason, kind = scored(code, backend, timeout_s=2)
    assert (score, kind) == (0.0, "timeout") and reason == "timeout after 2s"
    assert time.monotonic() - t0 < 2 + 3
    time.sleep(0.3)
    assert _alive(marker) == []  # the whole tree died with the namespace


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_an_stderr_flood_costs_the_trainer_no_memory(backend):
    try:  # "5": reset the peak RSS, so that VmHWM measures this test alone
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    before = _memory_kb("VmRSS")
    r = S.run(
        "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)", timeout_s=2, backend=backend
    )
    grew_mb = (_memory_kb("VmHWM") - before) / 1024
    assert r.timed_out and len(r.stderr) <= 64 * 1024
    assert grew_mb < 8, f"the trainer grew by {grew_mb:.1f} MB"


def test_classify_reasons():
    assert S._classify(0, "", False, 2) == ("", "")
    assert S._classify(0, "", True, 2.5) == ("timeout after 2.5s", "timeout")
    assert S._classify(128 + signal.SIGXCPU, "", False, 2) == ("cpu limit", "violation")
    assert S._classify(-9, "", False, 2) == ("killed by signal 9 (SIGKILL)", "violation")
    assert S._classify(1, "Traceback\nMemoryError", False, 2) == ("memory limit", "violation")
    err = "OSError: [Errno 27] File too large"
    assert S._classify(1, err, False, 2) == (f"file size limit: {err}", "violation")
    assert S._classify(1, "x\nAssertionError", False, 2) == (
        "exit code 1: AssertionError",
        "failed",
    )
    assert S._classify(1, "bwrap: oops", False, 2)[1] == "error"


# ---- no backend: refuse, unless the caller opts into 'unsafe' -------------------------------
def test_no_backend_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.setattr(S, "detect", lambda: None)
    monkeypatch.delenv("STROP_SANDBOX", raising=False)
    with pytest.raises(StropError, match="install bubblewrap.*sandbox: unsafe"):
        S.run("print(1)")
    spec = type("Spec", (), {"name": "code_tests", "weight": 1.0, "args": {}})()
    with pytest.raises(StropError, match="cannot isolate"):  # a config problem: the run stops
        R.combine([spec], P, [ADD], {"tests": [TESTS]})
    with pytest.raises(StropError, match="unknown backend 'docker'"):
        S.run("print(1)", backend="docker")


def test_unsafe_is_an_explicit_opt_in_with_a_loud_warning(monkeypatch, capsys):
    monkeypatch.setattr(S, "detect", lambda: None)
    monkeypatch.setattr(S, "_WARNED", set())
    assert R.code_tests(P, [ADD], tests=[TESTS], sandbox="unsafe") == [1.0]
    assert "WARNING: sandbox 'unsafe'" in capsys.readouterr().err
    monkeypatch.setenv("STROP_SANDBOX", "unsafe")
    r = S.run("while True:\n    pass", timeout_s=1)
    assert r.backend == "unsafe" and r.reason in ("timeout after 1s", "cpu limit")
    assert r.seconds < 1 + 2  # the limits still hold
    assert capsys.readouterr().err == ""  # warned once per process
