"""The distilled-set artifact: write, read, validate, export.

A distilled set is a folder:
    images/<index>-<class id>/<i>.png   ImageFolder of PNGs; sorted folder order = label index
    labels.safetensors                  hard (N,) int64, soft_logits (N, K) float32 once relabelled;
                                        metadata: teacher names (N x f^2 rows, one per part, when the
                                        manifest's `formation` f packs f x f images into each PNG)
    manifest.json                       config, seeds, package versions, per-class status, file hashes
    .done/<index>-<class id>.json       per-class completion record (file hashes) while it is made
Rows of the label tensors follow the images class by class, file name order within a class.
"""

from __future__ import annotations

import json
import logging
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data.base import to_unit
from .errors import UserError
from .formation import unpack
from .records import Manifest
from .io import atomic_path, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT = "otdistill.distilled/1"


def class_folder(index: int, class_id: str, num_classes: int) -> str:
    width = max(3, len(str(num_classes - 1)))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", class_id).strip("_") or "class"
    return f"{index:0{width}d}-{slug}"


def to_pil(image: torch.Tensor) -> Image.Image:
    arr = image.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _record(root: Path, folder: str) -> Path:
    return root / ".done" / f"{folder}.json"


def write_class_images(root: Path, folder: str, images: torch.Tensor) -> None:
    """Write one class's uint8 (n, C, H, W) images; the folder appears whole or not at all,
    then its completion record (the hash of each file) says it is finished."""
    with atomic_path(root / "images" / folder) as tmp:
        tmp.mkdir()
        for i, img in enumerate(images):
            to_pil(img).save(tmp / f"{i:05d}.png")
    d = root / "images" / folder
    write_json(_record(root, folder), {p.name: sha256_file(p) for p in sorted(d.glob("*.png"))})


def read_class_images(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    arrs = []
    for f in files:
        try:
            with Image.open(f) as im:
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, SyntaxError) as exc:
            raise UserError(f"{f} is not a readable image ({exc}); rerun the stage that made the set to redo it") from None
        arrs.append(a[:, :, None] if a.ndim == 2 else a)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def class_done(root: Path, folder: str, ipc: int) -> bool:
    """True when the class's completion record exists and its `ipc` files match it; a folder
    without a record (killed between the two writes) or with a changed file is redone."""
    d = root / "images" / folder
    try:
        hashes = json.loads(_record(root, folder).read_text())
    except (OSError, ValueError):
        return False
    return (len(hashes) == ipc and len(list(d.glob("*.png"))) == ipc
            and all((d / name).is_file() and sha256_file(d / name) == h for name, h in hashes.items()))


def versions() -> dict:
    import diffusers
    import ot
    import torchvision

    from . import __version__

    return {"otdistill": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "diffusers": diffusers.__version__, "pot": ot.__version__,
            "numpy": np.__version__}


def write_manifest(root: Path, *, ipc: int, class_names: list[str], class_ids: list[str], channels: int,
                   image_size: int, source: dict, config: dict, seeds: dict, teachers: list[str] | None = None,
                   extra: dict | None = None) -> Manifest:
    """Hash the set's files and write manifest.json last: its presence marks the set complete."""
    k = len(class_names)
    classes = []
    for i, (name, cid) in enumerate(zip(class_names, class_ids)):
        folder = class_folder(i, cid, k)
        count = len(list((root / "images" / folder).glob("*.png")))
        classes.append({"index": i, "name": name, "id": cid, "folder": folder, "count": count,
                        "status": "done" if count == ipc else "incomplete"})
    manifest = {"format": FORMAT, "ipc": ipc, "num_classes": k, "channels": channels, "image_size": image_size,
                "classes": classes, "source": source, "teachers": teachers or [], "config": config, "seeds": seeds,
                "versions": versions(), "files": _hashes(root), **(extra or {})}
    write_json(root / "manifest.json", manifest)
    return manifest


def _hashes(root: Path) -> dict[str, str]:
    """The set's own files (images, labels): what else lives in its folder, such as its
    evaluations, may change without the set changing."""
    files = [*(root / "images").rglob("*"), root / "labels.safetensors"]
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(files)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def update_manifest(root: Path, **entries) -> Manifest:
    """Add or replace top-level manifest entries and re-hash the files (after a later stage
    added some, e.g. labels.safetensors)."""
    manifest = read_json(root / "manifest.json")
    manifest.update(entries, files=_hashes(root))
    write_json(root / "manifest.json", manifest)
    return manifest


def write_labels(root: Path, hard: torch.Tensor, soft_logits: torch.Tensor | None, teachers: list[str]) -> None:
    tensors = {"hard": hard.long().contiguous()}
    if soft_logits is not None:
        tensors["soft_logits"] = soft_logits.float().contiguous()
    with atomic_path(root / "labels.safetensors") as tmp:
        save_file(tensors, tmp, metadata={"teachers": json.dumps(teachers)})


@dataclass
class DistilledSet:
    root: Path
    manifest: Manifest
    images: torch.Tensor  # uint8 (N, C, H, W), class-ordered
    hard: torch.Tensor  # (N,)
    soft_logits: torch.Tensor | None  # (N * formation^2, K): one row per training image; None before relabelling

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.manifest["classes"]]

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def ipc(self) -> int:
        return self.manifest["ipc"]

    @property
    def formation(self) -> int:
        return self.manifest.get("formation", 1)

    def training(self) -> DistilledSet:
        """What students, teachers and metrics read: with multi-formation each stored image's
        formation^2 parts enlarged back to the stored size, their labels the image's (formation.py);
        the set itself otherwise."""
        f = self.formation
        if f == 1:
            return self
        return DistilledSet(self.root, {**self.manifest, "formation": 1}, unpack(self.images, f),
                            self.hard.repeat_interleave(f * f), self.soft_logits)

    @classmethod
    def in_memory(cls, images: torch.Tensor, hard: torch.Tensor, num_classes: int, ipc: int | None = None,
                  soft_logits: torch.Tensor | None = None, root: str | Path = "<in memory>") -> DistilledSet:
        """Images and labels held in memory (no folder, no manifest beyond the sizes), for
        training students on sets that are never written, such as the full training split."""
        return cls(Path(root), {"num_classes": num_classes, "ipc": ipc}, images, hard, soft_logits)


