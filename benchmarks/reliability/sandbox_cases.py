"""Class 3: the escapes of the issue, as code the code_tests reward runs."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from .runner import ROOT

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5"

SLOW_REWARDS = '''"""A user's reward functions that misbehave."""


def forever(prompts, completions, **kw):
    while True:
        pass


def broken(prompts, completions, **kw):
    raise ValueError("a bug in the user's reward")
'''


def _host_ip() -> str | None:
    with contextlib.suppress(OSError):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the route's address
        ip = s.getsockname()[0]
        s.close()
        return None if ip.startswith("127.") else ip
    return None


def home_entries() -> list[str]:
    """The host's home entries that are not part of the sandbox's view (the interpreter may
    live under the home dir, e.g. /root/.pyenv: that path is bound read-only on purpose)."""
    from strop import sandbox as S

    home = os.path.expanduser("~")
    view = [p for _, p, _ in S._interpreter()[1]]
    try:
        names = os.listdir(home)
    except OSError:
        return []
    return [
        os.path.join(home, n)
        for n in names
        if not any(
            v == os.path.join(home, n) or v.startswith(os.path.join(home, n) + "/") for v in view
        )
    ]


def escapes(out: Path, probe_pid: int, victim_pid: int, ports: dict, marker: str) -> list[tuple]:
    """(id, what, code, extra kwargs for code_tests). Each code ends by asserting that its
    escape worked, so an escape scores 1.0; the host checks are in sandbox_class."""

    def T(name: str) -> str:
        return str(out / f"{name}.escaped")

    victim, secret = str(out / "victim.txt"), str(out / "secret.txt")
    E = [
        (
            "spawnv-shell",
            "a shell via multiprocessing.util.spawnv_passfds",
            "import multiprocessing.util as u, os, time\n"
            f"u.spawnv_passfds(b'/bin/sh', [b'sh', b'-c', b'id > {T('spawnv-shell')}'], ())\n"
            f"time.sleep(0.3)\nassert os.path.exists({T('spawnv-shell')!r})",
        ),
        (
            "subprocess-shell",
            "subprocess.run(['/bin/sh', ...])",
            f"import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id > {T('subprocess-shell')}'], check=True)",
        ),
        ("os-system", "os.system", f"import os\nassert os.system('id > {T('os-system')}') == 0"),
        (
            "execv-python",
            "exec a fresh interpreter writing outside",
            f"import os, sys\nif os.fork() == 0:\n    os.execv(sys.executable, [sys.executable, '-c', "
            f"\"open({T('execv-python')!r}, 'w').write('x')\"])\nos.wait()\n"
            f"assert os.path.exists({T('execv-python')!r})",
        ),
        (
            "sqlite3-write",
            "sqlite3.connect on a path outside",
            f"import sqlite3\nsqlite3.connect({T('sqlite3-write')!r}).execute('create table t (x)')",
        ),
        ("mkfifo", "os.mkfifo outside", f"import os\nos.mkfifo({T('mkfifo')!r})"),
        (
            "open-write",
            "open(path outside, 'w')",
            f"open({T('open-write')!r}, 'w').write('escaped')",
        ),
        (
            "os-open-write",
            "os.open(O_CREAT) outside",
            f"import os\nfd = os.open({T('os-open-write')!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
        ),
        (
            "shutil-copy",
            "shutil.copy of the code outside",
            f"import shutil\nshutil.copy(__file__, {T('shutil-copy')!r})",
        ),
        (
            "symlink",
            "a symlink created outside",
            f"import os\nos.symlink('/etc/passwd', {T('symlink')!r})",
        ),
        ("remove-victim", "os.remove of a host file", f"import os\nos.remove({victim!r})"),
        (
            "rename-victim",
            "os.rename of a host file",
            f"import os\nos.rename({victim!r}, {victim + '.moved'!r})",
        ),
        ("truncate-victim", "open(host file, 'w')", f"open({victim!r}, 'w').write('overwritten')"),
        (
            "write-view",
            "a write into the read-only system view",
            "open('/usr/lib/strop-escaped', 'w')",
        ),
        (
            "write-proc-sys",
            "a write to /proc/sys",
            "open('/proc/sys/kernel/hostname', 'w').write('x')",
        ),
        ("read-passwd", "reading /etc/passwd", "assert 'root:' in open('/etc/passwd').read()"),
        (
            "read-secret",
            "reading a host file beside the run",
            f"assert 'SECRET' in open({secret!r}).read()",
        ),
        (
            "read-repo",
            "reading strop's own source",
            f"assert 'sandbox' in open({str(ROOT / 'src/strop/sandbox.py')!r}).read()",
        ),
        (
            "read-env",
            "reading the trainer's environment",
            "import os\nassert os.environ.get('STROP_PROBE_SECRET') == 'SECRET'",
        ),
        (
            "read-home",
            "seeing the home directory's files",
            f"import os\nassert any(os.path.exists(p) for p in {home_entries()!r})",
        ),
        (
            "see-processes",
            "seeing the trainer among the processes",
            f"import os\nassert os.path.exists('/proc/{probe_pid}/cmdline') and "
            f"b'reliability' in open('/proc/{probe_pid}/cmdline', 'rb').read()",
        ),
        (
            "pidfd-signal",
            "pidfd_send_signal(SIGTERM) to the trainer",
            f"import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({probe_pid}), signal.SIGTERM)",
        ),
        (
            "kill-trainer",
            "os.kill(trainer, SIGTERM)",
            f"import os, signal\nos.kill({probe_pid}, signal.SIGTERM)",
        ),
        (
            "kill-victim",
            "os.kill(another host process, SIGKILL)",
            f"import os\nos.kill({victim_pid}, 9)",
        ),
        (
            "kill-parent",
            "os.kill(os.getppid(), SIGTERM)",
            "import os, signal\nppid = os.getppid()\nassert ppid > 1\nos.kill(ppid, signal.SIGTERM)",
        ),
        (
            "hook-globals",
            "reassigning the old hook's globals, then a socket to 127.0.0.1",
            "import sys\n_DENY, _ROOT = (), ''\nsys.modules['__main__'].__dict__.update(_DENY=(), _ROOT='')\n"
            f"import socket\nsocket.create_connection(('127.0.0.1', {ports['tcp']}), timeout=2).send(b'x')",
        ),
        (
            "socket-tcp",
            "a TCP connection to a 127.0.0.1 listener",
            f"import socket\nsocket.create_connection(('127.0.0.1', {ports['tcp']}), timeout=2).send(b'x')",
        ),
        (
            "socket-udp",
            "a UDP datagram to a 127.0.0.1 listener",
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'x', ('127.0.0.1', {ports['udp']}))\nimport time; time.sleep(0.2)",
            {"judge": "host"},
        ),
        (
            "socket-abstract",
            "an abstract unix socket the trainer listens on",
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({ports['abstract']!r})\ns.send(b'x')",
        ),
        ("setuid", "setuid(0)", "import os\nos.setuid(0)\nassert os.getuid() == 0"),
        (
            "mount",
            "mount(2) via ctypes",
            "import ctypes\nassert ctypes.CDLL(None).mount(b'none', b'/work', b'tmpfs', 0, None) == 0",
        ),
        (
            "nested-userns",
            "a nested user+mount namespace, then a write into the view",
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.unshare(0x10000000 | 0x20000) == 0, os.strerror(ctypes.get_errno())\n"
            "open('/usr/lib/strop-escaped', 'w')",
        ),
        (
            "mknod",
            "mknod of a block device",
            "import os, stat\nos.mknod('/work/sda', stat.S_IFBLK | 0o600, os.makedev(8, 0))",
        ),
        (
            "host-fds",
            "a host file descriptor inherited",
            "import os\nok = ('pipe:', 'socket:', 'anon_inode:', '/dev/null', '/work', '/proc')\n"
            "links = []\nfor n in os.listdir('/proc/self/fd'):\n    try:\n"
            "        links.append(os.readlink(f'/proc/self/fd/{n}'))\n    except OSError:\n"
            "        pass\nassert [x for x in links if not x.startswith(ok)], links",
        ),
        ("fork-bomb", "a fork bomb", "import os\nwhile True:\n    os.fork()", {"timeout_s": 2}),
        ("memory-bomb", "a 4 GB allocation", "x = bytearray(4 * 2**30)", {"timeout_s": 2}),
        ("memory-bomb-list", "a list of 2**31 items", "x = [0] * (2**31)", {"timeout_s": 2}),
        (
            "disk-bomb",
            "200 MB written into the scratch dir",
            "with open('/work/big', 'wb') as f:\n    for _ in range(200):\n        f.write(b'x' * 2**20)",
            {"timeout_s": 5},
        ),
        ("infinite-loop", "an infinite loop", "while True:\n    pass", {"timeout_s": 2}),
        (
            "setsid-grandchild",
            "a setsid grandchild holding stderr (wall clock)",
            "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
            f"'{marker}'])\n    os._exit(0)\nwhile True:\n    pass\n",
            {"timeout_s": 2},
        ),
        (
            "stderr-flood",
            "stderr flooded for the whole timeout (trainer memory)",
            "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)",
            {"timeout_s": 2},
        ),
        (
            "stdout-flood",
            "stdout flooded for the whole timeout (trainer memory)",
            "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
            {"timeout_s": 2},
        ),
    ]
    if ports.get("host_ip"):
        E.append(
            (
                "socket-host-ip",
                f"a TCP connection to the host's own address {ports['host_ip']}",
                f"import socket\nsocket.create_connection(({ports['host_ip']!r}, {ports['tcp_any']}), "
                "timeout=2).send(b'x')",
            )
        )
    return [e if len(e) == 4 else (*e, {}) for e in E]
