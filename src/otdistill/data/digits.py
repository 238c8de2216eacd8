"""scikit-learn's bundled 8x8 digits: a tiny real dataset for tests."""

from __future__ import annotations

import torch

from ..config import DataConfig
from .base import LabelledData, TensorImages, resize_uint8, stratified_split


def load_digits_data(cfg: DataConfig) -> LabelledData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    size = cfg.image_size or 8
    images = resize_uint8(images, size)
    tr, te = stratified_split(labels, cfg.split_seed, fraction=cfg.test_fraction)
    names = [str(i) for i in range(10)]
    return LabelledData("digits", TensorImages(images[tr], labels[tr]), TensorImages(images[te], labels[te]),
                        names, names, channels=1, image_size=size, mirror_safe=False)