def read_distilled(root: str | Path, verify_hashes: bool = True, labels: bool = True) -> DistilledSet:
    """Read a distilled set and check it is whole: every class complete, files match their
    hashes, labels aligned with images. labels=False ignores labels.safetensors (relabel
    replaces it)."""
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise UserError(f"{root} is not a finished distilled set (no manifest.json); "
                        "run `otdistill sample CONFIG` (or `run`) to make or finish it")
    m = read_json(root / "manifest.json")
    if m.get("format") != FORMAT:
        raise UserError(f"{root}/manifest.json has format {m.get('format')!r}, expected {FORMAT!r}")
    bad = [c["folder"] for c in m["classes"] if c["status"] != "done"]
    if bad:
        raise UserError(f"{root}: classes {', '.join(bad[:5])} are incomplete; rerun the stage that made the set to finish it")
    if verify_hashes:
        for rel, digest in m["files"].items():
            if rel == "labels.safetensors" and not labels:
                continue
            p = root / rel
            if not p.is_file():
                raise UserError(f"{root}: file {rel} listed in the manifest is missing")
            if sha256_file(p) != digest:
                raise UserError(f"{root}: file {rel} changed since the manifest was written (hash mismatch)")
    images = torch.cat([read_class_images(root / "images" / c["folder"]) for c in m["classes"]])
    hard = torch.repeat_interleave(torch.arange(m["num_classes"]), torch.tensor([c["count"] for c in m["classes"]]))
    soft = None
    if labels and (root / "labels.safetensors").is_file():
        try:
            tensors = load_file(root / "labels.safetensors")
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{root}/labels.safetensors is unreadable ({exc}); rerun `otdistill relabel {root}`") from None
        parts = m.get("formation", 1) ** 2  # the labels' rows follow the training images
        if not torch.equal(tensors["hard"], hard.repeat_interleave(parts)):
            raise UserError(f"{root}/labels.safetensors does not match the images (hard labels differ)")
        soft = tensors.get("soft_logits")
        if soft is not None and soft.shape != (len(images) * parts, m["num_classes"]):
            raise UserError(f"{root}/labels.safetensors: soft_logits has shape {tuple(soft.shape)}, "
                            f"expected {(len(images) * parts, m['num_classes'])}")
    return DistilledSet(root, m, images, hard, soft)


def verify_or_reset(root: str | Path) -> bool:
    """True when `root` holds a whole, unchanged set. A damaged one (changed or missing file,
    unreadable manifest or labels) loses its manifest and labels, so the stage that made it
    redoes exactly the classes whose completion records no longer match; False then."""
    root = Path(root)
    if not (root / "manifest.json").exists():
        return False
    try:
        read_distilled(root)
        return True
    except UserError as exc:
        log.warning("%s is damaged (%s); redoing what is needed", root, exc)
        for name in ("manifest.json", "labels.safetensors"):
            (root / name).unlink(missing_ok=True)
        return False


STAGE_FILE = ".otdistill-stage.json"  # dot-file: not part of the artifact's hashed files


def claim_stage(folder: str | Path, stamp: dict) -> None:
    """Record which inputs a stage's folder belongs to; refuse to mix runs of different configs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / STAGE_FILE
    if f.exists():
        old = read_json(f)
        if old != stamp:
            raise UserError(f"{folder} was made with a different config ({old.get('what')}); "
                            f"choose a new output folder (--set output=...) or delete {folder}")
    else:
        write_json(f, stamp)


def export_ddranking(ds: DistilledSet, out: str | Path) -> None:
    """DD-Ranking's soft-label mode reads a class-ordered image tensor and a soft-label tensor
    with the same first dimension; both are written with torch.save (plain tensors)."""
    if ds.soft_logits is None:
        raise UserError(f"{ds.root} has no soft labels yet; run `otdistill relabel {ds.root}` first")
    ds = ds.training()  # DD-Ranking trains on what our students train on
    with atomic_path(out) as tmp:
        tmp.mkdir()
        torch.save(to_unit(ds.images), tmp / "images.pt")
        torch.save(ds.soft_logits.clone(), tmp / "soft_labels.pt")
        torch.save(ds.hard.clone(), tmp / "hard_labels.pt")
        write_json(tmp / "info.json", {
            "source": str(ds.root), "num_classes": ds.num_classes, "ipc": ds.ipc, "class_names": ds.class_names,
            "images": "float32 (N, C, H, W) in [0, 1], class-ordered", "soft_labels": "float32 (N, K) teacher logits",
            "teachers": ds.manifest.get("teachers", []),
            "ddranking": "LabelRobustScoreSoft(...).compute_metrics(image_tensor=torch.load('images.pt'), "
                         "soft_labels=torch.load('soft_labels.pt'))",
        })


def load_ddranking(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = Path(folder)
    return tuple(torch.load(folder / f, weights_only=True) for f in ("images.pt", "soft_labels.pt", "hard_labels.pt"))
