"""``executor: ray``: the per-record work of a prepare run on Ray actors.

Only *where* chunks run changes. The driver (this process) still reads the inputs into chunks,
and still walks the returned traces in input order to make every dedup decision, count and
write (strop.data.prepare.pipeline.Walker); each actor is a long-lived Ray worker process that
runs the very ``ChunkRunner`` a local worker process runs. So the data, the quarantine and the
report counts are byte-identical to ``executor: local`` for the same config and input.

Why Ray core actors and not Ray Data: the pipeline needs (1) strop's own readers, so that rows
keep their ``file:line`` origins, blank lines and BOMs are handled and every format strop
trains on is read exactly as training reads it; (2) per-row traces that are nested Python
objects, not columns; (3) results in input order with a bounded number of chunks in flight,
consumed by a stateful driver. Ray Data would need a custom datasource to keep (1), Python
object columns for (2) and ``preserve_order`` plus a driver-side iterator for (3) — the same
stream with more machinery in between and pandas as an extra dependency. An ordered window of
actor calls is the local process pool's design, one to one.
"""

from __future__ import annotations

import resource
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from strop.config.schema import Section
from strop.data.prepare.config import RaySection
from strop.data.prepare.io import Chunk
from strop.data.prepare.pipeline import _init_worker, _run_chunk
from strop.errors import StropError

INSTALL_HINT = "pip install 'strop[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or a StropError that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise StropError(
            f"executor: ray needs the Ray package, which is not installed; install the extra "
            f"with `{INSTALL_HINT}` (or set executor: local)."
        ) from None
    return ray


class ChunkActor:
    """One Ray worker process holding the steps, built once (as a local worker's initializer)."""

    def __init__(self, specs: list[tuple[str, dict]], out_fmt: str, stratify: str | None) -> None:
        _init_worker(specs, out_fmt, stratify)

    def run(self, chunk: Chunk) -> tuple[list, list[float]]:
        return _run_chunk(chunk)

    def peak_rss_mib(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def ray_session(rc: RaySection, log: Callable[[str], None]) -> Iterator[Any]:
    """Connect to Ray for one run: start a local cluster (``address: null``) or join one, and
    shut down what this run started. A process that already called ``ray.init`` keeps its
    connection (the ``ray`` section's cluster settings are then not used)."""
    ray = import_ray()
    if ray.is_initialized():
        log("prepare: using the Ray connection this process already has")
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if rc.address is None:
        kwargs.update(num_cpus=rc.num_cpus, object_store_memory=rc.object_store_memory)
    else:
        kwargs["address"] = rc.address
    if rc.runtime_env is not None:
        kwargs["runtime_env"] = rc.runtime_env
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_chunks_ray(
    ray: Any,
    chunks: Iterator[Chunk],
    specs: list[tuple[str, Section]],
    out_fmt: str,
    stratify: str | None,
    rc: RaySection,
    info: dict[str, Any],
) -> Iterator[tuple[Chunk, tuple[list, list[float]]]]:
    """(chunk, result) in input order, as pipeline.run_chunks; ``info`` receives the number of
    actors and, at the end, the largest actor's peak RSS."""
    n = rc.actors
    if n is None:
        n = max(1, int(ray.cluster_resources().get("CPU", 1) // rc.cpus_per_actor))
    plain = [(name, p.model_dump()) for name, p in specs]
    remote = ray.remote(num_cpus=rc.cpus_per_actor)(ChunkActor)
    actors = [remote.remote(plain, out_fmt, stratify) for _ in range(n)]
    info["workers"] = n
    try:
        window: deque = deque()
        for i, chunk in enumerate(chunks):
            # round-robin: each actor's queue stays in_flight deep; results come back in order
            window.append((chunk, actors[i % n].run.remote(chunk)))
            if len(window) >= rc.in_flight * n:
                done, ref = window.popleft()
                yield done, ray.get(ref)
        while window:
            done, ref = window.popleft()
            yield done, ray.get(ref)
        rss = ray.get([a.peak_rss_mib.remote() for a in actors])
        info["largest_worker_rss_mib"] = round(max(rss), 1)
    finally:
        for actor in actors:
            ray.kill(actor)
