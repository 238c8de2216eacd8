"""What the stages of one run share: its config, device, dataset (loaded once, on first use),
distributed rank and verbosity. Built once by the CLI (or a benchmark) and handed to every
stage, so no stage resolves the device or loads the data on its own."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from . import distributed
from .config import Config, from_dict
from .data import LabelledData, load_dataset
from .errors import UserError
from .io import read_json, resolve_device


class RunContext:
    def __init__(self, cfg: Config, quiet: bool = False, data: LabelledData | None = None):
        self.cfg = cfg
        self.quiet = quiet
        self._data = data

    @functools.cached_property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    @property
    def data(self) -> LabelledData:
        """cfg.data, loaded on first use: a stage whose artifact is already on disk never reads it."""
        if self._data is None:
            self._data = load_dataset(self.cfg.data)
        return self._data

    @property
    def rank(self) -> distributed.Rank:
        return distributed.init()  # joins the process group on first use under torchrun

    def replace(self, **changes) -> RunContext:
        """The same run with some config keys changed (e.g. student=...); the loaded dataset is
        kept when the data config is unchanged."""
        cfg = dataclasses.replace(self.cfg, **changes)
        return RunContext(cfg, self.quiet, self._data if cfg.data == self.cfg.data else None)

    @classmethod
    def of_set(cls, distilled: str | Path, quiet: bool = False) -> RunContext:
        """A stage run on a bare set folder uses the config recorded in its manifest."""
        manifest = Path(distilled) / "manifest.json"
        if not manifest.exists():
            raise UserError(f"{distilled} is not a finished distilled set (no manifest.json)")
        # the recorded config was checked when the set was made; rules added since must not lock it out
        return cls(from_dict(read_json(manifest)["config"], check=False), quiet)
