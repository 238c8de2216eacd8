"""scikit-learn's bundled 8x8 digits: a tiny real dataset for tests."""

from __future__ import annotations

import torch

from ..config import DataConfig
from .base import LabelledData, TensorImages, resize_uint8


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a per-class random split, so every class is in both parts."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def load_digits_data(cfg: DataConfig) -> LabelledData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    size = cfg.image_size or 8
    images = resize_uint8(images, size)
    tr, te = stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    names = [str(i) for i in range(10)]
    return LabelledData("digits", TensorImages(images[tr], labels[tr]), TensorImages(images[te], labels[te]),
                        names, names, channels=1, image_size=size)
