"""The records the stages write and read, typed: a distilled set's manifest, one student
cell and an evaluation summary. Evaluations are written and read only here; manifests only
through artifacts.py. The report and the benchmarks read these, never raw JSON keys by guess.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from .errors import UserError
from .io import read_json, write_json

log = logging.getLogger(__name__)


class ClassEntry(TypedDict):
    index: int
    name: str
    id: str
    folder: str  # images/<folder>/, "<index>-<id>"
    count: int
    status: str  # done | incomplete


class Manifest(TypedDict, total=False):
    """DISTILLED/manifest.json: written last by the stage that made the set, so its presence
    marks the set complete; later stages add entries (teachers, metrics, ...)."""

    format: str
    ipc: int
    num_classes: int
    channels: int
    image_size: int
    classes: list[ClassEntry]
    source: dict[str, Any]  # kind (generated | real-<selection>), generator, guidance, timings
    teachers: list[str]  # the ensemble that labelled it (relabel)
    relabel: dict[str, Any]  # LIA's rule and count
    teacher_agreement: dict[str, Any]  # overall and per class
    metrics: dict[str, Any]  # distribution metrics per feature space
    config: dict[str, Any]  # the effective config that made it
    seeds: dict[str, int]
    versions: dict[str, str]
    files: dict[str, str]  # the set's own files -> sha256


class Cell(TypedDict):
    """One student: one protocol and seed."""

    protocol: str  # soft | hard | dc | dsa (protocols.py)
    seed: int
    final: float  # final-epoch test accuracy, the headline
    best_epoch: float  # the best of the scored epochs: test-selected, a reference only
    scores: dict[str, float]  # epoch -> test accuracy
    seconds: float
    epochs: NotRequired[int]  # the protocol's length (absent in cells written before protocols had their own)
    micro_batch: NotRequired[int]  # images per forward / backward part (0: the whole batch); the same gradient
    threads: NotRequired[int]  # the CPU threads it ended with (student.workers shares them out; the last cells take freed ones); its seconds depend on it
    key: NotRequired[str]  # fingerprint of the recipe, the set's files and its teachers (added when cached)
    scored_on: NotRequired[str]  # content id of the test split (likewise)


ProtocolResult = TypedDict("ProtocolResult", {
    "final_mean": float, "final_std": float, "seeds": list[int], "final": list[float],
    "best_epoch_mean (test-selected, reference only)": float,
    "epochs": NotRequired[int | None],  # the protocol's student length (protocols.py)
    "curve": NotRequired[dict[str, float]]})  # epoch -> mean test accuracy over seeds, with student.eval_every


class FullData(TypedDict):
    accuracy: float  # the test accuracy of a teacher of the student's architecture (whole training split)
    teacher: str


class Evaluation(TypedDict):
    """SET/eval.json: a set's students, summarised over seeds per protocol."""

    distilled: str  # the set's folder
    student: str
    epochs: int
    ipc: int
    num_images: int
    protocols: dict[str, ProtocolResult]
    cells: list[Cell]
    student_config: dict[str, Any]
    full_data: FullData | None


def is_evaluation(obj: Any) -> bool:
    return isinstance(obj, dict) and "protocols" in obj and "distilled" in obj


def write_evaluation(path: str | Path, evaluation: Evaluation) -> None:
    write_json(path, evaluation)


def read_evaluation(path: str | Path) -> Evaluation:
    obj = read_json(path)
    if not is_evaluation(obj):
        raise UserError(f"{path} is not an evaluation (eval.json); make one with `otdistill evaluate SET CONFIG`")
    obj.setdefault("full_data", None)  # written before full_data existed
    return obj


def read_cached_cell(path: Path) -> Cell | dict:
    """A finished cell, or {} when absent or unreadable (a damaged cache entry is retrained)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("retraining the cell %s: its file is unreadable", path)
        return {}
