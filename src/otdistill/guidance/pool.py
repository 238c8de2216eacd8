"""Per-class pools of real latents (the targets of OT guidance), encoded once and cached."""

from __future__ import annotations

import logging
from pathlib import Path

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


def real_latent_pools(model: Generator, data: LabelledData, size: int, select: str, seed: int,
                      cache_dir: str | Path | None = None, classes: list[int] | None = None,
                      quiet: bool = True) -> dict[int, torch.Tensor]:
    """{class index: (size, C, h, w) real latents} for `classes` (default all). Each class is
    cached in its own file under cache_dir, so ranks that sample different classes encode
    only theirs, and a damaged file costs one class's encoding."""
    if select not in POOL_SELECTIONS:
        raise UserError(f"unknown pool selection '{select}'; use one of {', '.join(POOL_SELECTIONS)}")
    device = model.device
    pools = {}
    for c in progress(range(data.num_classes) if classes is None else classes, desc="encode real pools", disable=quiet,
                  leave=False):
        cached = Path(cache_dir) / f"real-latents-{select}-{size}-{seed}-{c}.safetensors" if cache_dir else None
        if cached is not None and cached.is_file():
            try:
                pools[c] = load_file(cached)["latents"]
                continue
            except (SafetensorError, OSError, KeyError) as exc:
                log.warning("re-encoding the real pool of class %d: %s is unreadable (%s)", c, cached, exc)
        idx = data.train.indices_of(c)
        if len(idx) < size:
            raise UserError(f"class '{data.class_names[c]}' has {len(idx)} training images, fewer than the real pool "
                            f"size {size}; lower sample.guidance.ot.pool_size")
        g = generator(seed, "pool", c)
        if select == "random":
            pools[c] = encode_all(model, data.train, device, class_subset(data.train, c, size, g).sort().values)
        else:
            candidates = class_subset(data.train, c, 10 * size, g).sort().values
            latents = encode_all(model, data.train, device, candidates)
            pools[c] = latents[nearest_distinct(kmeans_centres(latents, size, seed), latents)]
        if cached is not None:
            with atomic_path(cached) as tmp:
                save_file({"latents": pools[c].contiguous()}, tmp)
    return pools
