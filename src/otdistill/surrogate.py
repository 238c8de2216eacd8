"""The surrogate classifier's training trajectory, read by influence guidance (IGD).

A surrogate folder holds `epoch_<e>.safetensors` for each saved epoch (0 = initialisation)
and `surrogate.json` (architecture, input shape, normalisation, saved epochs, command).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import SurrogateConfig
from .data import LabelledData, TensorImages
from .errors import UserError
from .io import atomic_path, generator, invoked_command, read_json, write_json
from .losses import cross_entropy
from .models.classifiers import Classifier, build_classifier
from .teachers import classifier_from
from .train import Augment, TrainRecipe, channel_stats, fit


def train_surrogate(cfg: SurrogateConfig, path: str | Path, data: LabelledData, device, quiet: bool = False) -> None:
    g = generator(cfg.seed, "surrogate")
    idx = torch.randperm(len(data.train), generator=g)[:cfg.train_subset] if cfg.train_subset else torch.arange(len(data.train))
    subset = TensorImages(data.train.get(idx.sort().values), data.train.labels[idx.sort().values])
    mean, std = channel_stats(subset)
    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg.arch, data.num_classes, data.channels, data.image_size, mean, std).to(device)
    states = {}

    def keep(epoch: int) -> None:
        if epoch in cfg.checkpoints:
            states[epoch] = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}

    keep(0)
    labels = subset.labels.to(device)
    recipe = TrainRecipe(cfg.epochs, cfg.batch_size, "adamw", cfg.lr, 5e-4, Augment(0.8, True))
    fit(model, subset, recipe, cross_entropy, lambda x, i: labels[i.to(device)], g, device, keep,
        desc=f"surrogate {cfg.arch}", quiet=quiet)
    info = {"arch": cfg.arch, "num_classes": data.num_classes, "in_channels": data.channels,
            "image_size": data.image_size, "mean": mean, "std": std, "class_names": data.class_names,
            "epochs": sorted(states), "train_subset": len(subset),
            "command": invoked_command()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for epoch, sd in states.items():
            save_file(sd, tmp / f"epoch_{epoch}.safetensors")
        write_json(tmp / "surrogate.json", info)


def load_trajectory(path: str | Path, device="cpu") -> tuple[list[Classifier], dict]:
    """One frozen Classifier per saved epoch, in epoch order."""
    path = Path(path)
    if not (path / "surrogate.json").is_file():
        raise UserError(f"{path} is not a surrogate folder; make one with `otdistill train-surrogate CONFIG`")
    info = read_json(path / "surrogate.json")
    models = [classifier_from(info, path / f"epoch_{epoch}.safetensors").to(device).eval() for epoch in info["epochs"]]
    return models, info
