"""One writer per run dir, and a resume that continues the same run or refuses.

Before anything in ``train.output_dir`` is written:
- the dir must be a writable directory (a sentence, not a traceback, when it is a file, under
  a file, or read-only);
- an OS lock (``flock`` on ``.lock``) is taken for the life of the process, so a second run on
  the same dir stops at once naming the holder's PID; the kernel drops the lock when the
  holder dies, however it dies;
- when a committed checkpoint would be resumed, the new config is compared with the one the
  checkpoint was trained with, and the training data with its fingerprint: a change that
  alters the model or the data order is refused naming the keys; ``train.resume: never``
  over such a dir moves the old run aside (``replaced-<time>/``) instead of mixing the two.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from strop.config.load import dump_config
from strop.config.schema import Config
from strop.errors import StropError
from strop.files import output_dir
from strop.train.checkpoint import committed, find_resume

LOCK = ".lock"
INPUTS = "inputs.json"  # fingerprints of the training data the checkpoints were trained on
# Keys a resumed run may change: they alter neither the weights so far nor the data order.
HARMLESS = (
    "train.output_dir",  # a run dir moved or copied elsewhere is still the same run
    "train.max_steps",
    "train.epochs",
    "train.log_every",
    "train.eval_every",
    "train.eval_tasks",
    "train.save_every",
    "train.keep_last",
    "train.resume",
    "train.progress",
    "train.tensorboard",
    "train.save_merged",
    "train.nan_policy",
    "train.max_nan_skips",
    "data.max_bad_fraction",
)
_HELD: dict[str, Any] = {}  # run dir -> its open lock file, kept open while this process lives


def claim(cfg: Config, source: str = "config") -> Path:
    """The run dir, checked, locked for this process, and safe to resume or start in."""
    run_dir = Path(cfg.train.output_dir)
    _make_writable_dir(run_dir)
    _lock(run_dir)
    ckpt_root = run_dir / "checkpoints"
    if cfg.train.resume == "never" and committed(ckpt_root):
        _move_aside(run_dir)
    elif find_resume(ckpt_root, cfg.train.resume) is not None:
        check_same_run(cfg, run_dir, source)
    return run_dir


def _make_writable_dir(run_dir: Path) -> None:
    # Not '' or '.': the run dir gets a lock, and resume: never moves its contents aside.
    output_dir(run_dir, "train.output_dir")


def _lock(run_dir: Path) -> None:
    key = str(run_dir.resolve())
    if key in _HELD:  # this process holds it already (e.g. a second train() in one test)
        return
    handle = open(run_dir / LOCK, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StropError(
            f"train.output_dir: {run_dir} is in use by another strop run (PID {holder}); "
            "wait for it to finish or choose another output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle


def release(run_dir: Path) -> None:
    """Let go of the lock before the process ends (the kernel does it at exit anyway)."""
    handle = _HELD.pop(str(Path(run_dir).resolve()), None)
    if handle is not None:
        handle.close()


def _move_aside(run_dir: Path) -> None:
    """``train.resume: never`` over an earlier run: its files go to replaced-<time>/, so the
    new run starts clean and nothing of the old one is lost."""
    aside = run_dir / time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime())
    aside.mkdir()
    for item in run_dir.iterdir():
        if item.name != LOCK and not item.name.startswith("replaced-"):
            item.rename(aside / item.name)
    print(f"train.resume: never: the earlier run in {run_dir} was moved to {aside.name}/")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS)


def check_same_run(cfg: Config, run_dir: Path, source: str) -> None:
    """Refuse to resume when the config or the data changed in a way that matters."""
    saved = run_dir / "config.yaml"
    if saved.exists():
        # Both sides as dump_config writes them: keys a stage does not read are left out alike.
        old = _flat(yaml.safe_load(saved.read_text()) or {})
        new = _flat(yaml.safe_load(dump_config(cfg)))
        changed = sorted(
            k for k in set(old) | set(new) if old.get(k) != new.get(k) and not _harmless(k)
        )
        if changed:
            shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise StropError(
                f"{source}: {run_dir} holds a checkpoint trained with other settings: "
                f"{shown}{more}; resuming would mix two runs. Use another train.output_dir, "
                "or train.resume=never to start over (the old run is kept aside)"
            )
    recorded = run_dir / INPUTS
    if recorded.exists():
        then = json.loads(recorded.read_text())
        now = fingerprints(cfg)
        for path, digest in now.items():
            if then.get(path) not in (None, digest):
                raise StropError(
                    f"data.train: {path} changed since {run_dir}'s checkpoints were written; "
                    "resuming would train on another data order. Use another train.output_dir, "
                    "or train.resume=never to start over (the old run is kept aside)"
                )


def fingerprints(cfg: Config) -> dict[str, str]:
    """sha256 of each training (and eval) file, by path."""
    paths = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
    if isinstance(cfg.data.eval, str) and cfg.data.eval:
        paths = [*paths, cfg.data.eval]
    out = {}
    for p in paths:
        digest = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            continue  # reading the data reports a missing file with its own sentence
        out[str(p)] = digest.hexdigest()
    return out


def record_inputs(cfg: Config, run_dir: Path) -> None:
    (run_dir / INPUTS).write_text(json.dumps(fingerprints(cfg), indent=1) + "\n")
