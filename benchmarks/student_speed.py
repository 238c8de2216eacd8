"""How fast a student cell trains on this machine, and what each candidate speed-up buys.

A converged cell is thousands of ConvNet-3 steps; this measures the step (forward, backward,
optimiser, and under soft labels the teacher's forward on the same view) and the scoring of the
10k test images, side by side in one run, then writes seconds per cell for the protocols the
converged table uses: soft (300 epochs, batch 50, one ConvNet-3 teacher labelling every view)
and dsa (1000 epochs, batch 256, DSA augmentation) at IPC 1 / 10 / 50.

Candidates (each alone against the fp32 baseline; nothing is assumed, every figure is measured):
- bf16: torch.autocast(cpu, bfloat16) around the forward passes;
- channels_last: model and batch in NHWC;
- compile: torch.compile of the student (inductor; its compile seconds are reported apart);
- two_cells: two cells at once, one thread each (throughput per cell: how a table of many
  cells could use the two cores);
- scoring: the test split at batch 1000 (today) against 5000, under inference_mode.

Usage: python benchmarks/student_speed.py [--seconds 4]
Writes benchmarks/results/student-speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from otdistill.dsa import DSAugment  # noqa: E402
from otdistill.models.classifiers import build_classifier  # noqa: E402
from otdistill.train import Augment  # noqa: E402

# protocol -> (epochs, batch size, augmentation, labelled by a teacher)
PROTOCOLS = {"soft": (300, 50, "crop", True), "dsa": (1000, 256, "dsa", False)}
IPCS = (1, 10, 50)
CANDIDATES = ("baseline", "bf16", "channels_last", "compile")
TEST_IMAGES = 10000


def step_fn(batch: int, protocol: str, candidate: str):
    """A closure doing one training step of `protocol` at `batch` images, the candidate applied."""
    _, _, augment, teacher_labels = PROTOCOLS[protocol]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 32, 32, generator=g)
    y = torch.arange(batch) % 10
    student = build_classifier("convnet3", 10, 1, 32, [0.29], [0.33])
    teacher = build_classifier("convnet3", 10, 1, 32, [0.29], [0.33]).eval() if teacher_labels else None
    aug = DSAugment([0.29], [0.33]) if augment == "dsa" else Augment(0.5, True)
    fmt = torch.channels_last if candidate == "channels_last" else torch.contiguous_format
    student = student.to(memory_format=fmt)
    net = torch.compile(student) if candidate == "compile" else student
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if candidate == "bf16" else contextlib.nullcontext

    def step():
        view = aug(x, g).contiguous(memory_format=fmt)
        with autocast():
            out = net(view).float()
            if teacher is not None:
                with torch.inference_mode():
                    target = F.softmax(teacher(view).float(), dim=1)
        loss = F.kl_div(F.log_softmax(out, 1), target.clone(), reduction="batchmean") if teacher is not None \
            else F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def seconds_per_step(step, seconds: float) -> float:
    step()
    step()
    start, n = time.time(), 0
    while time.time() - start < seconds or n < 3:
        step()
        n += 1
    return (time.time() - start) / n


def _cell_worker(args) -> float:
    batch, protocol, seconds = args
    torch.set_num_threads(1)
    return seconds_per_step(step_fn(batch, protocol, "baseline"), seconds)


def scoring_seconds(batch: int, seconds: float) -> float:
    model = build_classifier("convnet3", 10, 1, 32, [0.29], [0.33]).eval()
    x = torch.rand(batch, 1, 32, 32)

    def score():
        with torch.inference_mode():
            model(x).argmax(1)
    return seconds_per_step(score, seconds) * TEST_IMAGES / batch


def steps_per_cell(protocol: str, ipc: int) -> int:
    epochs, batch, _, _ = PROTOCOLS[protocol]
    return epochs * math.ceil(10 * ipc / batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    parser.add_argument("--result", default=str(ROOT / "benchmarks/results/student-speed.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    steps: dict = {}
    compile_seconds: dict = {}
    for protocol in PROTOCOLS:
        for ipc in IPCS:
            batch = min(PROTOCOLS[protocol][1], 10 * ipc)
            for candidate in CANDIDATES:
                start = time.time()
                step = step_fn(batch, protocol, candidate)
                if candidate == "compile":
                    step()  # the first call compiles
                    compile_seconds[f"{protocol}/{ipc}"] = round(time.time() - start, 1)
                steps[(protocol, ipc, candidate)] = seconds_per_step(step, args.seconds)
                print(f"{protocol} IPC {ipc} batch {batch} {candidate}: {1000 * steps[(protocol, ipc, candidate)]:.1f} ms/step",
                      flush=True)
            with mp.get_context("spawn").Pool(2) as pool:  # two cells at once, a thread each
                per_step = pool.map(_cell_worker, [(batch, protocol, args.seconds)] * 2)
            steps[(protocol, ipc, "two_cells")] = sum(per_step) / len(per_step) / 2  # per cell, amortised
            print(f"{protocol} IPC {ipc} two cells: {1000 * steps[(protocol, ipc, 'two_cells')]:.1f} ms/step per cell",
                  flush=True)
    scoring = {batch: scoring_seconds(batch, args.seconds) for batch in (1000, 5000)}
    rows = []
    for (protocol, ipc, candidate), s in steps.items():
        batch = min(PROTOCOLS[protocol][1], 10 * ipc)
        base = steps[(protocol, ipc, "baseline")]
        n = steps_per_cell(protocol, ipc)
        extra = compile_seconds.get(f"{protocol}/{ipc}", 0.0) if candidate == "compile" else 0.0
        cell = n * s + extra + scoring[1000]
        rows.append({"protocol": protocol, "ipc": ipc, "batch": batch, "candidate": candidate, "steps_per_cell": n,
                     "ms_per_step": round(1000 * s, 2), "img_per_s": round(batch / s, 1),
                     "seconds_per_cell": round(cell, 1), "compile_seconds": extra or None,
                     "speedup": round((n * base + scoring[1000]) / cell, 3)})
    result = {"machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
              "scoring_seconds": {f"batch {b}": round(s, 2) for b, s in scoring.items()},
              "rows": rows}
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.result}")


if __name__ == "__main__":
    main()
