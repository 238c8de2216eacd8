"""Many processes through torchrun: which rank does which class, and meeting points.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything is one process. Work
is split by class (class c goes to rank c % world), and every class's randomness derives
from (seed, class), so a sharded run writes the same bytes as a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, items: range | list[int]) -> list[int]:
        return [i for i in items if i % self.world == self.rank]


def current() -> Rank:
    return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def init() -> Rank:
    """Join the process group when started by torchrun (NCCL on GPUs, gloo on CPUs)."""
    r = current()
    if r.world > 1 and not torch.distributed.is_initialized():
        # a rank may wait hours for the others to finish their classes
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                             timeout=datetime.timedelta(hours=24))
        if torch.cuda.is_available():
            torch.cuda.set_device(r.local)
    return r


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
