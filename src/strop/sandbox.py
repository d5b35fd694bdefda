"""Run untrusted Python (model-written code) behind an operating-system boundary.

``run(code)`` executes ``code`` in its own process tree, inside fresh kernel namespaces:

- **no network**: a new network namespace, so the host's listeners (127.0.0.1 included) are
  unreachable;
- **a minimal filesystem**: a new mount namespace whose root holds only the interpreter, its
  standard library and the system library directories, read-only, plus a size-capped scratch
  tmpfs at ``/work`` (the only writable place, also the cwd). /etc, /root, /home, the repo and
  the trainer's files do not exist in there;
- **no view of other processes**: a new PID (and IPC, UTS) namespace; the code's first process
  is the namespace's first one, and when it ends or is killed the kernel kills every process
  left in the namespace (setsid daemons included);
- **no privileges**: as root the code runs as uid 65534 (nobody); otherwise as root of a user
  namespace with an empty capability bounding set; no_new_privs either way;
- **limits**: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE, no core files,
  a wall clock that kills the whole tree, stdout/stderr read with a hard cap (the tail is kept,
  the rest discarded), and an empty environment.

Backends, detected once (a real probe run) and cached: ``bwrap`` (bubblewrap) when installed;
else ``namespaces``, the same set-up done here with unshare(2)/mount(2)/pivot_root(2) through
ctypes, in a fresh single-threaded launcher process (``python -I -S sandbox.py SPEC``). With
neither, ``run`` refuses with a StropError saying what to install, unless the caller opts into
``backend="unsafe"`` (or ``STROP_SANDBOX=unsafe``): a plain subprocess with rlimits and a loud
warning. This module imports only the standard library (strop.errors lazily), so that the
launcher can run it as a script.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import re
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

BACKENDS = ("bwrap", "namespaces", "unsafe")
NOBODY = 65534  # the uid/gid code runs as when the trainer is root
SCRATCH_MB = 16  # the /work tmpfs: bounds what the code can write in total
_WARNED: set[str] = set()

# Python's last traceback line, errno -> (reason, is it the boundary or a limit at work?)
_ERRNO_REASONS = {
    11: "process limit",  # EAGAIN from fork under RLIMIT_NPROC
    27: "file size limit",
    24: "open-file limit",
    28: "scratch space full",
    1: "sandbox boundary",
    13: "sandbox boundary",
    30: "sandbox boundary",  # EROFS: the read-only view
    3: "sandbox boundary",  # ESRCH: another namespace's pid
    101: "sandbox boundary",  # ENETUNREACH: no network
    111: "sandbox boundary",  # ECONNREFUSED: nothing listens in the empty namespace
    99: "sandbox boundary",  # EADDRNOTAVAIL
}


@dataclass(frozen=True)
class SandboxResult:
    """What a run came to. ``kind``: '' (exit 0), 'failed' (non-zero exit of the code itself),
    'violation' (a limit or the boundary stopped it), 'timeout', or 'error' (the sandbox could
    not start). ``stdout``/``stderr`` are tails of at most ``max_output`` bytes each."""

    ok: bool
    reason: str
    kind: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    backend: str

    @property
    def violation(self) -> bool:
        return self.kind == "violation"

    @property
    def timed_out(self) -> bool:
        return self.kind == "timeout"


# ---- what the code gets to see -----------------------------------------------------------
@functools.cache
def _interpreter() -> tuple[str, list[tuple[str, str, str]]]:
    """(the base interpreter's real path, read-only view entries (kind, path, link target)).
    The venv's interpreter is not used: its site-packages would show the trainer's files."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    base = {
        "base": sys.base_prefix,
        "installed_base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    paths = sysconfig.get_paths(vars=base)  # the base's stdlib, never the venv's lib dir
    wanted = [exe, paths["stdlib"], paths["platstdlib"]]
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and os.path.exists(os.path.join(libdir, soname)):
        wanted.append(os.path.join(libdir, soname))  # a shared-library build's libpython
    view: list[tuple[str, str, str]] = []
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(d):
            view.append(("link", d, os.readlink(d)))
        elif os.path.isdir(d):
            view.append(("dir", d, ""))
    bound = [p for k, p, _ in view if k == "dir"]
    for p in dict.fromkeys(os.path.realpath(w) for w in wanted if w):
        if os.path.exists(p) and not any(p == b or p.startswith(b + "/") for b in bound):
            view.append(("dir" if os.path.isdir(p) else "file", p, ""))
            bound.append(p)
    return exe, view


def _parents(view: list[tuple[str, str, str]]) -> list[str]:
    """Directories to create (mode 0755) above the view's entries, outermost first: bwrap
    copies the host's 0700 of e.g. /root, which would lock uid 65534 out of /root/.pyenv."""
    out: set[str] = set()
    for _, path, _ in view:
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            out.add(parent)
            parent = os.path.dirname(parent)
    return sorted(out, key=lambda p: (p.count("/"), p))


def _stage2(
    exe: str, main: str, *, cpu_s: float, memory_mb: int, max_procs: int | None, uid: int | None
) -> list:
    """argv of the trusted first program inside: drop to ``uid``, set the rlimits, then exec
    the code. The limits are set in here, not before bwrap/unshare run: RLIMIT_NPROC counts
    per user namespace only once inside one, and outside it would count the trainer's user
    (so 'unsafe' sets none). No preexec_fn: forking a threaded trainer must not run Python."""
    cpu = max(1, int(cpu_s + 0.999))
    limits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU first, SIGKILL a second later
        (resource.RLIMIT_AS, memory_mb * 2**20, memory_mb * 2**20),
        (resource.RLIMIT_FSIZE, 4 * 2**20, 4 * 2**20),
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_CORE, 0, 0),
    ] + ([(resource.RLIMIT_NPROC, max_procs, max_procs)] if max_procs else [])
    home = os.path.dirname(main)  # /work, or the temporary dir in 'unsafe' mode
    env = {"HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "PATH": "/nonexistent"}
    cfg = {"uid": uid, "limits": limits, "exe": exe, "env": env, "argv": [exe, "-I", "-B", main]}
    script = (
        "import json,os,resource,sys\nc=json.loads(sys.argv[1])\nu=c['uid']\n"
        "if u is not None:\n os.setgroups([]);os.setresgid(u,u,u);os.setresuid(u,u,u)\n"
        "for k,s,h in c['limits']:resource.setrlimit(k,(s,h))\n"
        "os.execve(c['exe'],c['argv'],c['env'])\n"
    )
    return [exe, "-I", "-S", "-c", script, json.dumps(cfg)]


# Fresh IPC, PID, network, UTS (and cgroup where allowed) namespaces, killed with its parent,
# no controlling terminal, an empty environment.
_BWRAP_FLAGS = (
    "--unshare-ipc --unshare-pid --unshare-net --unshare-uts --unshare-cgroup-try "
    "--die-with-parent --new-session --clearenv --hostname sandbox"
).split()


def _bwrap_argv(code_fd: int, stage2: list, as_root: bool) -> list[str]:
    exe, view = _interpreter()
    argv = [shutil.which("bwrap") or "bwrap", *_BWRAP_FLAGS]
    # Root: no user namespace (it would map to host uid 0, which RLIMIT_NPROC exempts); the
    # first program keeps CAP_SETUID/SETGID only to become nobody. Others: a user namespace.
    argv += (
        ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if as_root else ["--unshare-user"]
    )
    for d in _parents(view):
        argv += ["--perms", "0755", "--dir", d]
    for kind, path, target in view:
        argv += ["--symlink", target, path] if kind == "link" else ["--ro-bind", path, path]
    scratch = ["--perms", "01777", "--size", str(SCRATCH_MB * 2**20), "--tmpfs", "/work"]
    code = ["--file", str(code_fd), "/work/main.py", "--chdir", "/work"]
    argv += ["--proc", "/proc", "--dev", "/dev", *scratch, *code]
    return argv + stage2


# ---- the namespaces backend: the launcher (runs as a script, single-threaded) -----------------
_NEWNS, _NEWUTS, _NEWIPC = 0x20000, 0x4000000, 0x8000000
_NEWUSER, _NEWPID, _NEWNET = 0x10000000, 0x20000000, 0x40000000
_RDONLY, _NOSUID, _NODEV, _NOEXEC, _REMOUNT, _BIND, _PRIVATE = 1, 2, 4, 8, 32, 4096, 1 << 18
_REC = 16384
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, src, dst, fstype, flags: int, data: str | None = None) -> None:
    enc = [None if x is None else os.fsencode(x) for x in (src, dst, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {dst}")


def _kept_flags(path: str) -> int:
    """A read-only remount inside a user namespace must keep the source mount's locked flags."""
    f = os.statvfs(path).f_flag
    return sum(m for st, m in ((os.ST_NOEXEC, _NOEXEC), (1024, 1024), (2048, 2048)) if f & st)


def _build_root(libc, spec: dict) -> None:
    """The new root: a tmpfs holding read-only binds of the view, /dev nodes, /proc and the
    scratch tmpfs; then pivot_root into it and detach the host's tree."""
    root = spec["root"]
    _mount(libc, None, "/", None, _REC | _PRIVATE)  # nothing propagates back to the host
    _mount(libc, "tmpfs", root, "tmpfs", _NOSUID | _NODEV, "size=1m,mode=0755")
    for d in spec["dirs"]:
        os.makedirs(root + d, mode=0o755, exist_ok=True)
    for kind, path, target in spec["view"]:
        dst = root + path
        if kind == "link":
            os.symlink(target, dst)
            continue
        if kind == "dir":
            os.makedirs(dst, exist_ok=True)
        else:
            open(dst, "w").close()
        _mount(libc, path, dst, None, _BIND)
        flags = _BIND | _REMOUNT | _RDONLY | _NOSUID | _NODEV | _kept_flags(path)
        _mount(libc, None, dst, None, flags)
    os.makedirs(root + "/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(f"{root}/dev/{name}", "w").close()
        _mount(libc, f"/dev/{name}", f"{root}/dev/{name}", None, _BIND)
    os.makedirs(root + "/proc")
    with contextlib.suppress(OSError):  # refused in some containers (a masked host /proc)
        _mount(libc, "proc", root + "/proc", "proc", _NOSUID | _NODEV | _NOEXEC)
    os.makedirs(root + "/work")
    _mount(
        libc, "tmpfs", root + "/work", "tmpfs", _NOSUID | _NODEV, f"size={SCRATCH_MB}m,mode=1777"
    )
    shutil.copyfile(spec["code"], root + "/work/main.py")
    _mount(libc, None, root, None, _REMOUNT | _RDONLY | _NOSUID | _NODEV)
    os.chdir(root)
    nr = _PIVOT_ROOT.get(platform.machine())
    if nr is not None and libc.syscall(nr, b".", b".") == 0:
        _check(libc.umount2(b".", 2), "umount the host root")  # MNT_DETACH
    else:  # no pivot_root number for this machine: chroot (its escape needs CAP_SYS_CHROOT)
        os.chroot(".")
    os.chdir("/work")


def _launch(spec: dict) -> None:
    """The namespaces backend's launcher: new namespaces, a child as their first process
    (which builds the root, drops privileges and execs stage 2), and this process waiting
    for it, exiting 128+signal like bwrap. Killing this process kills the namespace."""
    libc = _libc()
    as_root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    flags = _NEWNS | _NEWPID | _NEWNET | _NEWIPC | _NEWUTS | (0 if as_root else _NEWUSER)
    _check(libc.unshare(flags), "unshare")
    if not as_root:
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"0 {uid} 1"),
            ("gid_map", f"0 {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(alive_r)
        _, status = os.waitpid(pid, 0)
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    os.close(alive_w)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the launcher
    if select.select([alive_r], [], [], 0)[0]:  # the launcher was already gone
        os._exit(1)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    _build_root(libc, spec)
    libc.sethostname(b"sandbox", 7)
    if not as_root:  # root of the user namespace: no capabilities survive the exec
        for cap in range(last_cap + 1):
            _check(libc.prctl(24, cap, 0, 0, 0), "drop capabilities")  # PR_CAPBSET_DROP
    _check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
    os.execv(spec["stage2"][0], spec["stage2"])


# ---- running and reading -------------------------------------------------------------------
def _collect(proc: subprocess.Popen, timeout_s: float, cap: int) -> tuple[bytes, bytes, bool]:
    """(stdout tail, stderr tail, timed out). Never waits for pipe EOF past the deadline: a
    process that keeps the pipes open cannot stretch the wall clock. Keeps at most ``cap``
    bytes per stream, so a flood costs the trainer no memory."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    deadline, exited = time.monotonic() + timeout_s, None
    timed_out = False
    while True:
        now = time.monotonic()
        # WNOWAIT: the exited leader stays a zombie, so its pid (our kill target) is not reused
        if exited is None and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            exited = now
        if exited is not None and (not sel.get_map() or now - exited > 0.5):
            break  # done; or (unsafe mode only) an escaped process holds the pipes open
        if now >= deadline:
            timed_out = True
            break
        if not sel.get_map():  # the code closed its pipes but still runs
            time.sleep(min(deadline - now, 0.02))
            continue
        for key, _ in sel.select(min(deadline - now, 0.1)):
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = bufs[key.fileobj]
            buf += chunk
            del buf[:-cap]
    sel.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), timed_out


def _reap(proc: subprocess.Popen) -> None:
    """Kill the launcher's session (bwrap or the launcher and kin: killing them tears the
    namespace down) and reap it. The leader is unreaped until here, so its pid is ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for f in (proc.stdout, proc.stderr):
        f.close()


def _classify(rc: int, err: str, timed_out: bool, timeout_s: float) -> tuple[str, str]:
    """(reason, kind) from the exit status and the last line of stderr."""
    if timed_out:
        return f"timeout after {timeout_s:g}s", "timeout"
    if rc == 0:
        return "", ""
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else ""
    if last.startswith(("bwrap:", "strop-sandbox:")):
        return f"sandbox could not start: {last}", "error"
    sig = -rc if rc < 0 else rc - 128 if 128 < rc <= 128 + 64 else 0
    if sig:
        if sig == signal.SIGXCPU:
            return "cpu limit", "violation"
        return f"killed by signal {sig} ({signal.Signals(sig).name})", "violation"
    if last.startswith("MemoryError") or "Cannot allocate memory" in last:
        return "memory limit", "violation"
    found = re.search(r"\[Errno (\d+)\]", last)
    if found and int(found.group(1)) in _ERRNO_REASONS:
        return f"{_ERRNO_REASONS[int(found.group(1))]}: {last}", "violation"
    if re.search(r"\[Errno 2\] [^:]*: '/(?!work)", last):  # a host path: not in the view
        return f"sandbox boundary: {last}", "violation"
    return f"exit code {rc}: {last}" if last else f"exit code {rc}", "failed"


def _popen(argv, *, pass_fds=(), cwd=None) -> subprocess.Popen:
    pipes = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(
        argv, **pipes, env={}, cwd=cwd, pass_fds=pass_fds, start_new_session=True
    )


def _start(backend: str, code: str, tmp: str, *, cpu_s, memory_mb, max_procs) -> subprocess.Popen:
    as_root = os.geteuid() == 0
    exe, view = _interpreter()
    path = os.path.join(tmp, "main.py")
    with open(path, "w") as f:
        f.write(code)
    uid = NOBODY if as_root else None
    limits = {"cpu_s": cpu_s, "memory_mb": memory_mb}
    stage2 = _stage2(exe, "/work/main.py", **limits, max_procs=max_procs, uid=uid)
    if backend == "bwrap":
        fd = os.open(path, os.O_RDONLY)
        try:
            return _popen(_bwrap_argv(fd, stage2, as_root), pass_fds=(fd,))
        finally:
            os.close(fd)
    if backend == "namespaces":
        os.mkdir(os.path.join(tmp, "root"))
        root = os.path.join(tmp, "root")
        spec = {"root": root, "dirs": _parents(view), "view": view, "code": path, "stage2": stage2}
        return _popen([exe, "-I", "-S", os.path.abspath(__file__), json.dumps(spec)])
    if backend not in _WARNED:
        _WARNED.add(backend)
        print(
            "strop: WARNING: sandbox 'unsafe': model-written code runs as an ordinary "
            "subprocess of this user with rlimits only; it can read your files, reach the "
            "network and signal your processes",
            file=sys.stderr,
        )
    return _popen(_stage2(exe, path, **limits, max_procs=None, uid=None), cwd=tmp)


def _probe(backend: str) -> str:
    """'' when ``backend`` runs code here, else why not."""
    if backend == "bwrap" and shutil.which("bwrap") is None:
        return "bwrap is not installed"
    try:
        r = run("print(6 * 7)", timeout_s=20, backend=backend)
    except OSError as e:
        return str(e)
    return "" if r.ok and r.stdout.strip() == "42" else (r.reason or r.stdout)[-300:]


_PROBLEMS: dict[str, str] = {}


@functools.cache
def detect() -> str | None:
    """The first backend that works on this machine (bwrap, then namespaces), or None."""
    for name in ("bwrap", "namespaces"):
        _PROBLEMS[name] = _probe(name)
        if not _PROBLEMS[name]:
            return name
    return None


def resolve_backend(backend: str | None = None) -> str:
    """``backend`` (or $STROP_SANDBOX, else 'auto') made concrete; refuses when no backend
    works and the caller did not opt into 'unsafe'."""
    from strop.errors import StropError  # lazily: the launcher runs this file as a script

    want = backend or os.environ.get("STROP_SANDBOX") or "auto"
    if want not in ("auto", *BACKENDS):
        raise StropError(f"sandbox: unknown backend {want!r} (auto, {', '.join(BACKENDS)})")
    if want != "auto":
        return want
    found = detect()
    if found is None:
        why = "; ".join(f"{k}: {v}" for k, v in _PROBLEMS.items()) or "no backend works"
        raise StropError(
            "sandbox: cannot isolate model-written code on this machine "
            f"({why}); install bubblewrap (apt-get install bubblewrap) or allow user "
            "namespaces, or opt in to running it unisolated with sandbox: unsafe "
            "(STROP_SANDBOX=unsafe)"
        )
    return found


def run(
    code: str,
    *,
    timeout_s: float = 5.0,
    cpu_s: float | None = None,
    memory_mb: int = 512,
    max_procs: int = 16,
    max_output: int = 64 * 1024,
    backend: str | None = None,
) -> SandboxResult:
    """Run ``code`` as /work/main.py in the sandbox; never raises for what the code does."""
    name = resolve_backend(backend)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="strop-sandbox-") as tmp:
        try:
            proc = _start(
                name, code, tmp, cpu_s=cpu_s or timeout_s, memory_mb=memory_mb, max_procs=max_procs
            )
        except OSError as e:
            why, spent = f"sandbox could not start: {e}", time.monotonic() - t0
            return SandboxResult(False, why, "error", None, "", "", spent, name)
        try:
            out, err, timed_out = _collect(proc, timeout_s, max_output)
        finally:  # also when the caller's watchdog interrupts us: never leave the tree running
            _reap(proc)
    text = err.decode(errors="replace")
    reason, kind = _classify(proc.returncode, text, timed_out, timeout_s)
    out_text, spent = out.decode(errors="replace"), time.monotonic() - t0
    return SandboxResult(kind == "", reason, kind, proc.returncode, out_text, text, spent, name)


if __name__ == "__main__":  # the namespaces backend's launcher (see _launch)
    try:
        _launch(json.loads(sys.argv[1]))
    except OSError as e:
        print(f"strop-sandbox: {e}", file=sys.stderr)
        os._exit(71)
