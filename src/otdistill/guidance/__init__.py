"""Guidance terms for the sampler, one file each; `build_terms` turns config into terms."""

from __future__ import annotations

from pathlib import Path

from ..config import GuidanceConfig
from ..data import LabelledData
from ..models.generator import LatentDiffusion
from .deviation import DeviationGuidance
from .ot import OTGuidance
from .pool import real_latent_pools


def build_terms(cfg: GuidanceConfig, model: LatentDiffusion, data: LabelledData, cache_dir: str | Path | None = None):
    """The enabled terms (weight > 0), in the order they are applied."""
    terms = []
    if cfg.deviation.weight > 0:
        terms.append(DeviationGuidance(cfg.deviation))
    if cfg.ot.weight > 0:
        cache = Path(cache_dir) / "real_latents.safetensors" if cache_dir else None
        pools = real_latent_pools(model, data, cfg.ot.pool_size, cfg.ot.pool_select, cfg.ot.pool_seed, cache)
        terms.append(OTGuidance(cfg.ot, pools))
    return terms


__all__ = ["build_terms", "OTGuidance", "DeviationGuidance", "real_latent_pools"]
