"""Classifier training (teachers and students) and scoring on a real test set."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torchvision.ops import roi_align

from . import distributed
from .data import ImageSet, every_nth, to_unit
from .errors import UserError
from .io import atomic_path
from .progress import progress

log = logging.getLogger(__name__)


def random_resized_crop(x: torch.Tensor, scale_min: float, g: torch.Generator, ratio=(3 / 4, 4 / 3),
                        size: int | None = None) -> torch.Tensor:
    """A different RandomResizedCrop per image, as one batched roi_align call; output `size`
    (default the input's)."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(scale_min, 1.0, generator=g) * h * w
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=w)
    ch = torch.sqrt(area / r).clamp(max=h)
    x0 = torch.rand(n, generator=g) * (w - cw)
    y0 = torch.rand(n, generator=g) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], dim=1).to(x)
    # crops are never larger than the image, so one bilinear sample per output pixel suffices
    return roi_align(x, boxes, output_size=(size or h, size or w), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def center_view(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The test-time view at `size`: the central size x size pixels (ImageNet's resize-256 then
    crop-224), or a resize when the images are smaller."""
    h, w = x.shape[-2:]
    if size is None or (h, w) == (size, size):
        return x
    if size <= min(h, w):
        top, left = (h - size) // 2, (w - size) // 2
        return x[..., top:top + size, left:left + size]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(len(x), generator=g) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


@dataclass
class Augment:
    crop_scale_min: float = 0.5
    flip: bool = True
    size: int | None = None  # output side; None = the images' own

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.crop_scale_min < 1.0:
            x = random_resized_crop(x, self.crop_scale_min, g, size=self.size)
        else:
            x = center_view(x, self.size)
        if self.flip:
            x = random_flip(x, g)
        return x


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: ImageSet, device, batch_size: int = 1000,
                   size: int | None = None) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(images)))
        out.append(model(center_view(to_unit(images.get(idx), device), size)).float().cpu())
    return torch.cat(out)


def accuracy(model: torch.nn.Module, images: ImageSet, device, batch_size: int = 1000, size: int | None = None) -> float:
    logits = predict_logits(model, images, device, batch_size, size)
    return (logits.argmax(1) == images.labels).float().mean().item()


def cutmix(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a random box of a shuffled batch into each image; returns (mixed, permutation,
    share of the original image kept). The box area is uniform, i.e. CutMix with Beta(1, 1)."""
    n, _, h, w = x.shape
    lam = torch.rand(1, generator=g).item()
    perm = torch.randperm(n, generator=g)
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm.to(x.device), :, y0:y1, x0:x1]
    return mixed, perm, 1 - (y1 - y0) * (x1 - x0) / (h * w)


@dataclass
class TrainRecipe:
    epochs: int
    batch_size: int
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] = field(default_factory=Augment)
    cutmix: float = 0.0  # probability that a batch is CutMix-ed
    ema_decay: float = 0.0  # > 0: train an exponential moving average of the weights and return it
    schedule: str = "cosine"  # cosine (per step) | step (DC's: x0.1 after the epoch `step_epoch`)
    step_epoch: int = 0  # with schedule=step: epochs trained at the full rate
    compile: bool = False  # torch.compile the training forward (the weights, checkpoints and scoring stay the model's)
    micro_batch: int = 0  # > 0: forward / backward in parts of at most this many images, gradients summed; the
    # caller sets it only where that is the batch's own gradient (no batch statistics, a per-image loss)

    def lr_factor(self, steps_per_epoch: int) -> Callable[[int], float]:
        if self.schedule == "cosine":
            total = max(1, self.epochs * steps_per_epoch)
            return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if self.schedule == "step":
            return lambda step: 1.0 if step < self.step_epoch * steps_per_epoch else 0.1
        raise UserError(f"unknown schedule '{self.schedule}'; use one of {', '.join(SCHEDULES)}")


OPTIMIZERS = ("adamw", "sgd", "sgd_dc")  # sgd: Nesterov momentum 0.9; sgd_dc: plain momentum 0.9, as DC/DSA
SCHEDULES = ("cosine", "step")


def make_optimizer(model: torch.nn.Module, recipe: TrainRecipe, steps_per_epoch: int):
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    elif recipe.optimizer in ("sgd", "sgd_dc"):
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay,
                              nesterov=recipe.optimizer == "sgd")
    else:
        raise UserError(f"unknown optimizer '{recipe.optimizer}'; use one of {', '.join(OPTIMIZERS)}")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_factor(steps_per_epoch))


