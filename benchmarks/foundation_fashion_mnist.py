"""The v0.1 measurements on the embedded default, in one run on one machine:

- wall time of the README's demo command (`otdistill run configs/fashion-mnist.yaml`);
- the ConvNet-3 ceiling (the shipped teacher: ConvNet-3 trained on all 60k images);
- soft- and hard-label accuracy of the demo's distilled set (IPC 10, 3 seeds, final epoch);
- the real subsets of IPC 10 that the demo itself scores beside its set (`baseline`: random,
  herding), the random one also under the v0.1 keys;
- the teacher's accuracy on the generated images, per class.

Usage: python benchmarks/foundation_fashion_mnist.py [--out-dir runs/bench-foundation]
Writes benchmarks/results/foundation-fashion-mnist.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from otdistill.artifacts import read_distilled  # noqa: E402
from otdistill.config import load_config  # noqa: E402
from otdistill.records import read_evaluation  # noqa: E402
CONFIG = ROOT / "configs" / "fashion-mnist.yaml"


def otdistill(*args: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-m", "otdistill.cli", "--quiet", *args], check=True, cwd=ROOT)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/bench-foundation")
    args = parser.parse_args()
    out = ROOT / args.out_dir
    demo_seconds = otdistill("run", str(CONFIG), "--set", f"output={out / 'demo'}")

    demo = read_evaluation(out / "demo" / "distilled" / "eval.json")
    manifest = read_distilled(out / "demo" / "distilled", verify_hashes=False).manifest
    baseline = read_evaluation(out / "demo" / "baselines" / "random" / "eval.json")
    timings = json.loads((out / "demo" / "timings.json").read_text())
    # the demo's teacher (the full-data ConvNet-3) as its config names it; older model.json files
    # have no `recipe`, so its epochs come from the config too
    teacher_cfg = load_config(CONFIG).teachers[0]
    teacher = json.loads((ROOT / teacher_cfg.path / "model.json").read_text())

    soft, hard = demo["protocols"]["soft"], demo["protocols"]["hard"]
    real_soft, real_hard = baseline["protocols"]["soft"], baseline["protocols"]["hard"]
    result = {
        "demo_seconds": round(demo_seconds, 1),
        "full_data_acc": teacher["test_accuracy"],
        "ipc10_soft_acc_mean": soft["final_mean"], "ipc10_soft_acc_std": soft["final_std"],
        "ipc10_hard_acc_mean": hard["final_mean"], "ipc10_hard_acc_std": hard["final_std"],
        "random_real_ipc10_soft_acc_mean": real_soft["final_mean"],
        "random_real_ipc10_soft_acc_std": real_soft["final_std"],
        "random_real_ipc10_hard_acc_mean": real_hard["final_mean"],
        "random_real_ipc10_hard_acc_std": real_hard["final_std"],
        "teacher_acc_on_generated": manifest["teacher_agreement"]["overall"],
        "teacher_acc_on_generated_per_class": manifest["teacher_agreement"]["per_class"],
        "seeds": soft["seeds"],
        "per_seed": {"ipc10_soft": soft["final"], "ipc10_hard": hard["final"],
                     "random_real_soft": real_soft["final"], "random_real_hard": real_hard["final"]},
        "demo_command": "otdistill run configs/fashion-mnist.yaml",
        "guidance": manifest["source"]["guidance"], "teachers": manifest.get("teachers"),  # what the demo ran
        "stage_seconds": timings,
        "full_data": {"model": "ConvNet-3 teacher on all 60k training images", "epochs": teacher_cfg.epochs,
                      "command": teacher["command"]},
        "student": demo["student"], "student_epochs": demo["epochs"],
        "baseline_seconds": timings["baseline"],  # every set in `baseline`, together
        "baselines": {method: {p: read_evaluation(out / "demo" / "baselines" / method / "eval.json")["protocols"][p]
                               for p in ("soft", "hard")} for method in load_config(CONFIG).baseline},
        "distribution_metrics": {k: {m: v[m] for m in ("ot_distance", "coverage", "density")}
                                 for k, v in manifest.get("metrics", {}).items() if isinstance(v, dict) and "coverage" in v},
        "machine": "2 CPU cores (the project's CI kind), nothing else running",
        "accuracies_are": "fractions in [0, 1], final epoch, population std over seeds",
    }
    path = ROOT / "benchmarks" / "results" / "foundation-fashion-mnist.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
