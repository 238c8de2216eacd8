"""Choose the guidance of the full pipeline on a validation split, never the test split.

Each setting is a set of overrides of `sample.guidance` (the OT weight beta_1 and lambda_1,
the window, the pool size and selection, IGD's influence and deviation weights) on top of
--recipe (default configs/otdistill.yaml: OTG + LIA + OTM). For each, the set is sampled,
labelled, measured and scored with the recipe's students, all against --per-class training
images of each class held out with --split-seed (otdistill.data.hold_out): the real-latent
pool and the selection baselines never see those images, the distribution metrics (OT
distance, coverage in the first teacher's features) compare with them, and the students
are scored on them. The shipped generator and teachers were trained on the whole training
split, which includes them. `--held-out-teachers` trains the recipe's teachers again on the
training images the split keeps (once per split, under --work) and uses them wherever the
recipe reads its teachers (labels, feature OT's default classifier, herding's features, the
metrics), so that no model but the generator has seen the images students are scored on. With
the shipped teacher, feature OT's soft-label lead over herding on validation was 1.3 points
larger than with the held-out one, which agreed with the test split (docs/feature-ot.md): compare
soft-label rows of generated and real sets with it.

A setting is written as `+`-joined KEY=VALUE pairs, keys relative to sample.guidance, or
whole keys of the sample section (the CFG scale, the chunk size):
    ot.weight=1+ot.reg=0.1+window=[0,40]+sample.cfg_scale=1.5+sample.batch_size=5
`recipe` (no overrides) is the recipe itself.
`off` switches every registered term off (the recipe's plain samples with its labels).
`real:METHOD` (e.g. real:herding, real:random) scores a real-image selection of the same IPC
on the same split with the same labels and students: the reference a setting must beat; whole
sample.* keys may follow it (real:herding+sample.formation=2 packs the selection as a sampled
setting with sample.formation=2 would).

One sampled set per setting is one draw: a second sampling seed of the same setting moved it by
0.9 / 2.3 points (soft / hard, IPC 10, docs/feature-ot.md), more than most settings differ.
`--sample-seeds 0 1` samples (or selects) each setting once per seed and scores every set; a
row's accuracy is then over sets x student seeds, with `set_means` per set.

Usage: python benchmarks/tune_otg.py [--settings SETTING ...] [--seeds 0 1] [--sample-seeds 0 1] [--ipc 10]
Writes benchmarks/results/tune-otg-fashion-mnist.json (rows of earlier runs are kept; one row
per setting and protocol: setting, split, labels (the protocol), epochs, acc_mean, acc_std, seeds,
ot_distance, coverage, teacher_sha256: the labelling teachers' weights, since a held-out teacher
trained again is another model at the same path)
and prints the settings best first. The winner goes into the recipes by hand, with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import time
from pathlib import Path

# bench_rows (beside this script) also puts src/ on sys.path
from bench_rows import ROOT, write_merged

from otdistill import pipeline
from otdistill.allocator import keep_freed_memory
from otdistill.config import fingerprint, load_config, non_defaults
from otdistill.context import RunContext
from otdistill.data import LabelledData, hold_out, load_dataset
from otdistill.guidance import off_overrides
from otdistill.io import sha256_file
from otdistill.relabel import select_teachers
from otdistill.selection import BASELINES
from otdistill.surrogate import train_surrogate

# a first grid around the recipes' values (configs/ot.yaml, igd.yaml): the OT weight and
# regularisation, the window, the pool, and IGD's two weights with OT on and off
SETTINGS = [
    "recipe", "off",
    "ot.weight=0.1", "ot.weight=1", "ot.weight=3",
    "ot.reg=0.02", "ot.reg=0.2",
    "window=[0,50]", "window=[0,20]", "window=[10,40]",
    "ot.pool_size=50", "ot.pool_size=300", "ot.pool_select=kmeans",
    "influence.weight=0", "influence.weight=1", "deviation.weight=0", "deviation.weight=0.3",
    "influence.weight=0+deviation.weight=0",
]


def overrides_of(setting: str) -> list[str]:
    """`ot.weight=1+sample.cfg_scale=2` -> ["sample.guidance.ot.weight=1", "sample.cfg_scale=2"]."""
    if setting == "recipe":
        return []
    if setting == "off":
        return off_overrides()
    pairs = setting.split("+")
    if setting.startswith("real:"):  # the selection, then whole sample.* keys (sample.formation=2)
        if real_of(setting) not in BASELINES:
            raise SystemExit(f"setting '{setting}': no baseline '{real_of(setting)}'; use one of {', '.join(BASELINES)}")
        pairs = pairs[1:]
        if not all(re.fullmatch(r"sample\.[a-z_.]+=\S+", p) for p in pairs):
            raise SystemExit(f"setting '{setting}': a real selection takes whole sample.* keys only, "
                             "e.g. real:herding+sample.formation=2")
        return pairs
    if not all(re.fullmatch(r"[a-z_.]+=\S+", p) for p in pairs):
        raise SystemExit(f"setting '{setting}': write KEY=VALUE pairs joined by +, keys relative to "
                         "sample.guidance, e.g. ot.weight=1+window=[0,40] (or recipe, off)")
    return [p if p.startswith("sample.") else f"sample.guidance.{p}" for p in pairs]


def real_of(setting: str) -> str | None:
    """`real:herding+sample.formation=2` -> "herding"; None for a sampled setting."""
    return setting.split("+")[0][5:] if setting.startswith("real:") else None


def slug(setting: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", setting)


def held_out_teachers(cfg, validation: LabelledData, work: Path) -> list[str]:
    """Overrides replacing the recipe's teachers (and IGD's surrogate, where the recipe guides with
    influence) by copies trained (here, once) on the training images the validation split keeps,
    so that no model but the generator has seen the images students are scored on. Only the
    teachers that label at the recipe's IPC (LIA's schedule) are trained and kept: the first of
    them also guides and measures, the others would cost their training for nothing."""
    used = len(select_teachers([t.path for t in cfg.teachers], cfg.sample.ipc, cfg.relabel.schedule))
    teachers = [dataclasses.replace(t, path=str(work / "teachers" / f"{i}-{Path(t.path).name}"))
                for i, t in enumerate(cfg.teachers[:used])]
    ctx = RunContext(dataclasses.replace(cfg, teachers=teachers), data=validation)
    pipeline.ensure_teachers(ctx)  # absent ones
    overrides = [f"teachers={json.dumps([dataclasses.asdict(t) for t in teachers])}"]
    if cfg.sample.guidance.influence.weight > 0:
        surrogate = work / "surrogate" / fingerprint(cfg.sample.guidance.surrogate)[:8]  # one per trajectory recipe
        if not surrogate.exists():
            train_surrogate(cfg.sample.guidance.surrogate, surrogate, validation, ctx.device, quiet=False)
        overrides.append(f"sample.guidance.influence.surrogate={surrogate}")
    return overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=SETTINGS)
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "otdistill.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="key.path=value override of --recipe for every setting")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sample-seeds", type=int, nargs="+", default=None,
                        help="sample (or select) each setting's set once per seed and score them all: one set per "
                             "setting differs from the next draw by up to 2 points (docs/feature-ot.md); default: the "
                             "recipe's sample.seed, once")
    parser.add_argument("--per-class", type=int, default=500, help="validation images per class, from the training split")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "runs" / "tune-otg"))
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/tune-otg-fashion-mnist.json"))
    parser.add_argument("--held-out-teachers", action="store_true",
                        help="label, guide and measure with the recipe's teachers trained again without the "
                             "validation images (trained once per split under --work)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    settings = {s: overrides_of(s) for s in args.settings}  # every setting parsed before any work
    recipe = load_config(args.recipe, [*args.overrides, f"sample.ipc={args.ipc}"])  # settings change no data key
    validation = hold_out(load_dataset(recipe.data), args.per_class, args.split_seed)
    work = Path(args.work)
    if args.held_out_teachers:  # its sets apart: sampling may not read the teachers, labelling does
        work = work / f"held-out-teachers-{args.per_class}-seed{args.split_seed}"
        args.overrides += held_out_teachers(recipe, validation, work)
    result_path = Path(args.result)
    key = lambda r: (r["setting"], r["labels"], r["ipc"], r["recipe"], json.dumps(r["base_overrides"]),  # noqa: E731
                     json.dumps(r["validation"], sort_keys=True), json.dumps(r.get("sample_seeds")),
                     json.dumps(r.get("teacher_sha256"), sort_keys=True))
    rows, start = [], time.time()
    for setting, extra in settings.items():
        scored = []  # (cfg, metrics, protocols) per set
        for sample_seed in args.sample_seeds or [None]:
            seed = [] if sample_seed is None else [f"sample.seed={sample_seed}"]
            cfg = load_config(args.recipe, [*args.overrides, f"sample.ipc={args.ipc}",
                                            f"student.seeds={json.dumps(args.seeds)}", *extra, *seed])
            # settings are relative to the recipe, so the folder also names what is sampled: a setting
            # rerun after a recipe change gets a new folder instead of refusing the old one
            cfg = dataclasses.replace(cfg, output=str(work / f"{slug(setting)}-{pipeline.sample_fingerprint(cfg)[:8]}"))
            ctx = RunContext(cfg, quiet=True, data=validation)
            root = (pipeline.select_stage(ctx, real_of(setting), Path(cfg.output) / "distilled") if real_of(setting)
                    else pipeline.sample_stage(ctx))
            pipeline.relabel_stage(root, ctx)
            scored.append((cfg, pipeline.metrics_stage(root, ctx)["teacher_features"],
                           pipeline.evaluate_stage(root, ctx)["protocols"]))
        for labels in scored[0][2]:
            acc = [a for _, _, protocols in scored for a in protocols[labels]["final"]]
            rows.append({"setting": setting, "overrides": extra, "split": "validation", "ipc": args.ipc,
                         "labels": labels, "epochs": scored[0][2][labels].get("epochs"),  # the protocol's length
                         "acc_mean": statistics.fmean(acc),
                         "acc_std": statistics.pstdev(acc), "acc": acc,
                         "seeds": scored[0][2][labels]["seeds"],
                         "ot_distance": statistics.fmean(m["ot_distance"] for _, m, _ in scored),
                         "coverage": statistics.fmean(m["coverage"] for _, m, _ in scored),
                         "validation": {"per_class": args.per_class, "split_seed": args.split_seed,
                                        "from": "training split"}, "recipe": Path(args.recipe).name,
                         "base_overrides": args.overrides,
                         # what the recipe file said when the row was made: a recipe is edited as choices are made
                         "cfg_scale": cfg.sample.cfg_scale, "guidance": non_defaults(cfg.sample.guidance),
                         # held-out teachers trained again on another day are other models at the same path
                         "teacher_sha256": {p: sha256_file(Path(p) / "model.safetensors")[:16] for p in select_teachers(
                             [t.path for t in cfg.teachers], cfg.sample.ipc, cfg.relabel.schedule)}})
            if args.sample_seeds:  # acc runs over sets (outer) and student seeds (inner)
                rows[-1].update(sample_seeds=args.sample_seeds,
                                set_means=[protocols[labels]["final_mean"] for _, _, protocols in scored])
            print(json.dumps({k: rows[-1][k] for k in ("setting", "labels", "acc_mean", "ot_distance", "coverage")}),
                  flush=True)
        all_rows = write_merged(result_path, rows, key=key)  # after every setting: a killed sweep keeps its rows
    for labels in sorted({r["labels"] for r in all_rows}):
        print(f"{labels} labels, best first (validation accuracy, mean +- std over seeds; OT distance; coverage):")
        same = (r for r in all_rows if r["labels"] == labels and key(r)[2:] == key(rows[0])[2:])  # this run's IPC, recipe, split
        for r in sorted(same, key=lambda r: -r["acc_mean"]):
            print(f"  {r['setting']:<40} {100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f}  "
                  f"{r['ot_distance']:.2f}  {r['coverage']:.3f}")
    print(f"{len(rows)} rows in {time.time() - start:.0f} s -> {result_path} ({len(all_rows)} in all)")


if __name__ == "__main__":
    main()
