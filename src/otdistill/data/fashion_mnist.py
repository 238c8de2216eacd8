"""Fashion-MNIST from its four IDX .gz files (Debian's dataset-fashion-mnist package by default)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError
from .base import LabelledData, TensorImages, resize_uint8

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CLASS_IDS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
FIX = (
    "install it with `apt-get install -y dataset-fashion-mnist` (puts the files in "
    f"{DEFAULT_ROOT}) or set data.root to a folder holding {', '.join(FILES.values())}"
)


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed): magic, dims, then unsigned bytes."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable gzip IDX file ({exc}); {FIX}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; {FIX}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise UserError(f"{path} is truncated: expected {expected} values, found {len(raw) - offset}; {FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(cfg: DataConfig) -> LabelledData:
    root = Path(cfg.root or DEFAULT_ROOT)
    missing = [name for name in FILES.values() if not (root / name).is_file()]
    if missing:
        raise UserError(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); {FIX}")
    arrays = {key: read_idx(root / name) for key, name in FILES.items()}
    size = cfg.image_size or 28
    splits = []
    for split in ("train", "test"):
        images = torch.from_numpy(arrays[f"{split}_images"].copy()).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        if len(images) != len(labels) or images.shape[-2:] != (28, 28) or int(labels.max()) > 9:
            raise UserError(f"Fashion-MNIST {split} files in {root} do not match (images {tuple(images.shape)}, labels {len(labels)}); {FIX}")
        splits.append(TensorImages(resize_uint8(images, size), labels))
    return LabelledData("fashion-mnist", splits[0], splits[1], CLASS_NAMES, CLASS_IDS, channels=1, image_size=size)
