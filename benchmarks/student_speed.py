"""How fast a student cell trains on this machine, and what each candidate speed-up buys.

A converged cell is thousands of ConvNet-3 steps; this times the library's own training loop
(train.fit with evaluate.student_recipe, so augmentation, the teacher's forward on every view
under soft labels, the optimiser and the schedule are all in) and the scoring of the 10k test
images, then writes seconds per cell for the protocols of the converged table: soft (300
epochs, batch 50, a ConvNet-3 teacher labelling every view) and dsa (1000 epochs, batch 256,
DSA augmentation) at IPC 1 / 10 / 50.

The machine is shared and noisy (+-20 % between 3 s windows), so the candidates run
interleaved, round after round, and each figure is the median over rounds; every candidate is
compared with the baseline measured in the same rounds.

Candidates (each measured, none assumed):
- baseline: the whole batch per forward / backward (the library before student.micro_batch);
- micro16 / micro32: student.micro_batch (the same gradient, in parts that stay in cache);
- compile: student.compile (torch.compile, its compile seconds counted once per cell);
- micro16+compile: both;
- bf16 / channels_last were measured before (0.06-0.11x and level on this AVX2-only CPU:
  docs/protocols.md) and are not repeated.
Scoring: the test split at test_batch_size 1000 against 100.

Two cells at once (student.workers, `--workers-only` measures this alone and updates just its
key): per protocol and IPC, two processes training the same cell with one thread each, against
the same two trainings one after the other with every thread, in interleaved rounds; each
process times its own training after a warm-up epoch, and the start of a worker process
(importing the library) is timed apart.

The allocator (allocator.keep_freed_memory, which every training entry point calls;
`--allocator-only` measures this alone and updates just its key): the same two cells at once,
a thread each, in processes that keep freed memory against processes with glibc's defaults.

Usage: python benchmarks/student_speed.py [--seconds 3] [--rounds 3] [--workers-only | --allocator-only]
Writes benchmarks/results/student-speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from otdistill.allocator import keep_freed_memory  # noqa: E402
from otdistill.config import StudentConfig  # noqa: E402
from otdistill.data import TensorImages  # noqa: E402
from otdistill.evaluate import CPU_MICRO_BATCH, student_recipe  # noqa: E402
from otdistill.io import read_json, write_json  # noqa: E402
from otdistill.losses import Targets, hard_loss, soft_loss  # noqa: E402
from otdistill.models.classifiers import build_classifier  # noqa: E402
from otdistill.train import accuracy, fit  # noqa: E402

PROTOCOLS = ("soft", "dsa")
IPCS = (1, 10, 50)
CANDIDATES = {"baseline": (0, False), "micro16": (16, False), "micro32": (32, False), "compile": (0, True),
              "micro16+compile": (16, True)}
TEST_IMAGES = 10000
MEAN, STD = [0.29], [0.33]


class Cell:
    """One student of `protocol` on a random IPC-`ipc` set, trained a few steps at a time."""

    def __init__(self, protocol: str, ipc: int, micro: int, compiled: bool):
        g = torch.Generator().manual_seed(ipc)
        n = 10 * ipc
        self.images = TensorImages(torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g),
                                   torch.arange(n) % 10)
        cfg = StudentConfig(compile=compiled)
        self.recipe = dataclasses.replace(student_recipe(protocol, cfg, MEAN, STD, mirror_safe=True), micro_batch=micro)
        self.steps_per_cell = self.recipe.epochs * math.ceil(n / self.recipe.batch_size)
        self.model = build_classifier("convnet3", 10, 1, 32, MEAN, STD)
        teacher = build_classifier("convnet3", 10, 1, 32, MEAN, STD).eval() if protocol == "soft" else None
        labels = self.images.labels

        def target(x, idx):
            if teacher is None:
                return Targets(labels[idx])
            with torch.inference_mode():
                return Targets(labels[idx], teacher(x).clone())
        self.target, self.loss = target, soft_loss(cfg.soft_loss) if teacher is not None else hard_loss
        self.g = torch.Generator().manual_seed(0)
        self.compile_seconds = self.run(1) if compiled else 0.0  # the first epoch compiles

    def run(self, epochs: int) -> float:
        """Seconds for `epochs` epochs (fit's schedule restarts; the speed does not depend on it)."""
        recipe = dataclasses.replace(self.recipe, epochs=epochs)
        start = time.perf_counter()
        fit(self.model, self.images, recipe, self.loss, self.target, self.g, "cpu", quiet=True)
        return time.perf_counter() - start


def scoring_seconds(batch: int) -> float:
    model = build_classifier("convnet3", 10, 1, 32, MEAN, STD)
    test = TensorImages(torch.randint(0, 256, (2000, 1, 32, 32), dtype=torch.uint8), torch.arange(2000) % 10)
    start = time.perf_counter()
    accuracy(model, test, "cpu", batch)
    return (time.perf_counter() - start) * TEST_IMAGES / len(test)


def overall(rows: list[dict]) -> dict[str, float]:
    """Per candidate, the speed-up of one cell of every protocol and IPC together (the converged
    table's mix): their seconds before (baseline, scoring at batch 1000) over their seconds with it."""
    out = {}
    for c in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == c]
        out[c] = round(sum(r["seconds_before"] for r in mine) / sum(r["seconds_per_cell"] for r in mine), 3)
    return out


