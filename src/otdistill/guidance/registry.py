"""The guidance-term registry: a term's name (its section under `sample.guidance`) maps to
the factory that builds it from that section. The sampler, the pipeline, the report's
method names and the benchmark's "no guidance" ablation all read this table, so a new term
is its own file (a GuidanceTerm subclass plus one `register_term` call), imported in
guidance/__init__.py, and its config section; nothing else changes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import LabelledData
from ..models.generator import Generator


class GuidanceTerm(ABC):
    """`term(state) -> delta`, the amount subtracted from the sampler's next latent
    (sample.SamplerState says what a term sees). Subclasses set `name` and implement
    `delta`; every call is timed into `seconds` (the guidance-overhead measurement)."""

    name = ""

    def __init__(self, cfg):
        self.cfg = cfg
        self.seconds = 0.0

    def __call__(self, state) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return self.delta(state)
        finally:
            self.seconds += time.perf_counter() - start

    @abstractmethod
    def delta(self, state) -> torch.Tensor:
        """The term's step for this state (a tensor shaped like state.z)."""


@dataclass
class TermInputs:
    """What a term's factory may read besides its own config section."""

    model: Generator
    data: LabelledData
    cache_dir: str | Path | None = None  # where costly per-class inputs (real pools) are cached
    quiet: bool = True
    classes: list[int] | None = None  # the classes this process samples (None = all)
    teachers: list[str] = field(default_factory=list)  # the configured label teachers' folders, in order


@dataclass(frozen=True)
class TermEntry:
    name: str
    build: Callable[[Any, TermInputs], GuidanceTerm]
    family: str | None = None  # a method name standing for all the terms of a family together (igd)
    # (its config section, the label teachers' folders) -> the folders of models it reads beyond the
    # generator, which therefore shape the images (a sampled set's fingerprint names them)
    reads: Callable[[Any, list[str]], list[str]] | None = None


TERMS: dict[str, TermEntry] = {}  # in the order the terms apply at each step


def register_term(name: str, build: Callable[[Any, TermInputs], GuidanceTerm], family: str | None = None,
                  reads: Callable[[Any, list[str]], list[str]] | None = None) -> None:
    TERMS[name] = TermEntry(name, build, family, reads)


def models_read(cfg, teachers: list[str]) -> list[str]:
    """The folders of the models the enabled terms of a GuidanceConfig read beyond the generator."""
    return [path for name, entry in TERMS.items() if entry.reads and getattr(cfg, name).weight > 0
            for path in entry.reads(getattr(cfg, name), teachers)]


def build_terms(cfg, model: Generator, data: LabelledData, cache_dir: str | Path | None = None,
                quiet: bool = True, classes: list[int] | None = None, teachers: list[str] = ()) -> list[GuidanceTerm]:
    """The enabled terms (weight > 0) of a GuidanceConfig, in the order they apply."""
    inputs = TermInputs(model, data, cache_dir, quiet, classes, list(teachers))
    return [entry.build(getattr(cfg, name), inputs) for name, entry in TERMS.items() if getattr(cfg, name).weight > 0]


def method_label(terms: list[str]) -> str:
    """plain | igd | ot | igd+ot ...: a family's name where all of its terms are on."""
    labels = []
    for term in terms:
        family = TERMS[term].family if term in TERMS else None
        members = {n for n, e in TERMS.items() if e.family == family}
        label = family if family and members <= set(terms) else term
        if label not in labels:
            labels.append(label)
    return "+".join(labels) or "plain"


def off_overrides() -> list[str]:
    """`--set` overrides that switch every guidance term off."""
    return [f"sample.guidance.{name}.weight=0.0" for name in TERMS]
