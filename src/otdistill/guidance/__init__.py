"""Guidance terms for the sampler, one file each, found through the registry (registry.py).

The imports below register the terms; their order is the order the terms apply at each step.
"""

from __future__ import annotations

from .influence import InfluenceGuidance  # noqa: F401  (registers "influence")
from .deviation import DeviationGuidance  # noqa: F401  (registers "deviation"), isort: skip
from .ot import OTGuidance  # noqa: F401  (registers "ot"), isort: skip
from .feature_ot import FeatureOTGuidance  # noqa: F401  (registers "feature_ot"), isort: skip
from .pool import real_latent_pools
from .registry import (TERMS, GuidanceTerm, TermInputs, build_terms, method_label, models_read, off_overrides,
                       register_term)

__all__ = ["build_terms", "register_term", "models_read", "method_label", "off_overrides", "TERMS", "GuidanceTerm", "TermInputs",
           "OTGuidance", "FeatureOTGuidance", "DeviationGuidance", "InfluenceGuidance", "real_latent_pools"]
