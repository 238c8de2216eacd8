"""Teacher classifiers: train on the real data, save as safetensors + a JSON description, load back.

A teacher folder holds:
    model.safetensors   the Classifier's state dict
    model.json          arch, its kwargs, input shape, normalisation, classes, test accuracy,
                        and the command that made it
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import TeacherConfig, fingerprint
from .data import LabelledData
from .errors import UserError
from .io import atomic_path, generator, invoked_command, read_json, write_json
from .losses import cross_entropy
from .models.classifiers import Classifier, build_classifier
from .train import Augment, TrainRecipe, accuracy, channel_stats, fit

log = logging.getLogger(__name__)


def train_teacher(cfg: TeacherConfig, data: LabelledData, device, quiet: bool = False) -> tuple[Classifier, dict]:
    """Train one teacher on the full training split and save it at cfg.path (atomically)."""
    mean, std = channel_stats(data.train)
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_classifier(cfg.arch, data.num_classes, data.channels, data.image_size, mean, std).to(device)
    recipe = TrainRecipe(cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.weight_decay,
                         Augment(cfg.crop_scale_min, cfg.flip))
    labels = data.train.labels.to(device)
    # per-epoch state beside the folder it will become, named for the exact settings
    resume = Path(cfg.path).parent / f".{Path(cfg.path).name}-{fingerprint(cfg, data.name)}.resume.pt"
    clock = {"seconds": 0.0}  # training time, kept in the checkpoint so resumed runs add up
    last = time.time()

    def tick(epoch: int) -> None:
        nonlocal last
        clock["seconds"] += time.time() - last
        last = time.time()

    fit(model, data.train, recipe, cross_entropy, lambda x, idx: labels[idx.to(device)],
        generator(cfg.seed, "teacher", cfg.arch), device, tick, desc=f"teacher {cfg.arch}", quiet=quiet,
        checkpoint=resume, extra=clock)
    acc = accuracy(model, data.test, device)
    info = {
        "arch": cfg.arch, "num_classes": data.num_classes, "in_channels": data.channels,
        "image_size": data.image_size, "mean": mean, "std": std, "class_names": data.class_names,
        "dataset": data.name, "test_accuracy": acc,
        "recipe": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "path"},  # epochs, seed, ...
        "train_seconds": round(clock["seconds"], 1),  # summed over the runs a killed training resumed in
        "command": invoked_command(),
    }
    with atomic_path(cfg.path) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        write_json(tmp / "model.json", info)
    log.info("teacher %s: test accuracy %.4f, saved to %s", cfg.arch, acc, cfg.path)
    return model.eval(), info


def classifier_from(info: dict, weights: Path) -> Classifier:
    """Build the Classifier a checkpoint's JSON describes and load its weights, or say why not."""
    model = build_classifier(info["arch"], info["num_classes"], info["in_channels"], info["image_size"],
                             info["mean"], info["std"])
    try:
        model.load_state_dict(load_file(weights))
    except (RuntimeError, OSError) as exc:
        raise UserError(f"weights {weights} do not fit a {info['arch']} for {info['num_classes']} classes: "
                        f"{str(exc).splitlines()[0]}") from None
    return model


def load_teacher(path: str | Path, device="cpu") -> tuple[Classifier, dict]:
    path = Path(path)
    if not (path / "model.safetensors").is_file() or not (path / "model.json").is_file():
        raise UserError(f"{path} is not a teacher folder (model.safetensors + model.json); "
                        "train one with `otdistill train-teacher CONFIG`")
    info = read_json(path / "model.json")
    model = classifier_from(info, path / "model.safetensors")
    return model.to(device).eval().requires_grad_(False), info


def full_data_reference(teachers: list[TeacherConfig], arch: str) -> dict | None:
    """The test accuracy of a configured teacher of architecture `arch` (trained on the whole
    training split): the full-data reference of a student of that architecture; None if none."""
    for t in teachers:
        info = Path(t.path) / "model.json"
        if t.arch == arch and info.is_file():
            acc = read_json(info).get("test_accuracy")
            if acc is not None:
                return {"accuracy": acc, "teacher": t.path}
    return None
