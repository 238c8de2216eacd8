"""How good is a generator as a prior? Distribution metrics and the students' verdict.

For each generator (NAME=FOLDER) and CFG scale: `--per-class` plain samples per class
(DDIM, the recipe's sampling steps), then in the first teacher's penultimate features,
against as many held-out real images per class: the Frechet distance (the FID analogue),
precision, recall, density and coverage (k-NN, k=5, all classes pooled), and the teacher's
agreement with the generated class. The ground truth follows: ConvNet-3 students with the
embedded default's recipe (soft and hard labels, --seeds, IPC 10) trained on the first 10
samples of each class. Two references are measured in the same run with the same recipe:
`random_real` (as many random real training images; its first 10 per class train the
students) and `random_real_recon` (the same images encoded and decoded by the first
generator's autoencoder, the floor a latent generator can reach).

--split validation scores against a validation split carved from the training set
(otdistill.data.hold_out; the images it holds are never picked as real references); choose
generators and scales there. --split test uses the real test set: run it once, for the
choice. Samples and student cells are cached under --work, so a killed run resumes.

Usage:
  python benchmarks/generator_quality.py --split validation \\
      --generators shipped=checkpoints/fashion-mnist/generator new=runs/generators/dit-v --cfg 1 1.5 2 3
  python benchmarks/generator_quality.py --split test --generators new=... --cfg 1.5 --shipped new
Writes (merging rows by generator, cfg_scale and split) benchmarks/results/generator-quality-fashion-mnist.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

# bench_rows (beside this script) also puts src/ on sys.path
from bench_rows import ROOT, write_merged

from otdistill.allocator import keep_freed_memory
from otdistill.artifacts import DistilledSet
from otdistill.config import load_config
from otdistill.data import TensorImages, hold_out, load_dataset
from otdistill.evaluate import train_student
from otdistill.io import atomic_path, read_json, write_json
from otdistill.metrics import (
    density_coverage,
    features,
    frechet_distance,
    held_out,
    precision_recall,
    teacher_agreement,
)
from otdistill.models.generator import load_generator
from otdistill.readiness import plain_samples
from otdistill.relabel import load_ensemble, select_teachers
from otdistill.sample import latents_to_uint8
from otdistill.teachers import load_teacher
from otdistill.train_generator import encode_all

CONFIG = ROOT / "configs" / "base" / "fashion-mnist.yaml"  # plain sampling
RESULT = ROOT / "benchmarks" / "results" / "generator-quality-fashion-mnist.json"
IPC = 10


def cached(path: Path, make):
    """torch-saved value at path, made (and saved atomically) when absent."""
    if path.exists():
        return torch.load(path, weights_only=False)
    value = make()
    with atomic_path(path) as tmp:
        torch.save(value, tmp)
    return value


def class_ordered(images: torch.Tensor, labels: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` images of each class, class by class."""
    idx = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in range(int(labels.max()) + 1)])
    return images[idx], labels[idx]


def distribution_row(teacher, real_feats: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, device) -> dict:
    feats = features(teacher, images, device)
    precision, recall = precision_recall(real_feats, feats)
    density, coverage = density_coverage(real_feats, feats)
    return {"fd_teacher": frechet_distance(real_feats, feats), "precision": precision, "recall": recall,
            "density": density, "coverage": coverage, "teacher_agreement": teacher_agreement(teacher, images, labels, device),
            "samples": len(images)}


def student_row(images: torch.Tensor, labels: torch.Tensor, cfg, data, seeds: list[int], work: Path, device) -> dict:
    """Soft and hard ConvNet-3 students on the IPC-10 set, mean +- std over seeds (cached per cell)."""
    x, y = class_ordered(images, labels, IPC)
    ds = DistilledSet.in_memory(x, y, data.num_classes, IPC, root=work)
    ensemble = load_ensemble(select_teachers([t.path for t in cfg.teachers], IPC, cfg.relabel.schedule), device)
    out = {}
    for protocol in cfg.student.protocols:
        accs = []
        for seed in seeds:
            cell = work / f"{protocol}-seed{seed}.json"
            if not cell.exists():
                write_json(cell, train_student(ds, data.test, cfg.student, protocol, seed, ensemble, device, quiet=True))
            accs.append(read_json(cell)["final"])
        out[f"acc_{protocol}_mean"] = statistics.fmean(accs)
        out[f"acc_{protocol}_std"] = statistics.pstdev(accs)
        out[f"acc_{protocol}"] = accs
    return out


