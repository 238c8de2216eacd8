"""Does the validation split flatter generated sets? A check of one suspected cause of the
validation-to-test shift (docs/feature-ot.md).

The shipped generator and teachers were trained on the whole training split, so they saw the
images tune_otg.py holds out as its validation split; a real-image selection cannot pick those
images. If a generated set's images lie nearer the validation images than they lie to as many
test images of the same class (images nothing was trained on), the generator carries the
validation images into what it draws, and a student trained on its sets is flattered on them.

For each distilled-set folder (and, as the control, as many random training images of each class
from the part that is not held out): the mean over its images of the distance to the nearest of
the class's validation images, and to the nearest of as many of the class's test images, in the
first teacher's penultimate features and in pixels; `ratio` = validation / test. A control near
1 and generated sets well below it say the generator leaks the validation split.

Usage: python benchmarks/split_leak.py SET_DIR ... [--recipe configs/feature-ot.yaml]
Writes benchmarks/results/split-leak-fashion-mnist.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from bench_rows import ROOT

from otdistill.artifacts import read_distilled
from otdistill.config import load_config
from otdistill.data import hold_out, load_dataset
from otdistill.io import write_json
from otdistill.metrics import features, held_out
from otdistill.teachers import load_teacher


def nearest(points: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points.flatten(1).double(), refs.flatten(1).double()).min(1).values


def distances(images: torch.Tensor, labels: torch.Tensor, splits: dict, embed) -> dict:
    """{split: {space: mean nearest distance}} of images to their class's images of each split;
    splits: {split: {class: (uint8 images, their features)}}."""
    feats, out = embed(images), {}
    for split, per_class in splits.items():
        near = {"features": [], "pixels": []}
        for c, (refs, ref_feats) in per_class.items():
            own = labels == c
            if own.any():
                near["features"].append(nearest(feats[own], ref_feats))
                near["pixels"].append(nearest(images[own].float() / 255, refs.float() / 255))
        out[split] = {space: float(torch.cat(d).mean()) for space, d in near.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", help="distilled-set folders (e.g. under runs/tune-fot/*/distilled)")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "feature-ot.yaml"))
    parser.add_argument("--per-class", type=int, default=500, help="validation images per class (as tune_otg.py)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--control", type=int, default=100, help="random kept training images per class")
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/split-leak-fashion-mnist.json"))
    args = parser.parse_args()
    cfg = load_config(args.recipe)
    data = load_dataset(cfg.data)
    validation = hold_out(data, args.per_class, args.split_seed)
    teacher, _ = load_teacher(cfg.teachers[0].path, "cpu")
    embed = lambda x: features(teacher, x, "cpu")  # noqa: E731
    by_class = lambda images, idx: {c: images.get(idx[images.labels[idx] == c]) for c in range(data.num_classes)}  # noqa: E731
    splits = {"validation": by_class(validation.test, torch.arange(len(validation.test))),
              "test": by_class(data.test, held_out(data.test, data.num_classes, args.per_class))}
    splits = {name: {c: (x, embed(x)) for c, x in per_class.items()} for name, per_class in splits.items()}
    kept = held_out(validation.train, data.num_classes, args.control)
    sets = {"control: random kept training images": ("real", validation.train.get(kept), validation.train.labels[kept])}
    for folder in args.sets:
        ds = read_distilled(folder, labels=False)
        sets[str(Path(folder))] = (ds.manifest["source"]["kind"], ds.images, ds.hard)
    rows = []
    for name, (kind, images, labels) in sets.items():
        near = distances(images, labels, splits, embed)
        rows.append({"set": name, "kind": kind, "images": len(images), **near,
                     "ratio": {s: near["validation"][s] / near["test"][s] for s in ("features", "pixels")}})
        print(f"{name}: feature ratio {rows[-1]['ratio']['features']:.3f}, pixel ratio {rows[-1]['ratio']['pixels']:.3f}",
              flush=True)
    generated = [r["ratio"]["features"] for r in rows if r["kind"] == "generated"]
    write_json(Path(args.result), {"per_class": args.per_class, "split_seed": args.split_seed,
                                   "teacher": cfg.teachers[0].path, "rows": rows,
                                   "mean_generated_feature_ratio": statistics.fmean(generated) if generated else None})


if __name__ == "__main__":
    main()
