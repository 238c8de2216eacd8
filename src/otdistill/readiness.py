"""Is a generator ready? A quick check after `train-generator`, before any sampling.

A few hundred plain samples (the recipe's sampler, steps and CFG scale; no guidance) are
scored by the first teacher: its agreement with the intended classes, and the Frechet
distance in its penultimate features to as many real training images, beside the distance
between two disjoint real sets of that size (the floor at this sample count: the distance
depends on it). Printed, and stored as GENERATOR/quality.json.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from .config import Config, SampleConfig
from .data import LabelledData
from .io import write_json
from .metrics import FIX_GENERATOR, features, frechet_distance, held_out, near_chance, teacher_agreement
from .models.generator import Generator
from .sample import sample_classes
from .teachers import load_teacher

log = logging.getLogger(__name__)

SAMPLES = 500  # in all, spread over the classes (at least 1 each)


def plain_samples(model: Generator, per_class: int, cfg: SampleConfig, num_classes: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class unguided samples of every class, class by class, with their class labels."""
    scfg = dataclasses.replace(cfg, ipc=per_class, batch_size=per_class)
    images = sample_classes(model, list(range(num_classes)), scfg)
    return torch.cat([images[c] for c in range(num_classes)]), torch.arange(num_classes).repeat_interleave(per_class)


def check_generator(cfg: Config, model: Generator, data: LabelledData, device) -> dict | None:
    """Score the generator at cfg.generator.path with the first teacher; None when there is none yet."""
    if not cfg.teachers or not Path(cfg.teachers[0].path).exists():
        log.info("generator check skipped: no teacher at %s yet (`otdistill train-teacher CONFIG` makes one)",
                 cfg.teachers[0].path if cfg.teachers else "teachers")
        return None
    teacher, _ = load_teacher(cfg.teachers[0].path, device)
    k = data.num_classes
    per_class = max(1, SAMPLES // k)
    model.bind(data.class_ids, data.class_names)
    images, labels = plain_samples(model, per_class, cfg.sample, k)
    real = held_out(data.train, k, 2 * per_class, seed=0)
    first, second = real[0::2], real[1::2]  # two disjoint real sets of the same size
    real_a, real_b = (features(teacher, data.train.get(i), device) for i in (first, second))
    agreement = teacher_agreement(teacher, images, labels, device)
    result = {"samples": len(images), "cfg_scale": cfg.sample.cfg_scale, "steps": cfg.sample.steps,
              "scheduler": cfg.sample.scheduler, "teacher": cfg.teachers[0].path, "teacher_agreement": agreement,
              "fd_teacher": frechet_distance(real_a, features(teacher, images, device)),
              "fd_teacher_real_vs_real": frechet_distance(real_a, real_b), "ready": not near_chance(agreement, k)}
    write_json(Path(cfg.generator.path) / "quality.json", result)
    log.info("generator check (%d plain samples, CFG %g): the teacher agrees with the class on %.0f%% (chance %.0f%%); "
             "teacher-feature FD %.1f (two real sets of this size: %.1f)", len(images), cfg.sample.cfg_scale,
             100 * agreement, 100 / k, result["fd_teacher"], result["fd_teacher_real_vs_real"])
    if not result["ready"]:
        log.warning("the generator at %s is not ready: its samples are noise to the teacher; %s",
                    cfg.generator.path, FIX_GENERATOR)
    return result
