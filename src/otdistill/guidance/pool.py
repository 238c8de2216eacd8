"""Per-class pools of real latents (the targets of OT guidance), encoded once and cached."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data import LabelledData, class_subset
from ..errors import UserError
from ..io import atomic_path, generator
from ..models.generator import Generator
from ..progress import progress
from ..selection import kmeans_centres, nearest_distinct
from ..train_generator import encode_all

log = logging.getLogger(__name__)

POOL_SELECTIONS = ("random", "kmeans")


def cached_pool(path: Path | None, key: str, make: Callable[[], torch.Tensor], what: str) -> torch.Tensor:
    """The tensor cached under `key` at `path` (safetensors), else make() it and cache it
    atomically; an unreadable file costs a warning and one remake."""
    if path is not None and path.is_file():
        try:
            return load_file(path)[key]
        except (SafetensorError, OSError, KeyError) as exc:
            log.warning("making the %s again: %s is unreadable (%s)", what, path, exc)
    pool = make()
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({key: pool.contiguous()}, tmp)
    return pool


def real_latent_pools(model: Generator, data: LabelledData, size: int, select: str, seed: int,
                      cache_dir: str | Path | None = None, classes: list[int] | None = None,
                      quiet: bool = True) -> dict[int, torch.Tensor]:
    """{class index: (size, C, h, w) real latents} for `classes` (default all). Each class is
    cached in its own file under cache_dir, so ranks that sample different classes encode
    only theirs, and a damaged file costs one class's encoding."""
    if select not in POOL_SELECTIONS:
        raise UserError(f"unknown pool selection '{select}'; use one of {', '.join(POOL_SELECTIONS)}")
    device = model.device

    def encode(c: int) -> torch.Tensor:
        idx = data.train.indices_of(c)
        if len(idx) < size:
            raise UserError(f"class '{data.class_names[c]}' has {len(idx)} training images, fewer than the real pool "
                            f"size {size}; lower sample.guidance.ot.pool_size")
        g = generator(seed, "pool", c)
        if select == "random":
            return encode_all(model, data.train, device, class_subset(data.train, c, size, g).sort().values)
        candidates = class_subset(data.train, c, 10 * size, g).sort().values
        latents = encode_all(model, data.train, device, candidates)
        return latents[nearest_distinct(kmeans_centres(latents, size, seed), latents)]

    pools = {}
    for c in progress(range(data.num_classes) if classes is None else classes, desc="encode real pools", disable=quiet,
                      leave=False):
        cached = Path(cache_dir) / f"real-latents-{select}-{size}-{seed}-{c}.safetensors" if cache_dir else None
        pools[c] = cached_pool(cached, "latents", lambda: encode(c), f"real latent pool of class {c}")
    return pools
