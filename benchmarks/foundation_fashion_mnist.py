"""The v0.1 measurements on the embedded default, in one run on one machine:

- wall time of the README's demo command (`otdistill run configs/fashion-mnist.yaml`);
- the ConvNet-3 ceiling (the shipped teacher: ConvNet-3 trained on all 60k images);
- soft- and hard-label accuracy of the demo's distilled set (IPC 10, 3 seeds, final epoch);
- a random real subset of IPC 10 evaluated with the same student recipe, in the same run;
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
    real = out / "real-random"
    select_seconds = otdistill("select", str(CONFIG), "--out", str(real))
    otdistill("relabel", str(real), str(CONFIG))
    real_eval_seconds = otdistill("evaluate", str(real), str(CONFIG), "--out", str(out / "real-random-eval.json"))

    demo = json.loads((out / "demo" / "eval.json").read_text())
    manifest = json.loads((out / "demo" / "distilled" / "manifest.json").read_text())
    baseline = json.loads((out / "real-random-eval.json").read_text())
    teacher = json.loads((ROOT / "checkpoints/fashion-mnist/teachers/convnet3/model.json").read_text())

    def rows(result):
        return {p: {"mean": r["final_mean"], "std": r["final_std"], "seeds": r["final"]} for p, r in result["protocols"].items()}

    result = {
        "machine": "2 CPU cores (project CI kind)",
        "demo_command": "otdistill run configs/fashion-mnist.yaml",
        "demo_wall_seconds": round(demo_seconds, 1),
        "ceiling_convnet3_full_train": {"test_accuracy": teacher["test_accuracy"], "epochs": teacher["epochs"],
                                        "command": teacher["command"]},
        "student": demo["student"], "student_epochs": demo["epochs"], "ipc": demo["ipc"],
        "distilled_generated": rows(demo),
        "random_real_subset": rows(baseline),
        "random_real_seconds": round(select_seconds + real_eval_seconds, 1),
        "teacher_accuracy_on_generated": manifest["teacher_agreement"],
        "accuracies_are": "fractions in [0, 1], final epoch, population std over seeds",
    }
    path = ROOT / "benchmarks" / "results" / "foundation-fashion-mnist.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
