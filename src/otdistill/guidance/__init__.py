"""Guidance terms for the sampler, one file each, found through the registry (registry.py).

The imports below register the terms; their order is the order the terms apply at each step.
"""

from __future__ import annotations

from .influence import InfluenceGuidance  # noqa: F401  (registers "influence")
from .deviation import DeviationGuidance  # noqa: F401  (registers "deviation"), isort: skip
from .ot import OTGuidance  # noqa: F401  (registers "ot"), isort: skip
from .pool import real_latent_pools
from .registry import TERMS, GuidanceTerm, TermInputs, build_terms, method_label, off_overrides, register_term

__all__ = ["build_terms", "register_term", "method_label", "off_overrides", "TERMS", "GuidanceTerm", "TermInputs",
           "OTGuidance", "DeviationGuidance", "InfluenceGuidance", "real_latent_pools"]