def _resume(checkpoint: Path | None, parts: dict, g: torch.Generator, extra: dict) -> tuple[int, list[float]]:
    """Load the last per-epoch checkpoint into `parts`, `g` and `extra`; (epochs done, losses)."""
    if checkpoint is None or not checkpoint.is_file():
        return 0, []
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for name, part in parts.items():
            part.load_state_dict(state[name])
    except Exception as exc:  # a damaged checkpoint only costs the epochs it held
        log.warning("ignoring the unreadable training checkpoint %s (%s); starting over", checkpoint, exc)
        return 0, []
    g.set_state(state["generator"])
    extra.update(state["extra"])
    return state["epoch"], state["losses"]


def fit(model: torch.nn.Module, images: ImageSet, recipe: TrainRecipe, loss_fn: Callable, target_fn: Callable,
        g: torch.Generator, device, on_epoch: Callable[[int], None] | None = None, desc: str = "train",
        quiet: bool = False, checkpoint: str | Path | None = None, extra: dict | None = None) -> list[float]:
    """Train `model` on `images`; `target_fn(augmented batch, indices)` gives what `loss_fn`
    compares the student's logits with (hard labels, or a teacher's logits on that very view).
    Returns the mean loss per epoch.

    With `checkpoint`, the whole training state (weights, optimiser, schedule, EMA, random
    generator, and the caller's `extra` dict) is saved there after every epoch and resumed
    from on the next call, so a killed training continues with the same result; the file is
    removed when training ends.

    Under torchrun (a joined process group) training is data-parallel: every rank draws the
    same global batch and views from `g`, so checkpoints and resumption stay those of one
    process, and trains on its share of the rows; only the main rank writes the checkpoint."""
    rank = distributed.active()
    net = distributed.data_parallel(model, device)
    if recipe.compile:
        net = torch.compile(net)
    # small parts stay in the CPU's caches (1.5-1.6x at batch 100-256 on 2 cores); data-parallel ranks already split
    micro = recipe.micro_batch if rank.world == 1 else 0
    n = len(images)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    opt, sched = make_optimizer(model, recipe, steps_per_epoch)
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        recipe.ema_decay), use_buffers=True) if recipe.ema_decay > 0 else None)
    parts = {"model": model, "optimizer": opt, "scheduler": sched, **({"ema": ema} if ema is not None else {})}
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    extra = {} if extra is None else extra
    first, losses = _resume(checkpoint, parts, g, extra)
    bar = progress(total=recipe.epochs * steps_per_epoch, initial=first * steps_per_epoch, desc=desc,
               disable=quiet or not rank.main, leave=False, unit="step")
    for epoch in range(first, recipe.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        total, seen = 0.0, 0
        for start in range(0, n, recipe.batch_size):
            idx = perm[start:start + recipe.batch_size]
            x = to_unit(images.get(idx), device)
            x = recipe.augment(x, g)
            partner, lam = None, 1.0
            if recipe.cutmix > 0 and torch.rand(1, generator=g).item() < recipe.cutmix:
                x, partner, lam = cutmix(x, g)
            rows, weight = distributed.my_rows(len(idx), rank)
            x, mine = x[rows.to(x.device)], idx[rows]
            opt.zero_grad(set_to_none=True)
            loss = 0.0
            for part in torch.arange(len(mine)).tensor_split(-(-len(mine) // (micro or len(mine)))):  # even parts
                share = len(part) / len(mine)  # parts' mean losses weighted to the batch's mean
                view = x[part.to(x.device)]
                out = net(view)
                part_loss = loss_fn(out, target_fn(view, mine[part]))
                if partner is not None:
                    part_loss = lam * part_loss + (1 - lam) * loss_fn(out, target_fn(view, idx[partner][rows][part]))
                (part_loss * weight * share).backward()
                loss += part_loss.item() * share
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            total += loss * len(mine) * (weight > 0)
            seen += len(mine) * (weight > 0)
            bar.update()
        losses.append(total / max(seen, 1))  # this rank's rows under torchrun
        bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
        if recipe.schedule == "step" and epoch + 1 == recipe.step_epoch:
            opt.state.clear()  # DC builds a new optimiser at the lower rate: its momentum starts again
        if on_epoch is not None:
            on_epoch(epoch + 1)
        if checkpoint is not None and epoch + 1 < recipe.epochs and rank.main:
            with atomic_path(checkpoint) as tmp:
                torch.save({"epoch": epoch + 1, "losses": losses, "generator": g.get_state(), "extra": extra,
                            **{name: part.state_dict() for name, part in parts.items()}}, tmp)
    bar.close()
    if checkpoint is not None and rank.main:
        checkpoint.unlink(missing_ok=True)
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    return losses


def channel_stats(images: ImageSet, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of [0, 1] images (a deterministic subset of at most max_images)."""
    x = to_unit(images.get(every_nth(images, max_images).indices))
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