def timed_cells(protocol: str, ipc: int, epochs: int, threads: int, at_once: int, allocator: str = "keep") -> float:
    """Seconds until `at_once` processes (`threads` threads each) have each trained `epochs` epochs
    of the cell, as the processes time themselves (the longest; the warm-up epoch left out);
    `allocator`: keep (keep_freed_memory) or default (glibc's own thresholds)."""
    cmd = [sys.executable, __file__, "--time-cell", protocol, str(ipc), str(epochs), str(threads), allocator]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(at_once)]
    return max(float(p.communicate()[0].split()[-1]) for p in procs)


def paired_rows(seconds: float, rounds: int, before: tuple, after: tuple, what: str) -> list[dict]:
    """Per protocol and IPC, `before` against `after` in interleaved rounds: each a (name, timer)
    with timer(protocol, ipc, epochs) -> seconds; speedup = median before / median after."""
    rows = []
    for p in PROTOCOLS:
        for ipc in IPCS:
            cell = Cell(p, ipc, CPU_MICRO_BATCH, False)
            epochs = max(1, round(seconds / max(cell.run(1), 1e-3)))
            times: dict[str, list[float]] = {before[0]: [], after[0]: []}
            for _ in range(rounds):
                for name, timer in (before, after):
                    times[name].append(timer(p, ipc, epochs))
            speedup = statistics.median(times[before[0]]) / statistics.median(times[after[0]])
            rows.append({"protocol": p, "ipc": ipc, "batch": min(cell.recipe.batch_size, 10 * ipc), "epochs": epochs,
                         **{f"{name}_s": [round(x, 2) for x in t] for name, t in times.items()},
                         "speedup": round(speedup, 3)})
            print(f"{p} IPC {ipc}: {what} x{speedup:.2f}", flush=True)
    return rows


