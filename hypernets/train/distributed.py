"""Data-parallel set-up from the environment ``torchrun`` provides (one process per device)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all ranks (for logging)."""
        if self.enabled:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value.item()


def setup(device: str) -> tuple[Distributed, torch.device]:
    """Join the process group when ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo elsewhere); the device of this rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), torch.device(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    if cuda:
        torch.cuda.set_device(local_rank)
        return Distributed(rank, world_size, local_rank), torch.device("cuda", local_rank)
    return Distributed(rank, world_size, local_rank), torch.device(device)
