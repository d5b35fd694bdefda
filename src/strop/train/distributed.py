"""One process, DDP or FSDP2, chosen by ``train.distributed``; launched by torchrun.

Multi-node is the same command with torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from strop.errors import StropError


@dataclass
class Dist:
    mode: str
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


def setup(mode: str) -> Dist:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if mode == "none":
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise StropError(
                "launched with several processes but train.distributed=none; "
                "set train.distributed=ddp or fsdp2"
            )
        return Dist("none", device=device)
    if "RANK" not in os.environ:
        # A single process may still use the ddp/fsdp2 code path (world of one).
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=None)
    return Dist(mode, dist.get_rank(), dist.get_world_size(), device)


def wrap(module: nn.Module, d: Dist) -> nn.Module:
    """DDP wraps the objective; FSDP2 shards each decoder layer, then the root."""
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.device.index] if d.device.type == "cuda" else None
        return DDP(module, device_ids=ids)
    if d.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for sub in module.modules():
            if type(sub).__name__.endswith("DecoderLayer"):
                fully_shard(sub)
        fully_shard(module)
    return module


def teardown(failed: bool | None = None) -> None:
    """Leave the process group. After a failure (default: an exception is propagating) skip
    the barrier: the other ranks may never reach it, and a rank stuck there never exits, so
    torchrun would wait forever instead of reporting the failure and stopping the rest."""
    if failed is None:
        failed = sys.exc_info()[1] is not None
    if dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
