"""One student cell in a process of its own, for evaluate.train_cells when student.workers > 1.

Started as `python -m otdistill.cell_worker INPUTS PROTOCOL SEED CHECKPOINT OUT THREADS CALLER`, it reads
the inputs every cell of its set shares (the set, the test split, the student section, the teachers) from the
pickle INPUTS, trains with THREADS threads and writes the cell to OUT as JSON; a UserError is
written there too (as {"error": message}) so that the caller repeats that one message. A fresh
interpreter rather than multiprocessing's spawn, which would run the caller's own script again.
It ends itself when its caller dies (SIGKILL, SIGTERM from a scheduler): left running, it would
train on and write the cell's checkpoint under the rerun that resumes it.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from .allocator import keep_freed_memory
from .errors import UserError
from .evaluate import CellJob, train_job
from .io import write_json


def exit_with_parent(caller: int, poll_seconds: float = 1.0) -> None:
    """End this process (os._exit: a checkpoint write under way is left as a temporary that the
    next run removes) once the process `caller` that started it is no longer its parent. The
    caller names itself: it may die while this interpreter is still importing."""
    def watch() -> None:
        while os.getppid() == caller:
            time.sleep(poll_seconds)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def take_freed_threads(share_file: Path, poll_seconds: float = 1.0) -> None:
    """Train on with the thread count the caller writes to `share_file` once other workers have
    ended and none is left to start: the last cells of a run would otherwise leave cores idle.
    torch's thread count belongs to the thread that sets it, so the main thread sets it, in a
    signal handler that this watcher triggers (installed first, so no signal comes before it)."""
    wanted = [torch.get_num_threads()]
    signal.signal(signal.SIGUSR1, lambda *_: torch.set_num_threads(wanted[0]))

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if share_file.exists() and (share := int(share_file.read_text())) != wanted[0]:
                wanted[0] = share
                os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=watch, daemon=True, name="take-freed-threads").start()


def main(argv: list[str]) -> None:
    inputs, protocol, seed, checkpoint, out, threads, caller = argv
    exit_with_parent(int(caller))
    keep_freed_memory()
    torch.set_num_threads(int(threads))
    take_freed_threads(Path(out).with_suffix(".threads"))
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
