"""Where a verb writes: checked up front, so a wrong path is one sentence naming the key (exit
2), never a traceback from deep inside the run."""

from __future__ import annotations

import os
from pathlib import Path

from strop.errors import StropError


def _blocker(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists but is not a directory."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def output_dir(path: str | Path, key: str, create: bool = True) -> Path:
    """``path`` as a directory a verb may write into (created when ``create``): not a file,
    not under a file, writable. ``key`` names the config key or option in the sentence."""
    path = Path(path)
    if not str(path).strip() or str(path) == ".":
        raise StropError(f"{key}: empty; name a directory for the output")
    blocker = _blocker(path)
    if blocker == path:
        raise StropError(
            f"{key}: {path} is an existing file, not a directory; choose another {key}."
        )
    if blocker is not None:
        raise StropError(
            f"{key}: cannot create {path}, because {blocker} is a file, not a directory."
        )
    if create:
        probe = path / f".strop-write-test-{os.getpid()}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.touch()  # permissions alone do not tell (root, read-only mounts)
            probe.unlink()
        except OSError as exc:
            raise StropError(
                f"{key}: cannot write to {path} ({exc.strerror or exc}); choose a writable {key}."
            ) from None
        return path
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StropError(f"{key}: {existing} is not writable; choose another")
    return path


def output_file(path: str | Path, key: str) -> Path:
    """``path`` as a file a verb may (over)write: not a directory, its folder creatable."""
    path = Path(path)
    if path.is_dir():
        raise StropError(f"{key}: {path} is a directory; give a file path")
    if path.parent != Path("."):
        output_dir(path.parent, key, create=False)
    return path
