"""The in-memory and on-disk image sets every adapter returns."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import UserError


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) batch to size x size (antialiased bilinear)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


class ImageSet(abc.ABC):
    """Labelled images addressed by index; `get` returns a uint8 (B, C, H, W) batch."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def get(self, indices) -> torch.Tensor:
        """The images at `indices` as one uint8 batch."""

    def indices_of(self, class_index: int) -> torch.Tensor:
        return torch.nonzero(self.labels == class_index).flatten()

    @abc.abstractmethod
    def content_id(self) -> str:
        """A short hash naming these images and labels, so that a cached score can tell which
        split it was computed on."""


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.numpy().tobytes() if isinstance(part, torch.Tensor) else str(part).encode())
    return h.hexdigest()[:16]


class TensorImages(ImageSet):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images = images
        self.labels = labels.long()
        self._content_id = None

    def get(self, indices) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)]

    def content_id(self) -> str:
        if self._content_id is None:  # hashed once: a 60k-image split takes ~0.1 s
            self._content_id = _digest(self.images.contiguous(), self.labels)
        return self._content_id


class SubsetImages(ImageSet):
    """Some images of another set, by index; nothing is copied (folder images stay on disk)."""

    def __init__(self, parent: ImageSet, indices):
        self.parent = parent
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.labels = parent.labels[self.indices]

    def get(self, indices) -> torch.Tensor:
        return self.parent.get(self.indices[torch.as_tensor(indices, dtype=torch.long)])

    def content_id(self) -> str:
        return _digest(self.parent.content_id(), self.indices)


def every_nth(images: ImageSet, count: int) -> SubsetImages:
    """At most `count` images spread evenly over a split (deterministic; a split's order mixes
    its classes, so the subset keeps their shares)."""
    return SubsetImages(images, torch.linspace(0, len(images) - 1, min(count, len(images))).long())


class FolderImages(ImageSet):
    """Image files decoded on demand, resized (shorter side) and centre-cropped to `size`."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, channels: int = 3):
        self.paths = list(paths)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.size = size
        self.channels = channels

    def _load(self, path: Path) -> torch.Tensor:
        try:
            return self._decode(path)
        except (OSError, SyntaxError) as exc:  # passed the scan, then vanished or failed to decode
            raise UserError(f"image {path} cannot be read ({exc}); remove it and run the same command again") from None

    def _decode(self, path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            im = im.convert("L" if self.channels == 1 else "RGB")
            w, h = im.size
            scale = self.size / min(w, h)
            im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            arr = np.asarray(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def get(self, indices) -> torch.Tensor:
        return torch.stack([self._load(self.paths[int(i)]) for i in torch.as_tensor(indices).flatten()])

    def content_id(self) -> str:
        # the file names, not their bytes: hashing 50k JPEGs would cost minutes per evaluation
        return _digest("\n".join(map(str, self.paths)), self.labels, self.size, self.channels)


def readable_images(paths: list[Path], bad_files: str = "skip") -> dict[Path, str | None]:
    """The files PIL can open, each with its image mode (None when unchecked: not opened); the
    others are skipped with one warning naming them, or (bad_files="stop") stop the run with their names."""
    if bad_files == "unchecked":
        return dict.fromkeys(paths)
    good, bad = {}, []
    for p in paths:
        try:
            with Image.open(p) as im:
                mode = im.mode
                im.verify()
            good[p] = mode
        except (UnidentifiedImageError, OSError, SyntaxError):
            bad.append(p)
    if bad and bad_files == "stop":
        raise UserError(f"{len(bad)} unreadable image file(s): {', '.join(map(str, bad[:5]))}"
                        f"{' ...' if len(bad) > 5 else ''}; remove or replace them, or set data.bad_files=skip")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s): {', '.join(map(str, bad[:5]))}"
                      f"{' ...' if len(bad) > 5 else ''}", stacklevel=2)
    return good


@dataclass
class LabelledData:
    """A train and a test split plus what models need to know about the images."""

    name: str
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    class_ids: list[str]  # folder-safe identifiers (wnids for ImageNet-style folders)
    channels: int
    image_size: int
    mirror_safe: bool = True  # False where a mirror image changes the class (digits): DSA's flip is then off

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def to_unit(images_uint8: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] (on `device`): the one place images become floats."""
    return images_uint8.to(device=device, dtype=torch.float32) / 255.0


def class_subset(images: "ImageSet", c: int, n: int | None, g: torch.Generator) -> torch.Tensor:
    """Indices of n seeded random images of class c (all of them, shuffled, for n=None): the
    one way a per-class subset is drawn."""
    idx = images.indices_of(c)
    return idx[torch.randperm(len(idx), generator=g)[:n]]


def stratified_split(labels: torch.Tensor, seed: int, *, fraction: float = 0.0, count: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices (kept, held) of a seeded per-class split holding out `count` images of each
    class, or else its `fraction` (at least one), so every class is in both parts."""
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = count or max(1, round(len(idx) * fraction))
        held.append(idx[:n])
        kept.append(idx[n:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def hold_out(data: LabelledData, per_class: int, seed: int) -> LabelledData:
    """`data` whose test split is `per_class` seeded training images of each class, taken out of
    its training split: a validation split to choose hyper-parameters on, so that the real test
    split is only read for the final numbers."""
    counts = torch.bincount(data.train.labels, minlength=data.num_classes)
    if per_class < 1 or per_class >= int(counts.min()):
        raise UserError(f"a validation split of {per_class} images per class needs 1 to {int(counts.min()) - 1} "
                        f"(the smallest class has {int(counts.min())} training images); choose a count in that range")
    kept, held = stratified_split(data.train.labels, seed, count=per_class)
    return dataclasses.replace(data, train=SubsetImages(data.train, kept), test=SubsetImages(data.train, held))
