"""Is a generator ready? A quick check after `train-generator`, and a gate before sampling.

A few hundred plain samples (the recipe's sampler, steps and CFG scale; no guidance) are
scored by the first teacher: its agreement with the intended classes; the Frechet distance
in its penultimate features to as many real training images, beside the distance between
two disjoint real sets of that size (the floor at this sample count: the distance depends
on it, so the grade reads their ratio); and the share of those real images whose k-NN ball
holds a sample (coverage, modes reached). Printed, stored as GENERATOR/quality.json with a
graded verdict, and read by `run` / `sample`, which refuse a "not ready" generator.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from . import distributed
from .config import Config, SampleConfig
from .data import LabelledData
from .errors import UserError
from .io import read_json, write_json
from .metrics import (FIX_GENERATOR, density_coverage, features, frechet_distance, held_out, near_chance,
                      teacher_agreement)
from .models.generator import Generator
from .sample import sample_classes
from .teachers import load_teacher

log = logging.getLogger(__name__)

SAMPLES = 500  # in all, spread over the classes (at least 1 each); the thresholds below hold at this count

# Calibrated on the shipped Fashion-MNIST generator's training curve and the generators beside
# it (docs/own-dataset.md, "Is the generator ready?"), FD ratios at SAMPLES samples: "not ready"
# is where 1,500 denoiser steps were (ratio about 4, coverage 0.02) and the issue-33 MNIST
# generator (ratio 6.4); "good" is 5,000 steps on (ratio 1.3, coverage 0.75 and up), whose
# plain samples train students within about a point of a random real subset; between them
# (2,500 steps, v0.1: ratio about 2, coverage 0.25) students train, a few points behind.
NOT_READY_FD_RATIO = 3.0  # above: not ready
NOT_READY_COVERAGE = 0.10  # below: not ready
GOOD_FD_RATIO = 1.5  # at most, and
GOOD_COVERAGE = 0.60  # at least: good
VERDICTS = ("not ready", "usable", "good")
ALLOW = "generator.allow_unready"  # the key that samples from a "not ready" generator anyway


def grade(agreement: float, num_classes: int, fd_ratio: float, coverage: float | None) -> tuple[str, list[str]]:
    """(verdict, what held it back) from the check's numbers; coverage None (a quality.json
    written before coverage was measured) grades on the other two."""
    bad = []
    if near_chance(agreement, num_classes):
        bad.append(f"the teacher agrees with the class on {100 * agreement:.0f}% of samples "
                   f"(chance {100 / num_classes:.0f}%)")
    if fd_ratio > NOT_READY_FD_RATIO:
        bad.append(f"teacher-feature FD is {fd_ratio:.1f}x that between two real sets (not ready above "
                   f"{NOT_READY_FD_RATIO:g}x)")
    if coverage is not None and coverage < NOT_READY_COVERAGE:
        bad.append(f"coverage of real images {coverage:.3f} (not ready below {NOT_READY_COVERAGE:g})")
    if bad:
        return "not ready", bad
    short = []
    if fd_ratio > GOOD_FD_RATIO:
        short.append(f"FD ratio {fd_ratio:.2f} (good at most {GOOD_FD_RATIO:g})")
    if coverage is None or coverage < GOOD_COVERAGE:
        short.append("coverage not measured" if coverage is None else
                     f"coverage {coverage:.3f} (good from {GOOD_COVERAGE:g})")
    return ("usable", short) if short else ("good", [])


def grade_quality(quality: dict, num_classes: int) -> tuple[str, list[str]]:
    """grade() of a stored quality.json, with today's thresholds."""
    ratio = quality["fd_teacher"] / quality["fd_teacher_real_vs_real"]
    return grade(quality["teacher_agreement"], num_classes, ratio, quality.get("coverage"))


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
    fake = features(teacher, images, device)
    agreement = teacher_agreement(teacher, images, labels, device)
    fd, floor = frechet_distance(real_a, fake), frechet_distance(real_a, real_b)
    coverage = density_coverage(real_a, fake)[1]
    verdict, reasons = grade(agreement, k, fd / floor, coverage)
    result = {"samples": len(images), "num_classes": k, "cfg_scale": cfg.sample.cfg_scale, "steps": cfg.sample.steps,
              "scheduler": cfg.sample.scheduler, "teacher": cfg.teachers[0].path, "teacher_agreement": agreement,
              "fd_teacher": fd, "fd_teacher_real_vs_real": floor, "fd_ratio": fd / floor, "coverage": coverage,
              "coverage_real_vs_real": density_coverage(real_a, real_b)[1], "verdict": verdict,
              "ready": verdict != "not ready", "held_back_by": reasons}
    write_json(Path(cfg.generator.path) / "quality.json", result)
    log.info("generator check (%d plain samples, CFG %g): %s. The teacher agrees with the class on %.0f%% (chance "
             "%.0f%%); teacher-feature FD %.1f, %.2fx that of two real sets of this size (%.1f); coverage %.3f "
             "(two real sets: %.3f)", len(images), cfg.sample.cfg_scale, verdict, 100 * agreement, 100 / k, fd,
             fd / floor, floor, coverage, result["coverage_real_vs_real"])
    if verdict == "not ready":
        log.warning("the generator at %s is not ready: %s; %s", cfg.generator.path, "; ".join(reasons), FIX_GENERATOR)
    return result


def stored_quality(cfg: Config, model: Generator, data: LabelledData, device) -> dict | None:
    """GENERATOR/quality.json; a generator without one is checked now (and the file written),
    except an imported one (e.g. DiT-XL/2: published weights, and a thousand samples of it are
    costly) and one whose check ALLOW waives; None when unchecked (without a teacher there is
    nothing to check with)."""
    path = Path(cfg.generator.path) / "quality.json"
    if path.exists():
        return read_json(path)
    if cfg.generator.allow_unready:
        log.info("generator %s is unchecked and %s=true: sampling without checking it", cfg.generator.path, ALLOW)
        return None
    if "imported" in model.info:
        log.info("generator %s is imported and unchecked: sampling from it as it is (`otdistill train-generator "
                 "CONFIG` checks it)", cfg.generator.path)
        return None
    log.info("generator %s has no quality check yet: checking it now (%d plain samples)", cfg.generator.path, SAMPLES)
    if distributed.current().main:
        check_generator(cfg, model, data, device)
    distributed.barrier()
    return read_json(path) if path.exists() else None


def require_ready(cfg: Config, model: Generator, data: LabelledData, device) -> None:
    """Stop before sampling when the generator's check says "not ready", unless ALLOW is set."""
    quality = stored_quality(cfg, model, data, device)
    if quality is None:
        return
    verdict, reasons = grade_quality(quality, data.num_classes)
    if verdict == "not ready" and cfg.generator.allow_unready:
        log.warning("sampling from the generator at %s although it is not ready (%s), as %s=true asks: %s",
                    cfg.generator.path, "; ".join(reasons), ALLOW, FIX_GENERATOR)
    elif verdict == "not ready":
        raise UserError(f"the generator at {cfg.generator.path} is not ready ({cfg.generator.path}/quality.json: "
                        f"{'; '.join(reasons)}): {FIX_GENERATOR}. To sample from it anyway, add --set {ALLOW}=true")
    else:
        log.info("generator %s: %s (%s)", cfg.generator.path, verdict, "; ".join(reasons) or "nothing held it back")


def checked(cfg: Config) -> bool:
    """Whether the generator has a quality.json with a graded verdict (older ones lack it)."""
    path = Path(cfg.generator.path) / "quality.json"
    return path.exists() and "verdict" in read_json(path)
