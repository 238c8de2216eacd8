"""One student cell in a process of its own, for evaluate.train_cells when student.workers > 1.

Started as `python -m otdistill.cell_worker INPUTS PROTOCOL SEED CHECKPOINT OUT THREADS`, it reads
the inputs every cell of its set shares (the set, the test split, the student section, the teachers) from the
pickle INPUTS, trains with THREADS threads and writes the cell to OUT as JSON; a UserError is
written there too (as {"error": message}) so that the caller repeats that one message. A fresh
interpreter rather than multiprocessing's spawn, which would run the caller's own script again.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch

from .allocator import keep_freed_memory
from .errors import UserError
from .evaluate import CellJob, train_job
from .io import write_json


def main(argv: list[str]) -> None:
    inputs, protocol, seed, checkpoint, out, threads = argv
    keep_freed_memory()
    torch.set_num_threads(int(threads))
    with open(inputs, "rb") as f:
        shared = pickle.load(f)
    try:
        cell = train_job(CellJob(protocol, int(seed), Path(checkpoint)), **shared)
    except UserError as exc:
        write_json(out, {"error": str(exc)})
        raise SystemExit(2) from None
    write_json(out, cell)


if __name__ == "__main__":
    main(sys.argv[1:])
