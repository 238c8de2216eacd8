"""The v0.1 measurements on the embedded default, in one run on one machine:

- wall time of the README's demo command (`otdistill run configs/fashion-mnist.yaml`), and with
  `--fresh-clone` the README's whole set-up: a clone of HEAD, a new virtual environment, the
  README's `pip install -c constraints.txt -e .` (timed, with the pip cache's state beside it),
  then the demo from the clone;
- the ConvNet-3 ceiling (the shipped teacher: ConvNet-3 trained on all 60k images);
- the accuracy of the demo's distilled set per student protocol it runs (IPC 10, its seeds,
  final epoch);
- the real subsets of IPC 10 that the demo itself scores beside its set (`baseline`: random,
  herding), the random one also under the v0.1 keys;
- the teacher's accuracy on the generated images, per class.

Usage: python benchmarks/foundation_fashion_mnist.py [--out-dir runs/bench-foundation] [--fresh-clone]
Writes benchmarks/results/foundation-fashion-mnist.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from otdistill.artifacts import read_distilled  # noqa: E402
from otdistill.config import load_config  # noqa: E402
from otdistill.records import read_evaluation  # noqa: E402
CONFIG = Path("configs") / "fashion-mnist.yaml"
INSTALL = ["-m", "pip", "install", "-q", "-c", "constraints.txt", "-e", "."]  # the README's, less `otdistill run`


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.time()
    subprocess.run(cmd, check=True, cwd=cwd)
    return time.time() - start


def pip_cache_bytes() -> int:
    """Bytes in pip's cache: a cold cache downloads torch's CUDA wheels from PyPI (minutes)."""
    out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    folder = Path(out.stdout.strip())
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if out.returncode == 0 and folder.is_dir() else 0


def fresh_clone(where: Path) -> tuple[Path, str, dict]:
    """HEAD cloned into WHERE with its own virtual environment installed as the README says: the
    clone, its python and what the install was (git commits first: uncommitted work is not cloned)."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    clone, venv = where / "otdistill", where / "venv"
    cache = pip_cache_bytes()
    start = time.time()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, *INSTALL], check=True, cwd=clone)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=clone).stdout.strip()
    return clone, python, {"commit": commit, "pip_cache_bytes_before": cache,
                           "install_seconds": round(time.time() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/bench-foundation")
    parser.add_argument("--fresh-clone", action="store_true",
                        help="clone HEAD into OUT_DIR/clone, install it in a new virtual environment and run the demo there")
    args = parser.parse_args()
    out = ROOT / args.out_dir
    setup = {}
    if args.fresh_clone:
        root, python, setup = fresh_clone(out / "clone")
        cfg = load_config(root / CONFIG)
        demo_dir = root / cfg.output  # exactly the README's command
        demo_seconds = timed([python, "-m", "otdistill.cli", "--quiet", "run", str(CONFIG)], root)
    else:
        root, demo_dir, cfg = ROOT, out / "demo", load_config(ROOT / CONFIG)
        demo_seconds = timed([sys.executable, "-m", "otdistill.cli", "--quiet", "run", str(CONFIG),
                              "--set", f"output={demo_dir}"], ROOT)

    demo = read_evaluation(demo_dir / "distilled" / "eval.json")
    manifest = read_distilled(demo_dir / "distilled", verify_hashes=False).manifest
    baselines = {method: read_evaluation(demo_dir / "baselines" / method / "eval.json")["protocols"]
                 for method in cfg.baseline}
    timings = json.loads((demo_dir / "timings.json").read_text())
    # the demo's teacher (the full-data ConvNet-3) as its config names it; older model.json files
    # have no `recipe`, so its epochs come from the config too
    teacher_cfg = cfg.teachers[0]
    teacher = json.loads((root / teacher_cfg.path / "model.json").read_text())

    protocols = demo["protocols"]
    result = {
        "demo_seconds": round(demo_seconds, 1),
        **({"fresh_clone_seconds": round(setup["install_seconds"] + demo_seconds, 1), "fresh_clone": setup} if setup else {}),
        "full_data_acc": teacher["test_accuracy"],
        "protocols": list(protocols),
        **{f"ipc10_{p}_acc_{k}": protocols[p][f"final_{k}"] for p in protocols for k in ("mean", "std")},
        **{f"random_real_ipc10_{p}_acc_{k}": baselines["random"][p][f"final_{k}"] for p in protocols for k in ("mean", "std")},
        "teacher_acc_on_generated": manifest["teacher_agreement"]["overall"],
        "teacher_acc_on_generated_per_class": manifest["teacher_agreement"]["per_class"],
        "seeds": next(iter(protocols.values()))["seeds"],
        "per_seed": {**{f"ipc10_{p}": protocols[p]["final"] for p in protocols},
                     **{f"random_real_{p}": baselines["random"][p]["final"] for p in protocols}},
        "demo_command": f"otdistill run {CONFIG}",
        "guidance": manifest["source"]["guidance"], "teachers": manifest.get("teachers"),  # what the demo ran
        "stage_seconds": timings,
        "full_data": {"model": "ConvNet-3 teacher on all 60k training images", "epochs": teacher_cfg.epochs,
                      "command": teacher["command"]},
        "student": demo["student"], "student_epochs": demo["epochs"],
        "baseline_seconds": timings["baseline"],  # every set in `baseline`, together
        "baselines": {method: {p: evals[p] for p in protocols} for method, evals in baselines.items()},
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
