"""Choose the student-loss weights of the full pipeline on a validation split, never the test split.

Each candidate weighting of student.soft_loss trains students on the full pipeline's distilled
set (the `otdistill` row of distill_bench.py: OTG images, LIA teachers, online labels) and is
scored on --per-class training images of each class held out with --split-seed
(otdistill.data.hold_out). The set is sampled with those images held out too (its OT guidance
pulls towards a pool of real training latents, which then excludes them, as in tune_otg.py),
and the students train on distilled images only, so they never see the
held-out images; the shipped generator and teachers were trained on the whole training split,
which includes them. That is the same for every candidate; the level is somewhat optimistic,
which is why these numbers are never reported as accuracy. Whether the ranking of soft-label
losses holds with teachers that never saw the held-out images is not measured: between
generated and real sets it did not (tune_otg.py --held-out-teachers, docs/feature-ot.md).

Usage: python benchmarks/tune_otm.py [--ipc 10] [--seeds 0 1] [--candidates kl1 ce1+mse0.1+sd1 ...]
Writes benchmarks/results/tune-otm-fashion-mnist.json (rows of earlier runs are kept) and prints
the candidates best first. The winner goes into configs/otdistill.yaml by hand, with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

# bench_rows (beside this script) also puts src/ on sys.path
from bench_rows import LOSS_TERMS as TERMS
from bench_rows import ROOT, build_set, epochs_for, made_by, row_config, write_merged

from otdistill import pipeline
from otdistill.allocator import keep_freed_memory
from otdistill.config import load_config
from otdistill.context import RunContext
from otdistill.data import hold_out, load_dataset
from otdistill.io import read_json

# the paper's OTM family (kappa_1 CE + kappa_2 MSE + beta_2 L_SD), the RDED/SRe2L KL, and our
# extension KL + L_SD; L_SD lies in [0, 2], so it needs larger weights than the CE to matter
CANDIDATES = ["kl1", "ce1+mse0.1+sd1", "ce1+mse0.1+sd10", "mse0.1+sd1", "ce1+mse1+sd1", "kl1+sd1", "kl1+sd10"]


def weights_of(name: str) -> dict[str, float]:
    """`ce1+mse0.1+sd10` -> {kl: 0, ce: 1, mse: 0.1, sd: 10}."""
    weights = dict.fromkeys(TERMS, 0.0)
    for part in name.split("+"):
        term = next((t for t in TERMS if part.startswith(t)), None)
        try:
            weights[term] = float(part[len(term):])
        except (TypeError, ValueError):
            raise SystemExit(f"candidate '{name}': '{part}' is not a term ({', '.join(TERMS)}) and a weight, "
                             "e.g. ce1+mse0.1+sd10") from None
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--candidates", nargs="+", default=CANDIDATES)
    parser.add_argument("--student", default="convnet3")
    parser.add_argument("--epochs", nargs="+", default=["80", "50=16"], help="as distill_bench.py's --epochs")
    parser.add_argument("--per-class", type=int, default=500, help="validation images per class, from the training split")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the recipe's)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "tune-otm"))
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/tune-otm-fashion-mnist.json"))
    parser.set_defaults(overrides=[])  # bench_rows.row_config's extra overrides: none here
    args = parser.parse_args()
    keep_freed_memory()
    args.protocols = ["soft"]
    candidates = {name: weights_of(name) for name in args.candidates}
    work, rows, start = Path(args.work), [], time.time()
    validation = hold_out(load_dataset(load_config(ROOT / "configs" / "otdistill.yaml").data), args.per_class,
                          args.split_seed)
    for ipc in args.ipc:
        cfg = row_config("otdistill", ipc, args, work, validation.train)
        ctx = RunContext(cfg, quiet=True, data=validation)
        root = build_set("otdistill", ctx, work)
        pipeline.relabel_stage(root, ctx)
        manifest = read_json(root / "manifest.json")
        epochs = epochs_for(args.epochs, args.student, ipc)
        for name, weights in candidates.items():
            student = dataclasses.replace(cfg.student, arch=args.student, seeds=args.seeds, epochs=epochs,
                                          protocols=["soft"], soft_loss=dataclasses.replace(cfg.student.soft_loss, **weights))
            out = work / "tune" / f"val{args.per_class}-split{args.split_seed}" / f"ipc{ipc}" / f"{args.student}-{name}.json"
            scored = RunContext(dataclasses.replace(cfg, student=student), quiet=True, data=validation)
            r = pipeline.evaluate_stage(root, scored, out)["protocols"]["soft"]
            rows.append({"candidate": name, "soft_loss": weights, "ipc": ipc, "student": args.student, "epochs": epochs,
                         "val_acc_mean": r["final_mean"], "val_acc_std": r["final_std"], "val_acc": r["final"],
                         "seeds": r["seeds"], "validation": {"per_class": args.per_class, "split_seed": args.split_seed,
                                                             "from": "training split"}, **made_by(manifest)})
            print(json.dumps({k: rows[-1][k] for k in ("candidate", "ipc", "val_acc_mean", "val_acc_std")}), flush=True)
    result = Path(args.result)
    rows = write_merged(result, rows, key=lambda r: (r["candidate"], r["ipc"], r["student"], r["epochs"],
                                                      json.dumps(r["validation"], sort_keys=True)))
    for ipc in sorted({r["ipc"] for r in rows}):
        print(f"IPC {ipc}, best first (validation accuracy, mean +- std over seeds):")
        for r in sorted((r for r in rows if r["ipc"] == ipc), key=lambda r: -r["val_acc_mean"]):
            print(f"  {r['candidate']:<20} {100 * r['val_acc_mean']:.2f} +- {100 * r['val_acc_std']:.2f}  "
                  f"{r['student']} {r['epochs']} epochs")
    print(f"{len(rows)} rows in {time.time() - start:.0f} s -> {result}")


if __name__ == "__main__":
    main()
