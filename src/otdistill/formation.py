"""Multi-formation (IDC, Kim et al. 2022; RDED packs patches alike): each stored image holds
f x f images of 1/f its side, so a budget of IPC stored images trains students on f^2 x IPC
smaller ones. Sets are made (sampled or selected) at full size and packed on writing; students,
teachers and metrics read them unpacked, each part enlarged back to the stored size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(images: torch.Tensor, f: int) -> None:
    if images.shape[-1] % f or images.shape[-2] % f:
        raise ValueError(f"images of {tuple(images.shape[-2:])} pixels do not split into {f} x {f} parts")


def pack(images: torch.Tensor, f: int) -> torch.Tensor:
    """uint8 (n * f^2, C, H, W) -> (n, C, H, W): image i * f^2 + j shrunk by f (the mean of each
    f x f block) into part j of stored image i, parts in row-major order."""
    if f == 1:
        return images
    _check(images, f)
    n, c, h, w = images.shape
    if n % (f * f):
        raise ValueError(f"{n} images do not fill whole packs of {f * f}")
    grid = _shrink(images, f).view(n // (f * f), f, f, c, h // f, w // f)  # pack, row, column, C, h, w
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(n // (f * f), c, h, w)


def unpack(images: torch.Tensor, f: int) -> torch.Tensor:
    """uint8 (n, C, H, W) -> (n * f^2, C, H, W): each stored image's parts in row-major order,
    enlarged back to H x W bilinearly (as IDC decodes its parts)."""
    if f == 1:
        return images
    _check(images, f)
    n, c, h, w = images.shape
    parts = images.view(n, c, f, h // f, f, w // f).permute(0, 2, 4, 1, 3, 5).reshape(n * f * f, c, h // f, w // f)
    return _enlarge(parts, h, w)


def as_part(images: torch.Tensor, f: int) -> torch.Tensor:
    """uint8 (n, C, H, W) -> the same images as they read back from a pack of formation f:
    shrunk by f and enlarged back, what students and teachers see of them (RDED scores its
    crops as such parts)."""
    if f == 1:
        return images
    _check(images, f)
    return _enlarge(_shrink(images, f), *images.shape[-2:])


def _shrink(images: torch.Tensor, f: int) -> torch.Tensor:
    return F.avg_pool2d(images.float(), f).round().to(torch.uint8)  # the mean of each f x f block


def _enlarge(parts: torch.Tensor, h: int, w: int) -> torch.Tensor:
    big = F.interpolate(parts.float(), size=(h, w), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)
