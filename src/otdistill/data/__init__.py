"""Dataset adapters: each turns a config's `data` section into a LabelledData."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import UserError
from .base import (FolderImages, ImageSet, LabelledData, SubsetImages, TensorImages, class_subset, every_nth,
                   hold_out, resize_uint8, to_unit)
from .digits import load_digits_data
from .fashion_mnist import load_fashion_mnist
from .imagefolder import load_imagefolder

ADAPTERS = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits_data,
    "imagefolder": load_imagefolder,
}


def load_dataset(cfg: DataConfig) -> LabelledData:
    if cfg.name not in ADAPTERS:
        raise UserError(f"unknown dataset '{cfg.name}'; data.name must be one of: {', '.join(ADAPTERS)}")
    return ADAPTERS[cfg.name](cfg)


__all__ = ["load_dataset", "LabelledData", "ImageSet", "TensorImages", "FolderImages", "SubsetImages", "hold_out",
           "resize_uint8", "to_unit", "class_subset", "every_nth", "ADAPTERS"]
