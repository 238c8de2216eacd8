"""Student protocols: how the student that scores a set is labelled and trained.

- `soft`: the teachers label every augmented view; trained with the `student` section's own
  recipe (by default AdamW + cosine, RandomResizedCrop + flip, 300 epochs: the soft-label
  protocol of SRe2L / RDED at the field's length).
- `hard`: cross-entropy on the class labels, same recipe.
- `dc` and `dsa`: the field's hard-label protocols, fixed by their source rather than by the
  `student` section (only its arch, seeds, image size, eval_every, compile and test batch
  size apply). Source: DC (Zhao,
  Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021), VICO-UoE/DatasetCondensation,
  `utils.evaluate_synset`: SGD with momentum 0.9 (not Nesterov), lr 0.01, weight decay 5e-4,
  batch 256, cross-entropy, the rate x0.1 after epoch E // 2 + 1 (counted from 0) with a fresh
  optimiser, images normalised by the training split's statistics, the final epoch scored.
  DC trains 300 epochs without augmentation (its Fashion-MNIST setting), DSA 1000 epochs with
  one DSA operation per batch (`dsa.py`; no flip for datasets where a mirror changes the class,
  as DSA drops it for digits). The source trains E + 1 epochs (`range(Epoch + 1)`), the last
  at the lower rate; here E means E.

This module names and describes them (the config checks names against it, so it imports
nothing of the package's models); `evaluate.student_recipe` builds their training recipes.

A name may carry another length, `dsa-e20`: it is then no longer the field's protocol, and the
name says so wherever its numbers appear. `soft` and `hard` below FIELD_EPOCHS are the `quick`
screen (short students), and `describe` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError

FIELD_EPOCHS = 300  # the shortest student the field trains (DC; SRe2L / RDED soft labels)


@dataclass(frozen=True)
class FieldProtocol:
    epochs: int
    augment: str  # none | dsa
    source: str
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 5e-4


FIELD = {
    "dc": FieldProtocol(300, "none", "DC, Zhao et al. ICLR 2021 (DatasetCondensation evaluate_synset, no augmentation)"),
    "dsa": FieldProtocol(1000, "dsa", "DSA, Zhao & Bilen ICML 2021 (DatasetCondensation evaluate_synset + DiffAugment)"),
}
# the student section's keys dc and dsa never read (their source fixes them): a cell's key leaves
# them out, so that changing the soft recipe retrains no field-protocol cell (pipeline.cell_key)
FIELD_FIXES = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "crop_scale_min", "flip", "cutmix", "ema_decay")
OWN = ("soft", "hard")  # trained with the student section's recipe
NAMES = (*OWN, *FIELD)


def parse(name: str) -> tuple[str, int | None]:
    """`dsa-e20` -> ("dsa", 20); `soft` -> ("soft", None)."""
    match = re.fullmatch(rf"({'|'.join(FIELD)})-e(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, None)


def problem(name: str) -> str | None:
    base, epochs = parse(name)
    if base in NAMES and epochs != 0:
        return None
    return f"must be one of {', '.join(NAMES)} (dc and dsa may carry another length, e.g. dsa-e20), got {name!r}"


def check(name: str) -> str:
    """The protocol's base name, or one clear error."""
    if problem(name):
        raise UserError(f"student.protocols: {problem(name)}")
    return parse(name)[0]


def labels(name: str) -> str:
    """soft | hard: what the student is trained to match."""
    return "soft" if check(name) == "soft" else "hard"


def epochs(name: str, own_epochs: int) -> int:
    base, length = parse(name)
    if base not in FIELD:
        return own_epochs
    return length or FIELD[base].epochs


def describe(name: str, student: dict) -> str:
    """One line for summaries and reports: labels, recipe, length, and whether it is the field's
    (`student`: the student section as a dict, as evaluations record it)."""
    base, length = parse(name)
    if base in FIELD:
        field = FIELD[base]
        aug = "DSA augmentation" if field.augment == "dsa" else "no augmentation"
        note = "" if length is None else f"; shortened from the field's {field.epochs}: not comparable to published rows"
        return (f"{name}: hard labels, SGD {field.lr:g} step schedule, {aug}, "
                f"{epochs(name, student['epochs'])} epochs ({field.source}{note})")
    cutmix = f" + CutMix {student['cutmix']:g}" if student.get("cutmix") else ""  # absent in early records
    recipe_text = (f"{student['optimizer']} lr {student['lr']:g} cosine, RandomResizedCrop"
                   f"{' + flip' if student.get('flip', True) else ''}{cutmix}")
    what = "teacher soft labels" if base == "soft" else "hard labels"
    quick = (f"; quick: short students, a screen and not a verdict (the field trains {FIELD_EPOCHS}+)"
             if student["epochs"] < FIELD_EPOCHS else "")
    return f"{name}: {what}, {recipe_text}, {student['epochs']} epochs{quick}"
