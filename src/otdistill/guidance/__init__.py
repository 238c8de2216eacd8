"""Guidance terms for the sampler, one file each; `build_terms` turns config into terms."""

from __future__ import annotations

from pathlib import Path

from ..config import GuidanceConfig
from ..data import LabelledData
from ..errors import UserError
from ..models.generator import Generator
from ..surrogate import load_trajectory
from .deviation import DeviationGuidance
from .influence import InfluenceGuidance, real_gradients
from .ot import OTGuidance
from .pool import real_latent_pools


def build_terms(cfg: GuidanceConfig, model: Generator, data: LabelledData, cache_dir: str | Path | None = None,
                quiet: bool = True, classes: list[int] | None = None):
    """The enabled terms (weight > 0), in the order they are applied, for `classes` (default all)."""
    terms = []
    if cfg.influence.weight > 0:
        device = model.device
        surrogates, info = load_trajectory(cfg.influence.surrogate, device)
        if info["class_names"] != data.class_names:
            raise UserError(f"the surrogate in {cfg.influence.surrogate} was trained on other classes; "
                            "retrain it with `otdistill train-surrogate CONFIG --force`")
        real = real_gradients(surrogates, data, cfg.influence.real_per_class, cfg.influence.seed, device)
        terms.append(InfluenceGuidance(cfg.influence, surrogates, real))
    if cfg.deviation.weight > 0:
        terms.append(DeviationGuidance(cfg.deviation))
    if cfg.ot.weight > 0:
        pools = real_latent_pools(model, data, cfg.ot.pool_size, cfg.ot.pool_select, cfg.ot.pool_seed, cache_dir,
                                  classes, quiet)
        terms.append(OTGuidance(cfg.ot, pools))
    return terms


__all__ = ["build_terms", "OTGuidance", "DeviationGuidance", "InfluenceGuidance", "real_latent_pools"]
