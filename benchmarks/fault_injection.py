"""Fault injection on the digits-tiny recipe: kill commands at random points, damage files.

1. Kills: `otdistill run`, `sample`, `relabel` and `evaluate` are each started and SIGKILLed
   after a random delay, several times, then run once more to the end. Pass = the result
   equals an uninterrupted run's (image and label bytes, final accuracies) and no
   temporary or partial file is left.
2. Damage: in copies of a finished run, K random artifact files are garbled, truncated or
   deleted, then `otdistill run` runs again. Each trial ends as: recovered (same result as
   before), clear_error (exit 2, one `otdistill: error:` line), silent_wrong (exit 0, other
   result) or crash (a traceback).

Usage: python benchmarks/fault_injection.py [--kills 5] [--trials 20] [--seed 0]
Writes benchmarks/results/fault-injection.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from otdistill.records import read_evaluation  # noqa: E402
TINY = ROOT / "configs" / "digits-tiny.yaml"


def otdistill(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otdistill.cli", "--quiet", *args], capture_output=True, text=True,
                          timeout=timeout)


def result(out: Path) -> dict:
    d = out / "distilled"
    manifest = json.loads((d / "manifest.json").read_text())
    ev = read_evaluation(d / "eval.json")
    return {"files": manifest["files"], "labels": (d / "labels.safetensors").read_bytes().hex(),
            "finals": {p: r["final"] for p, r in ev["protocols"].items()}}


def leftovers(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.endswith((".tmp", ".resume.pt"))]


def kill_rounds(argv: list[str], kills: int, rng: random.Random, window: tuple[float, float]) -> int:
    """Start argv and SIGKILL it after a random delay, `kills` times; returns kills that landed."""
    landed = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "otdistill.cli", "--quiet", *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(*window))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
    return landed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="kills per command")
    parser.add_argument("--trials", type=int, default=20, help="damage trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/fault-injection.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="otdistill-faults-"))
    models = ["--set", f"generator.path={work / 'models/generator'}",
              "--set", f"teachers.0.path={work / 'models/teacher'}"]
    for command in ("train-generator", "train-teacher"):
        assert otdistill(command, str(TINY), "--set", f"output={work / 'models'}", *models).returncode == 0

    start = time.time()
    ref = work / "ref"
    done = otdistill("run", str(TINY), "--set", f"output={ref}", *models)
    assert done.returncode == 0, done.stderr
    run_seconds = time.time() - start
    reference = result(ref)
    report: dict = {"run_seconds": round(run_seconds, 1), "kills": {}, "damage": {}}

    # 1. kills, per command; the delay window spans the command's uninterrupted duration
    out = work / "killed-run"
    argv = ["run", str(TINY), "--set", f"output={out}", *models]
    landed = kill_rounds(argv, args.kills, rng, (2.0, run_seconds))
    ok = otdistill(*argv).returncode == 0
    report["kills"]["run"] = {"kills": landed, "same_result": ok and result(out) == reference,
                              "leftovers": leftovers(out)}

    staged = work / "killed-stages"
    cfg = [str(TINY), "--set", f"output={staged}", *models]
    for command, argv in [("sample", ["sample", *cfg]), ("relabel", ["relabel", str(staged / "distilled"), *cfg]),
                          ("evaluate", ["evaluate", str(staged / "distilled"), *cfg])]:
        t = time.time()
        landed = kill_rounds(argv, args.kills, rng, (1.5, 8.0))
        finished = otdistill(*argv)
        report["kills"][command] = {"kills": landed, "finished": finished.returncode == 0,
                                    "seconds_to_finish": round(time.time() - t, 1), "leftovers": leftovers(staged)}
    # the staged commands end with the uninterrupted run's set, labels and accuracies
    assert otdistill("run", *cfg).returncode == 0
    report["kills"]["stages_same_result"] = result(staged) == reference

    # 2. damage
    artifacts = [p.relative_to(ref) for p in ref.rglob("*") if p.is_file() and "report" not in p.parts
                 and p.name != "otdistill.log"]
    outcomes = {"recovered": 0, "clear_error": 0, "silent_wrong": 0, "crash": 0}
    trials = []
    for trial in range(args.trials):
        copy = work / f"damaged-{trial}"
        shutil.copytree(ref, copy)
        hit = rng.sample(artifacts, rng.randint(1, 3))
        for rel in hit:
            p = copy / rel
            how = rng.choice(["garble", "truncate", "delete"])
            if how == "delete":
                p.unlink()
            elif how == "truncate":
                p.write_bytes(p.read_bytes()[: max(0, p.stat().st_size // 2)])
            else:
                p.write_bytes(bytes(rng.randrange(256) for _ in range(64)))
        done = otdistill("run", str(TINY), "--set", f"output={copy}", *models)
        if done.returncode == 0:
            outcome = "recovered" if result(copy) == reference else "silent_wrong"
        elif done.returncode == 2 and "otdistill: error:" in done.stderr and "Traceback" not in done.stderr:
            outcome = "clear_error"
        else:
            outcome = "crash"
        outcomes[outcome] += 1
        trials.append({"files": [str(r) for r in hit], "outcome": outcome,
                       "message": done.stderr.strip().splitlines()[-1] if done.returncode else ""})
        print(trial, outcome, trials[-1]["files"], trials[-1]["message"][:160], flush=True)
    report["damage"] = {"trials": args.trials, "files_damaged": sum(len(t["files"]) for t in trials),
                        "outcomes": outcomes, "details": trials}
    Path(args.result).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "damage"} | {"damage": outcomes}, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
