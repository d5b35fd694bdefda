"""Errors users can act on. The CLI maps them to one clear sentence and an exit code."""


class StropError(Exception):
    """Bad input or config (exit code 2): the message names the file, line or key at fault."""

    exit_code = 2


class StropRuntimeError(Exception):
    """A failure while running (exit code 1), e.g. a NaN loss under the 'stop' policy."""

    exit_code = 1


def disk_full(exc: BaseException, where, needed_bytes: int | None = None) -> str | None:
    """ "no space left on device (needed ~N MB at PATH)" when ``exc``, raised while writing
    under ``where``, means the disk (or quota) is full; else None (the caller re-raises).

    Writers report it differently: OSError ENOSPC/EDQUOT; safetensors "os error 28"; torch.save's
    zip writer only "[enforce fail at inline_container.cc] ... unexpected pos" (then the free
    space decides); DCP wraps any of them per rank in a CheckpointException (``failures``)."""
    import errno
    import shutil
    from pathlib import Path

    seen, todo, definite, vague = set(), [exc], False, False
    while todo and not definite:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e)
        definite = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            s in text for s in ("No space left on device", "os error 28", "Disk quota exceeded")
        )
        vague |= "inline_container" in text or "file write failed" in text
        todo += [e.__cause__, e.__context__]
        for failure in (getattr(e, "failures", None) or {}).values():  # DCP: rank -> (exc, tb)
            todo.append(failure[0] if isinstance(failure, tuple) else failure)
    if not (definite or vague):
        return None
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if not definite and free >= max(needed_bytes or 0, 1 << 20):
        return None  # a vague write failure with room to spare: not a full disk
    need = f"~{_mb(needed_bytes)} at {where}" if needed_bytes else f"at {where}"
    return f"no space left on device (needed {need}; {_mb(free)} free)"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 10e6 else f"{n / 1e6:,.0f} MB"
