"""torchrun integration: rank, world size and process group, or a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(device: str | None = None) -> DistInfo:
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    wants_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if world == 1:
        return DistInfo(device=torch.device("cuda" if wants_cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if wants_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wants_cuda else "gloo")
    return DistInfo(rank, world, torch.device("cuda", local) if wants_cuda else torch.device("cpu"))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