def workers_rows(seconds: float, rounds: int) -> dict:
    """student.workers=2 against 1: two cells at once, a thread each, against two in turn."""
    threads = torch.get_num_threads()
    rows = paired_rows(seconds, rounds,
                       ("two_in_turn", lambda p, ipc, n: 2 * timed_cells(p, ipc, n, threads, 1)),  # every thread
                       ("two_at_once", lambda p, ipc, n: timed_cells(p, ipc, n, max(1, threads // 2), 2)),
                       "two cells at once")
    return {"method": f"two processes of one thread each against two trainings in turn with {threads} threads, "
                      f"{rounds} interleaved rounds of ~{seconds:g} s per training, medians; micro-batches at the "
                      "default", "worker_start_seconds": worker_start_seconds(), "rows": rows}


def allocator_rows(seconds: float, rounds: int) -> dict:
    """keep_freed_memory against glibc's defaults, two cells at once with a thread each (the CPU default)."""
    threads = max(1, torch.get_num_threads() // 2)
    rows = paired_rows(seconds, rounds,
                       ("default", lambda p, ipc, n: timed_cells(p, ipc, n, threads, 2, "default")),
                       ("keep", lambda p, ipc, n: timed_cells(p, ipc, n, threads, 2, "keep")),
                       "keeping freed memory")
    return {"method": f"two processes of {threads} thread(s) each, keep_freed_memory against glibc's defaults, "
                      f"{rounds} interleaved rounds of ~{seconds:g} s per training, medians; micro-batches at the default",
            "rows": rows}


def update_key(path: Path, key: str, value: dict) -> None:
    write_json(path, {**read_json(path), key: value})
    print(f"-> {path}")


def worker_start_seconds() -> float:
    """What starting one cell's worker process costs before it trains (an interpreter importing it)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import otdistill.cell_worker"], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over them")
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/student-speed.json"))
    parser.add_argument("--workers-only", action="store_true", help="measure two cells at once only (its key)")
    parser.add_argument("--allocator-only", action="store_true", help="measure keep_freed_memory only (its key)")
    parser.add_argument("--time-cell", nargs=5, metavar=("PROTOCOL", "IPC", "EPOCHS", "THREADS", "ALLOCATOR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_cell:  # a process of workers_rows / allocator_rows: its own training time, printed
        protocol, ipc, epochs, threads, allocator = args.time_cell
        if allocator == "keep":
            keep_freed_memory()
        torch.set_num_threads(int(threads))
        cell = Cell(protocol, int(ipc), CPU_MICRO_BATCH, False)
        cell.run(1)
        print(cell.run(int(epochs)))
        return
    if args.workers_only:
        update_key(Path(args.result), "two_cells_at_once", workers_rows(args.seconds, args.rounds))
        return
    if args.allocator_only:
        update_key(Path(args.result), "allocator", allocator_rows(args.seconds, args.rounds))
        return
    keep_freed_memory()  # as every training entry point
    torch.manual_seed(0)
    cells = {(p, ipc, c): Cell(p, ipc, *how) for p in PROTOCOLS for ipc in IPCS for c, how in CANDIDATES.items()}
    # per protocol and IPC: enough epochs for about --seconds, from a one-epoch probe of the baseline
    epochs = {(p, ipc): max(1, round(args.seconds / max(cells[(p, ipc, "baseline")].run(1), 1e-3)))
              for p in PROTOCOLS for ipc in IPCS}
    per_step: dict = {}
    scoring: dict = {}
    for r in range(args.rounds):
        for (p, ipc, c), cell in cells.items():
            n = epochs[(p, ipc)]
            per_step.setdefault((p, ipc, c), []).append(cell.run(n) / (n * cell.steps_per_cell / cell.recipe.epochs))
        for batch in (1000, 100):
            scoring.setdefault(batch, []).append(scoring_seconds(batch))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    score = {b: statistics.median(s) for b, s in scoring.items()}
    rows = []
    for (p, ipc, c), cell in cells.items():
        s, base = statistics.median(per_step[(p, ipc, c)]), statistics.median(per_step[(p, ipc, "baseline")])
        n = cell.steps_per_cell
        batch = min(cell.recipe.batch_size, 10 * ipc)
        seconds = n * s + cell.compile_seconds + score[100]
        before = n * base + score[1000]
        rows.append({"protocol": p, "ipc": ipc, "batch": batch, "candidate": c, "steps_per_cell": n,
                     "ms_per_step": round(1000 * s, 2), "ms_per_step_rounds": [round(1000 * x, 1) for x in per_step[(p, ipc, c)]],
                     "img_per_s": round(batch / s, 1), "compile_seconds": round(cell.compile_seconds, 1) or None,
                     "seconds_per_cell": round(seconds, 1), "seconds_before": round(before, 1),
                     "speedup": round(before / seconds, 3),
                     "step_speedup": round(base / s, 3)})
        print(f"{p} IPC {ipc} batch {batch} {c}: {1000 * s:.1f} ms/step, {seconds:.0f} s/cell, x{before / seconds:.2f}",
              flush=True)
    result = {"machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
              "method": f"library fit(), {args.rounds} interleaved rounds of ~{args.seconds:g} s per candidate, medians; "
                        "seconds_per_cell = steps x ms/step + compile + scoring (test_batch_size 100; the baseline's "
                        "`before` with 1000); speedup = before / seconds_per_cell",
              "scoring_seconds": {f"batch {b}": round(s, 2) for b, s in score.items()},
              "scoring_rounds": {f"batch {b}": [round(x, 2) for x in s] for b, s in scoring.items()},
              "overall_speedup": overall(rows), "default": f"micro{CPU_MICRO_BATCH}", "rows": rows,
              "two_cells_at_once": workers_rows(args.seconds, args.rounds),
              "allocator": allocator_rows(args.seconds, args.rounds)}
    write_json(args.result, result)
    print(f"-> {args.result}")


if __name__ == "__main__":
    main()
