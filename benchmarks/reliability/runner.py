"""Launching the CLI: one process per run, forked from a pre-imported server or spawned."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """One CLI run: its pid, exit code (None while running; -N for a signal) and output."""

    def __init__(self, pid: int, popen, log: Path, argv: list[str]):
        self.pid, self._popen, self.log, self.argv = pid, popen, log, argv
        self.rc: int | None = None
        self.t0 = time.monotonic()
        self.seconds = 0.0

    def poll(self) -> int | None:
        if self.rc is None:
            if self._popen is not None:
                rc = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                rc = os.waitstatus_to_exitcode(status) if pid else None
            if rc is not None:
                self.rc, self.seconds = rc, time.monotonic() - self.t0
        return self.rc

    def wait(self, timeout: float = 600) -> int:
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                self.kill(signal.SIGKILL)
                while self.poll() is None:
                    time.sleep(0.01)
                self.rc = "timeout"  # type: ignore[assignment]
                break
            time.sleep(0.01)
        return self.rc  # type: ignore[return-value]

    def kill(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    @property
    def out(self) -> str:
        return _read(self.log.with_suffix(".out"))

    @property
    def err(self) -> str:
        return _read(self.log.with_suffix(".err"))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class Launcher:
    """Starts `strop ARGV` in ``cwd``: forked from this pre-imported process, or spawned."""

    def __init__(self, spawn: bool):
        self.spawn = spawn
        self.count = 0
        if not spawn:  # import once what every verb imports lazily (no torch op runs here)
            import strop.cli  # noqa: F401
            import strop.commands.eval  # noqa: F401
            import strop.commands.infer  # noqa: F401
            import strop.commands.inspect  # noqa: F401
            import strop.commands.merge  # noqa: F401
            import strop.commands.prepare  # noqa: F401
            import strop.commands.train  # noqa: F401

    def start(
        self,
        argv: list[str],
        cwd: Path,
        log: Path,
        env: dict | None = None,
        spawn: bool | None = None,
    ) -> Proc:
        self.count += 1
        log.parent.mkdir(parents=True, exist_ok=True)
        env_all = {**os.environ, "NO_COLOR": "1", **(env or {})}
        env_all.pop("STROP_DEBUG", None)
        out, err = log.with_suffix(".out"), log.with_suffix(".err")
        if self.spawn if spawn is None else spawn:
            with open(out, "w") as fo, open(err, "w") as fe:
                p = subprocess.Popen(
                    [sys.executable, "-m", "strop.cli", *argv],
                    cwd=cwd,
                    env=env_all,
                    stdout=fo,
                    stderr=fe,
                    stdin=subprocess.DEVNULL,
                )
            return Proc(p.pid, p, log, argv)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: become `python -m strop.cli ARGV` in cwd
            code = 1
            try:
                for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE):
                    signal.signal(s, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                fds = [
                    os.open(os.devnull, os.O_RDONLY),
                    os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                    os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                ]
                for i, fd in enumerate(fds):
                    os.dup2(fd, i)
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env_all)
                sys.path.insert(0, str(cwd))  # as `python -m` does: the cwd's modules import
                sys.argv = ["strop", *argv]
                import strop.cli

                try:
                    strop.cli.main()
                    code = 0
                except SystemExit as e:  # what the interpreter would make of it
                    if e.code is None or isinstance(e.code, int):
                        code = e.code or 0
                    else:
                        print(e.code, file=sys.stderr)
                        code = 1
                except BaseException:  # noqa: BLE001 - an uncaught exception, as Python prints it
                    traceback.print_exc()
                    code = 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        return Proc(pid, None, log, argv)

    def run(self, argv, cwd, log, env=None, timeout=600, spawn=None) -> Proc:
        p = self.start(argv, cwd, log, env, spawn)
        p.wait(timeout)
        return p

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` in a forked child (work that runs torch ops: never in here)."""
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"setup step {fn.__name__} failed")
