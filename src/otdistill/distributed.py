"""Many processes through torchrun: which rank does which work, and meeting points.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything is one process.
Sampling is split by class (class c goes to rank c % world) and every class's randomness
derives from (seed, class), so a sharded run writes the same bytes as a single process.
Relabelling splits the images by batch (the same batches as one process, hence the same
logits). Student training is data-parallel (DDP): every rank draws the same global batch and
augmentation from one seeded generator and trains on its share of the rows.
"""

from __future__ import annotations

import atexit
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


def active() -> Rank:
    """The rank within the joined process group; one process when none was joined."""
    return current() if torch.distributed.is_initialized() else Rank()


def init() -> Rank:
    """Join the process group when started by torchrun (NCCL on GPUs, gloo on CPUs)."""
    r = current()
    if r.world > 1 and not torch.distributed.is_initialized():
        # a rank may wait hours for the others to finish their classes
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                             timeout=datetime.timedelta(hours=24))
        # left to interpreter finalisation, gloo's worker threads can free tensors after the
        # interpreter is gone and the rank dies with SIGABRT (pytorch/pytorch#179291)
        atexit.register(leave)
        if torch.cuda.is_available():
            torch.cuda.set_device(r.local)
    return r


def leave() -> None:
    """Leave the process group while the interpreter is still whole; a no-op outside one."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def agree(value):
    """The main rank's `value` on every rank: decisions read from files (is this cell cached?)
    must not differ between ranks, or the collectives that follow would wait forever."""
    if not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_dict(part: dict) -> dict:
    """The union of every rank's dict (each rank holds different keys)."""
    if not torch.distributed.is_initialized():
        return part
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def data_parallel(model: torch.nn.Module, device) -> torch.nn.Module:
    """DDP around `model` under torchrun (gradients averaged over ranks), else `model` itself."""
    if active().world == 1:
        return model
    ids = [device.index] if torch.device(device).type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def my_rows(n: int, r: Rank) -> tuple[torch.Tensor, float]:
    """This rank's rows of a global batch of n and the weight of their mean loss such that
    DDP's average over ranks equals the mean over all n rows. A rank left without rows (n <
    world) still runs one row at weight 0, because every rank must join the gradient sync."""
    rows = torch.arange(r.rank, n, r.world)
    if len(rows) == 0:
        return torch.zeros(1, dtype=torch.long), 0.0
    return rows, len(rows) * r.world / n
