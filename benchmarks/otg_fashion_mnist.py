"""OT-guided sampling against plain, IGD and IGD+OT on Fashion-MNIST, side by side in one run.

For each recipe (configs/plain.yaml, igd.yaml, ot.yaml, igd+ot.yaml) and IPC:
- sampling wall time as a ratio to plain measured in this run, and the share of it spent in OT;
- distribution metrics against held-out real images (teacher feature space and latent space);
- student accuracy with hard and with soft labels over seeds, final epoch.

Usage: python benchmarks/otg_fashion_mnist.py [--ipc 10 50] [--seeds 0 1 2] [--epochs 300]
       python benchmarks/otg_fashion_mnist.py --retime 2   (sampling time of the first 2 classes,
           every recipe back to back in one process: the ratios to plain and the OT share then
           come from one run on one machine state, and replace those of the rows)
Writes benchmarks/results/otg-fashion-mnist.json (a list of rows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from otdistill import pipeline  # noqa: E402
from otdistill.allocator import keep_freed_memory  # noqa: E402
from otdistill.config import load_config  # noqa: E402
from otdistill.context import RunContext  # noqa: E402
from otdistill.data import load_dataset  # noqa: E402
from otdistill.io import read_json  # noqa: E402

RECIPES = ["plain", "igd", "ot", "igd+ot"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="student epochs for every row (default: the recipe's)")
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--no-eval-ipc", type=int, nargs="*", default=[],
                        help="IPCs measured for time and metrics only (accuracies left null)")
    parser.add_argument("--out-dir", default="runs/bench-otg")
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/otg-fashion-mnist.json"))
    parser.add_argument("--retime", type=int, default=0, metavar="N", help="only re-time sampling on N classes")
    args = parser.parse_args()
    keep_freed_memory()
    if args.retime:
        return retime(args)

    data = None
    result_path = Path(args.result)
    # rows of earlier invocations stay unless this one measures the same (recipe, ipc)
    rows = json.loads(result_path.read_text()) if result_path.exists() else []
    for ipc in args.ipc:
        plain_seconds = None
        for recipe in args.recipes:
            overrides = [f"output={ROOT / args.out_dir / f'{recipe}-ipc{ipc}'}", f"sample.ipc={ipc}",
                         f"student.seeds={args.seeds}"] + ([f"student.epochs={args.epochs}"] if args.epochs else [])
            cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", overrides)
            ctx = RunContext(cfg, quiet=True, data=data)
            data = ctx.data
            root = pipeline.sample_stage(ctx)
            pipeline.relabel_stage(root, ctx)
            metrics = pipeline.metrics_stage(root, ctx)
            evaluated = ipc not in args.no_eval_ipc
            if evaluated:
                result = pipeline.evaluate_stage(root, ctx, Path(cfg.output) / "eval.json")
            source = read_json(root / "manifest.json")["source"]
            seconds = source["sample_seconds"]
            if recipe == "plain":
                plain_seconds = seconds
            empty = {"final_mean": None, "final_std": None, "final": None}
            hard, soft = (result["protocols"]["hard"], result["protocols"]["soft"]) if evaluated else (empty, empty)
            row = {
                "recipe": recipe, "ipc": ipc,
                "sample_seconds": seconds,
                "time_ratio_vs_plain": seconds / plain_seconds if plain_seconds else None,
                "ot_time_share": source["ot_seconds"] / seconds if seconds else 0.0,
                "ot_distance": metrics["teacher_features"]["ot_distance"],
                "coverage": metrics["teacher_features"]["coverage"],
                "density": metrics["teacher_features"]["density"],
                "latent_ot_distance": metrics.get("latent", {}).get("ot_distance"),
                "latent_coverage": metrics.get("latent", {}).get("coverage"),
                "acc_hard_mean": hard["final_mean"], "acc_hard_std": hard["final_std"],
                "acc_soft_mean": soft["final_mean"], "acc_soft_std": soft["final_std"],
                "seeds": args.seeds if evaluated else [], "student": cfg.student.arch, "student_epochs": cfg.student.epochs,
                "acc_hard": hard["final"], "acc_soft": soft["final"],
            }
            rows = [r for r in rows if (r["recipe"], r["ipc"]) != (recipe, ipc)] + [row]
            print(json.dumps(row), flush=True)
            result_path.write_text(json.dumps(rows, indent=2) + "\n")


def retime(args) -> None:
    """Time sample_class on the first N classes for every recipe, back to back."""
    import time

    from otdistill.guidance import build_terms
    from otdistill.models.generator import load_generator
    from otdistill.sample import sample_class

    result_path = Path(args.result)
    rows = json.loads(result_path.read_text())
    data = None
    for ipc in args.ipc:
        plain = None
        for recipe in args.recipes:
            out = ROOT / args.out_dir / f"{recipe}-ipc{ipc}"
            cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", [f"output={out}", f"sample.ipc={ipc}"])
            data = data or load_dataset(cfg.data)
            model = load_generator(cfg.generator.path)
            classes = list(range(args.retime))
            terms = build_terms(cfg.sample.guidance, model, data, cache_dir=out / "cache", classes=classes)
            start = time.perf_counter()
            for c in classes:
                sample_class(model, c, cfg.sample, terms, tuple(cfg.sample.guidance.window))
            seconds = time.perf_counter() - start
            plain = seconds if recipe == "plain" else plain
            ot = sum(t.seconds for t in terms)
            timing = {"classes": args.retime, "seconds": round(seconds, 1), "ratio": seconds / plain if plain else None,
                      "ot_share": ot / seconds}
            for r in rows:
                if (r["recipe"], r["ipc"]) == (recipe, ipc):
                    r.update(time_ratio_vs_plain=timing["ratio"], ot_time_share=timing["ot_share"], timing=timing)
            print(recipe, ipc, json.dumps(timing), flush=True)
    result_path.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
