"""Soft labels from a teacher ensemble: the mean of the members' logits.

The same ensemble labels stored (one unaugmented view per image, kept in the artifact) and
online (each augmented view a student sees). Which teachers join a set's ensemble is LIA's
choice (`choose_teachers`): by the IPC schedule, or measured from the images (entropy rule).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from . import distributed
from .data import to_unit
from .errors import UserError
from .teachers import load_teacher

if TYPE_CHECKING:
    from .context import RunContext

log = logging.getLogger(__name__)
_TOLD: set[tuple[int, int]] = set()  # (asked, configured) shortfalls already reported


class TeacherEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module], names: list[str]):
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.names = names

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def select_teachers(paths: list[str], ipc: int, schedule: list[list[int]]) -> list[str]:
    """The first `count` teachers, with count from the last [ipc, count] step not above `ipc`
    (clipped to the teachers available, which it says once)."""
    if not paths:
        raise UserError("no teachers configured; add at least one under `teachers` in the config")
    steps = sorted((int(s[0]), int(s[1])) for s in schedule if len(s) == 2)
    if len(steps) != len(schedule) or any(count < 1 for _, count in steps):
        raise UserError(f"relabel.schedule must be a list of [ipc, count] pairs with count >= 1, got {schedule}")
    count = next((c for threshold, c in reversed(steps) if threshold <= ipc), steps[0][1] if steps else len(paths))
    if count > len(paths) and (count, len(paths)) not in _TOLD:
        _TOLD.add((count, len(paths)))  # once per run, not once per set
        log.warning("relabel.schedule asks for %d teachers at IPC %d but %d %s configured; labelling with %d "
                    "(add teachers, or set relabel.schedule to what you have)", count, ipc, len(paths),
                    "is" if len(paths) == 1 else "are", len(paths))
    return paths[:min(count, len(paths))]


def load_ensemble(paths: list[str | Path], device="cpu") -> TeacherEnsemble:
    loaded = [load_teacher(p, device) for p in paths]
    return TeacherEnsemble([m for m, _ in loaded], [str(p) for p in paths]).eval()


@torch.no_grad()
def soft_logits(ensemble: TeacherEnsemble, images: torch.Tensor, device, batch_size: int = 500) -> torch.Tensor:
    """Ensemble logits for uint8 (N, C, H, W) images, shown unaugmented. Under torchrun each
    rank labels every world-th batch and all ranks get every row back."""
    starts = list(range(0, len(images), batch_size))
    mine = {}
    for b in distributed.active().mine(range(len(starts))):
        x = to_unit(images[starts[b]:starts[b] + batch_size], device)
        mine[b] = ensemble(x).float().cpu()
    done = distributed.gather_dict(mine)
    return torch.cat([done[b] for b in range(len(starts))])


def label_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of softmax(logits), divided by log K (0 = one-hot, 1 = uniform)."""
    p = logits.float().softmax(1)
    return -(p * p.clamp_min(1e-12).log()).sum(1) / math.log(logits.shape[1])


def entropy_rule(first: nn.Module, images: torch.Tensor, real: torch.Tensor, available: int, device) -> dict:
    """Our extension to LIA, not the paper's: the ensemble size measured from the distilled
    images themselves. The first teacher's mean label entropy on the images, relative to its
    entropy on real training images, says how much ambiguity the images carry: prototypical
    images (ratio near 0) get one teacher and simple labels, images as varied as real data
    (ratio >= 1) get all `available` teachers, linearly in between."""
    one = TeacherEnsemble([first], ["first"]).eval()
    h_images = label_entropy(soft_logits(one, images, device)).mean().item()
    h_real = label_entropy(soft_logits(one, real, device)).mean().item()
    ratio = h_images / max(h_real, 1e-8)
    count = max(1, min(available, 1 + round(ratio * (available - 1))))
    return {"rule": "entropy", "entropy_images": h_images, "entropy_real": h_real, "ratio": ratio, "count": count}


def choose_teachers(ctx: RunContext, images: torch.Tensor, ipc: int) -> tuple[list[str], dict]:
    """LIA's ensemble for a set of `ipc` uint8 images per class: the configured teachers' paths
    chosen by relabel.rule, and how (recorded in the manifest). Only the entropy rule reads
    the dataset."""
    from .metrics import held_out

    cfg = ctx.cfg
    paths = [t.path for t in cfg.teachers]
    if cfg.relabel.rule == "schedule":
        chosen = select_teachers(paths, ipc, cfg.relabel.schedule)
        return chosen, {"rule": "schedule", "count": len(chosen)}
    data = ctx.data
    real = data.train.get(held_out(data.train, data.num_classes, cfg.relabel.real_per_class, seed=0))
    first, _ = load_teacher(paths[0], ctx.device)
    measured = entropy_rule(first, images, real, len(paths), ctx.device)
    return paths[:measured["count"]], measured