def row_key(row: dict) -> tuple:
    return row["generator"], row["cfg_scale"], row["split"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generators", nargs="+", required=True, help="NAME=FOLDER pairs")
    p.add_argument("--cfg", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument("--split", choices=["validation", "test"], default="validation")
    p.add_argument("--per-class", type=int, default=200, help="samples (and held-out real images) per class")
    p.add_argument("--val-per-class", type=int, default=500, help="validation images per class carved from training")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="student seeds")
    p.add_argument("--no-students", action="store_true", help="distribution metrics only")
    p.add_argument("--shipped", default=None, help="NAME of the generator the embedded default ships (marks its row)")
    p.add_argument("--work", default="runs/generator-quality")
    p.add_argument("--config", default=str(CONFIG), help="recipe whose data, teachers, sampling and students are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value override of --config")
    p.add_argument("--result", default=str(RESULT))
    args = p.parse_args(argv)
    keep_freed_memory()

    cfg = load_config(args.config, args.overrides)
    device = "cpu"
    data = load_dataset(cfg.data)
    if args.split == "validation":
        data = hold_out(data, args.val_per_class, 0)
    work = Path(args.work) / args.split
    teacher, _ = load_teacher(cfg.teachers[0].path, device)
    real_idx = held_out(data.test, data.num_classes, args.per_class, seed=0)
    real_feats = features(teacher, data.test.get(real_idx), device)
    pick = held_out(data.train, data.num_classes, args.per_class, seed=1)
    real_images, real_labels = data.train.get(pick), data.train.labels[pick]
    # random order inside each class, so the students' first 10 are a random subset
    order = torch.randperm(len(pick), generator=torch.Generator().manual_seed(2))
    order = order[torch.argsort(real_labels[order], stable=True)]
    real_images, real_labels = real_images[order], real_labels[order]

    generators = dict(g.split("=", 1) for g in args.generators)
    first = load_generator(next(iter(generators.values())), device)
    recon = cached(work / "random_real_recon.pt", lambda: latents_to_uint8(
        first, encode_all(first, TensorImages(real_images, real_labels), device)))
    sets = [("random_real", None, None, lambda: (real_images, real_labels)),
            ("random_real_recon", None, None, lambda: (recon, real_labels))]
    for name, folder in generators.items():
        info = read_json(Path(folder) / "generator.json")
        # a finished generator records its training seconds, a snapshot those up to its step
        hours = info.get("train_seconds") or info.get("snapshot", {}).get("train_seconds")
        hours = (hours["total"] if isinstance(hours, dict) else hours) / 3600 if hours else None
        model = load_generator(folder, device)
        for scale in args.cfg:
            sets.append((name, scale, hours, lambda m=model, s=scale, n=name: cached(
                work / f"{n}-cfg{s}.pt", lambda: plain_samples(
                    m, args.per_class, dataclasses.replace(cfg.sample, cfg_scale=s), data.num_classes))))

    rows = []
    for name, scale, hours, make in sets:
        start = time.time()
        images, labels = make()
        row = {"generator": name, "cfg_scale": scale, "split": args.split, "train_cpu_hours": hours,
               **distribution_row(teacher, real_feats, images, labels, device)}
        if not args.no_students:
            row.update(student_row(images, labels, cfg, data, args.seeds, work / f"{name}-cfg{scale}", device))
            row["seeds"] = args.seeds
        row["shipped"] = name == args.shipped
        row["seconds"] = round(time.time() - start, 1)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)
        rows.append(row)
        write_merged(Path(args.result), rows, key=row_key)


if __name__ == "__main__":
    main()
