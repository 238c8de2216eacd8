"""Any folder of images with one sub-folder per class (custom data, ImageNet subsets)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..config import DataConfig
from ..errors import UserError
from .base import FolderImages, LabelledData, readable_images, stratified_split

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # PIL modes without colour


def read_class_list(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"class list {p} does not exist; data.class_list must name a text file with one class folder per line")
    names = [line.split()[0] for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if len(set(names)) != len(names):
        raise UserError(f"class list {p} names a class twice")
    return names


def scan(root: Path, classes: list[str], bad_files: str = "skip") -> tuple[list[Path], list[int], dict]:
    """The readable images of each class folder, their labels, and {path: PIL mode} (None: not opened)."""
    candidates = {}
    for cls in classes:
        folder = root / cls
        if not folder.is_dir():
            raise UserError(f"class folder {folder} is missing; check data.root and data.class_list")
        candidates[cls] = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    readable = readable_images([p for files in candidates.values() for p in files], bad_files)
    paths, labels = [], []
    for index, cls in enumerate(classes):
        files = [p for p in candidates[cls] if p in readable]
        if not files:
            raise UserError(f"class folder {root / cls} holds no readable images ({', '.join(sorted(EXTENSIONS))})")
        paths += files
        labels += [index] * len(files)
    return paths, labels, readable


def channels_of(setting: int | str, modes: dict, paths: list[Path], labels: list[int]) -> int:
    """data.channels: 1 or 3 as given; auto = 1 when every image is grayscale. Unopened
    files (bad_files=unchecked) are judged by the first image of each class."""
    if setting != "auto":
        return int(setting)
    if any(m is None for m in modes.values()):
        firsts: dict[int, Path] = {}
        for p, label in zip(paths, labels):
            firsts.setdefault(label, p)
        modes = {}
        for p in firsts.values():
            with Image.open(p) as im:
                modes[p] = im.mode
    return 1 if all(m in GRAY_MODES for m in modes.values()) else 3


def load_imagefolder(cfg: DataConfig) -> LabelledData:
    if not cfg.root:
        raise UserError("data.name=imagefolder needs data.root: a folder with one sub-folder per class (or train/ and val/ inside)")
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError(f"data.root {root} is not a folder")
    if not cfg.image_size:
        raise UserError("data.name=imagefolder needs data.image_size (images are resized and centre-cropped to it)")
    train_root = root / "train" if (root / "train").is_dir() else root
    test_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    classes = read_class_list(cfg.class_list) if cfg.class_list else sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{train_root} has no class sub-folders")
    paths, labels, modes = scan(train_root, classes, cfg.bad_files)
    channels = channels_of(cfg.channels, modes, paths, labels)
    if test_root is not None:
        test_paths, test_labels, _ = scan(test_root, classes, cfg.bad_files)
        train = FolderImages(paths, labels, cfg.image_size, channels)
        test = FolderImages(test_paths, test_labels, cfg.image_size, channels)
    else:
        tr, te = stratified_split(torch.tensor(labels), cfg.split_seed, fraction=cfg.test_fraction)
        train = FolderImages([paths[i] for i in tr], [labels[i] for i in tr], cfg.image_size, channels)
        test = FolderImages([paths[i] for i in te], [labels[i] for i in te], cfg.image_size, channels)
    return LabelledData("imagefolder", train, test, list(classes), list(classes), channels, cfg.image_size)
