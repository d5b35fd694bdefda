"""Class 3: every escape through the code_tests reward, on each backend; reward budgets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

from .pickles import planted_pickles
from .runner import Launcher
from .sandbox_cases import ADD, SLOW_REWARDS, TESTS, _host_ip, escapes

# id, what, the reward spec, the completion, the row's fields, the time limit (s)
BUDGETS = [
    (
        "math-power-tower",
        "math_answer on \\boxed{9**9**9}",
        {"name": "math_answer"},
        "The answer is \\boxed{9**9**9}",
        {"answer": ["1"]},
        15,
    ),
    (
        "reward-forever",
        "a user's reward that never returns (budget_s 2)",
        {"name": "probe_slow_rewards:forever", "args": {"budget_s": 2}},
        "x",
        {},
        8,
    ),
    (
        "reward-raises",
        "a user's reward that raises",
        {"name": "probe_slow_rewards:broken"},
        "x",
        {},
        5,
    ),
]


def _memory_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _alive_with(marker: str) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def _victim() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])


def _listener(family: int, kind: int, address) -> socket.socket:
    s = socket.socket(family, kind)
    s.bind(address)
    if kind == socket.SOCK_STREAM:
        s.listen()
    s.settimeout(0.05)
    return s


class Host:
    """What an escape could reach: a SIGTERM handler, a secret in the environment, a victim
    process and listeners on 127.0.0.1, 0.0.0.0 (TCP), 127.0.0.1 (UDP) and an abstract socket."""

    def __init__(self) -> None:
        self.got_term: list[int] = []
        self.old_term = signal.signal(signal.SIGTERM, lambda s, f: self.got_term.append(s))
        os.environ["STROP_PROBE_SECRET"] = "SECRET"
        self.victim = _victim()
        inet, stream, dgram = socket.AF_INET, socket.SOCK_STREAM, socket.SOCK_DGRAM
        self.tcp = _listener(inet, stream, ("127.0.0.1", 0))
        self.tcp_any = _listener(inet, stream, ("0.0.0.0", 0))
        self.udp = _listener(inet, dgram, ("127.0.0.1", 0))
        abstract = f"\0strop-probe-{os.getpid()}"
        self.unix = _listener(socket.AF_UNIX, stream, abstract)
        self.ports = {
            "tcp": self.tcp.getsockname()[1],
            "udp": self.udp.getsockname()[1],
            "abstract": abstract,
            "tcp_any": self.tcp_any.getsockname()[1],
            "host_ip": _host_ip(),
        }
        self.marker = f"strop-probe-grandchild-{os.getpid()}"

    def received(self) -> list[str]:
        got = []
        for name, srv in (("tcp", self.tcp), ("tcp-any", self.tcp_any), ("unix", self.unix)):
            with contextlib.suppress(TimeoutError, socket.timeout, BlockingIOError):
                conn, _ = srv.accept()
                conn.close()
                got.append(name)
        with contextlib.suppress(TimeoutError, socket.timeout, BlockingIOError):
            self.udp.recv(16)
            got.append("udp")
        return got

    def problems(self, out: Path) -> list[str]:
        """What the last escape did to the host (and the victim restarted if it was killed)."""
        host = []
        if list(out.glob("*.escaped")) or Path("/usr/lib/strop-escaped").exists():
            host.append(f"files appeared outside: {[p.name for p in out.glob('*.escaped')]}")
        if (out / "victim.txt").read_text(errors="replace") != "keep me":
            host.append("a host file was changed or removed")
        if self.victim.poll() is not None:
            host.append("a host process was killed")
            self.victim = _victim()
        if self.got_term:
            host.append("the trainer received SIGTERM")
            self.got_term.clear()
        if got := self.received():
            host.append(f"host listeners received a connection: {got}")
        if alive := _alive_with(self.marker):
            host.append(f"processes outlived the sandbox: {alive}")
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
        return host

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self.old_term)
        self.victim.kill()
        self.victim.wait()
        for s in (self.tcp, self.tcp_any, self.udp, self.unix):
            s.close()
        os.environ.pop("STROP_PROBE_SECRET", None)


def _counted(stats) -> dict:
    return {"violations": stats.violations, "timeouts": stats.timeouts, "errors": stats.errors}


def _one_escape(host: Host, out: Path, backend: str, escape: tuple) -> dict:
    from strop.config.schema import RewardSpec
    from strop.train import rewards as R

    eid, what, code, kw = escape
    (out / "victim.txt").write_text("keep me")
    (out / "secret.txt").write_text("SECRET")
    for f in out.glob("*.escaped"):
        f.unlink()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    rss0 = _memory_kb("VmRSS")
    stats = R.RewardStats(max_samples=1)
    t0 = time.monotonic()
    with redirect_stderr(StringIO()):
        args = {k: v for k, v in kw.items() if k != "judge"}
        spec = RewardSpec(name="code_tests", args={"sandbox": backend, **args})
        messages = [[{"role": "user", "content": "q"}]]
        total, _ = R.combine([spec], messages, [ADD + code], {"tests": [TESTS]}, stats)
    wall = time.monotonic() - t0
    grew_mb = (_memory_kb("VmHWM") - rss0) / 1024
    time.sleep(0.1)
    problems = host.problems(out)
    limit = kw.get("timeout_s", 5) + 3
    if wall > limit:
        problems.append(f"took {wall:.1f}s, over timeout + 3s")
    if grew_mb > 16:
        problems.append(f"the trainer's memory grew by {grew_mb:.0f} MB")
    reason = stats.reasons[0] if stats.reasons else ""
    score = total[0]
    if kw.get("judge") == "host":  # fire and forget: only the host can tell
        contained = not problems
    else:
        contained = score == 0.0 and bool(reason) and not problems
    return {
        "id": eid,
        "backend": backend,
        "what": what,
        "score": score,
        "reason": reason[:300],
        "seconds": round(wall, 2),
        "trainer_rss_growth_mb": round(grew_mb, 1),
        "counted": _counted(stats),
        "contained": contained,
        "problems": problems,
    }


def reward_budgets(out: Path) -> list[dict]:
    """Reward functions under a time budget: one bad answer must not hang or end the run."""
    from strop.config.schema import RewardSpec
    from strop.train import rewards as R

    items = []
    sys.path.insert(0, str(out))
    (out / "probe_slow_rewards.py").write_text(SLOW_REWARDS)
    for eid, what, spec_kw, comp, fields, limit in BUDGETS:
        spec = RewardSpec(**spec_kw)
        stats = R.RewardStats(max_samples=1)
        t0 = time.monotonic()
        try:
            with redirect_stderr(StringIO()):
                messages = [[{"role": "user", "content": "q"}]]
                total, _ = R.combine([spec], messages, [comp], fields, stats)
            score, reason = total[0], (stats.reasons or [""])[0]
        except BaseException as e:  # noqa: BLE001
            score, reason = None, f"raised {type(e).__name__}: {e}"
        wall = time.monotonic() - t0
        host = [f"took {wall:.1f}s"] if wall > limit else []
        # a wrong answer scores 0 without a reason; a timeout or an error must say why
        contained = score == 0.0 and (bool(reason) or eid == "math-power-tower") and not host
        items.append(
            {
                "id": eid,
                "backend": "reward budget",
                "what": what,
                "score": score,
                "reason": reason[:300],
                "seconds": round(wall, 2),
                "counted": _counted(stats),
                "contained": contained,
                "problems": host,
            }
        )
        print("." if contained else "E", end="", flush=True)
    return items


def sandbox_class(L: Launcher, work: Path, quick: bool) -> dict:
    from strop import sandbox as S

    out = work / "sandbox"
    out.mkdir(parents=True, exist_ok=True)
    backends = [b for b in ("bwrap", "namespaces") if not S._probe(b)]
    problems_found = {b: S._PROBLEMS.get(b) or S._probe(b) for b in ("bwrap", "namespaces")}
    try:
        default = S.resolve_backend()
    except Exception as e:  # noqa: BLE001
        default = f"none ({e})"
    if quick:
        backends = backends[:1]
    items: list[dict] = []
    host = Host()
    try:
        for backend in backends:
            victim_pid = host.victim.pid  # the escapes are written once per backend, as before
            for escape in escapes(out, os.getpid(), victim_pid, host.ports, host.marker):
                items.append(_one_escape(host, out, backend, escape))
                print("." if items[-1]["contained"] else "E", end="", flush=True)
        items += reward_budgets(out)
    finally:
        host.close()
    print()
    items += planted_pickles(L, out / "pickles", quick)
    return {
        "items": items,
        "backends_working": backends,
        "default_backend": default,
        "backend_problems": problems_found,
    }
