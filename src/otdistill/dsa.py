"""DSA's augmentation for student training (Zhao & Bilen, ICML 2021), written from its definitions.

The DC/DSA evaluation protocol augments every batch with ONE operation drawn uniformly from its
strategy (`color_crop_cutout_flip_scale_rotate` for Fashion-MNIST), each image with its own
random parameters. The operations act on normalised images (DSA normalises the dataset first),
so their zero padding is the dataset mean and brightness moves by normalised units; `DSAugment`
therefore normalises, augments and undoes the normalisation (our classifiers normalise inside).

Each operation is a pure function of its per-image parameters, so the tests check it against
its formula; `DSAugment` draws those parameters from the training's seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ParamDiffAug's ranges
BRIGHTNESS = 1.0  # x + (u - 0.5) * 1.0
SATURATION = 2.0  # channel mean + (x - mean) * u * 2
CONTRAST = 0.5  # image mean + (x - mean) * (u + 0.5)
CROP_PAD = 0.125  # translate by up to 1/8 of the side, zeros fill
CUTOUT = 0.5  # a zeroed square of half the side
FLIP_PROB = 0.5
SCALE = 1.2  # each axis scaled by a factor in [1/1.2, 1.2]
ROTATE_DEGREES = 15.0

OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")  # DSA's strategy for all but digits


def _per_image(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return u.to(x.device, x.dtype).view(-1, 1, 1, 1)


def brightness(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return x + (_per_image(u, x) - 0.5) * BRIGHTNESS


def saturation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)  # over channels: a grey image stays as it is
    return (x - mean) * (_per_image(u, x) * SATURATION) + mean


def contrast(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_image(u, x) + CONTRAST) + mean


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[i, :, r, c] = x[i, :, r + dy_i, c + dx_i], zero where that falls outside (DSA's crop)."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h) + dy.to(x.device).view(n, 1)
    cols = torch.arange(w, device=x.device).view(1, w) + dx.to(x.device).view(n, 1)
    inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    gathered = x[torch.arange(n, device=x.device).view(n, 1, 1), :, rows.clamp(0, h - 1).view(n, h, 1),
                 cols.clamp(0, w - 1).view(n, 1, w)]  # n x h x w x channels
    return gathered.permute(0, 3, 1, 2) * inside


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zero the square of side round(CUTOUT * side) whose rows start at cy - side // 2 (and
    columns at cx - side // 2), clipped to the image."""
    n, _, h, w = x.shape
    sh, sw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    top = (cy.to(x.device) - sh // 2).view(n, 1)
    left = (cx.to(x.device) - sw // 2).view(n, 1)
    r = torch.arange(h, device=x.device).view(1, h)
    c = torch.arange(w, device=x.device).view(1, w)
    in_rows = ((r >= top) & (r < top + sh)).view(n, 1, h, 1)
    in_cols = ((c >= left) & (c < left + sw)).view(n, 1, 1, w)
    return x * ~(in_rows & in_cols)


def flip(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_image(u, x) < FLIP_PROB, x.flip(-1), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # output pixel at normalised coordinates p samples the input at theta @ [p, 1], zeros outside
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def scale(x: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return _affine(x, theta)


def rotate(x: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(radians), torch.sin(radians)
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    return _affine(x, theta)


def apply(x: torch.Tensor, operation: str, g: torch.Generator) -> torch.Tensor:
    """One DSA operation with fresh per-image parameters drawn from `g` (DSA's ranges)."""
    n, _, h, w = x.shape

    def uniform() -> torch.Tensor:
        return torch.rand(n, generator=g)

    if operation == "color":  # brightness, then saturation, then contrast
        return contrast(saturation(brightness(x, uniform()), uniform()), uniform())
    if operation == "crop":
        sy, sx = int(h * CROP_PAD + 0.5), int(w * CROP_PAD + 0.5)
        return translate(x, torch.randint(-sy, sy + 1, (n,), generator=g), torch.randint(-sx, sx + 1, (n,), generator=g))
    if operation == "cutout":  # centres range one past the last pixel when the side is even, as in DSA
        sh, sw = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
        return cutout(x, torch.randint(0, h + 1 - sh % 2, (n,), generator=g),
                      torch.randint(0, w + 1 - sw % 2, (n,), generator=g))
    if operation == "flip":
        return flip(x, uniform())
    if operation == "scale":
        return scale(x, uniform() * (SCALE - 1 / SCALE) + 1 / SCALE, uniform() * (SCALE - 1 / SCALE) + 1 / SCALE)
    if operation == "rotate":
        return rotate(x, (uniform() - 0.5) * 2 * math.radians(ROTATE_DEGREES))
    raise ValueError(f"unknown DSA operation '{operation}'; use one of {', '.join(OPERATIONS)}")


@dataclass
class DSAugment:
    """A TrainRecipe augmentation: per batch one operation of `operations`, in the normalised
    space of `mean` / `std` (the training data's statistics, as DSA normalises the dataset)."""

    mean: list[float]
    std: list[float]
    operations: tuple[str, ...] = OPERATIONS

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        operation = self.operations[int(torch.randint(len(self.operations), (1,), generator=g))]
        return apply((x - mean) / std, operation, g) * std + mean
