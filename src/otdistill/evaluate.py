"""Student evaluation: train a fresh student on a distilled set, score it on the real test set.

Headline = FINAL-epoch accuracy, mean +- std over seeds. When `eval_every` > 0 the test set
(or `curve_test_images` of it) is also scored during training: a learning curve, and the best
of its epochs reported as an extra labelled as peers' practice we do not recommend (it picks
the epoch on the test set).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from . import distributed, protocols
from .artifacts import DistilledSet
from .config import StudentConfig
from .data import ImageSet, TensorImages, every_nth
from .dsa import OPERATIONS, DSAugment
from .errors import UserError
from .io import generator, write_text
from .progress import progress
from .losses import Targets, hard_loss, soft_loss
from .models.classifiers import build_classifier
from .records import Cell, ProtocolResult
from .relabel import TeacherEnsemble, load_ensemble
from .train import Augment, TrainRecipe, accuracy, channel_stats, fit

SOFT_LABELS = ("online", "stored")  # the teachers label each augmented view | the set's stored logits


def student_recipe(protocol: str, cfg: StudentConfig, mean: list[float], std: list[float],
                   mirror_safe: bool) -> TrainRecipe:
    """The training recipe of `protocol` (protocols.py); `mean` / `std`: the statistics the
    student normalises with (the field's protocols augment in that normalised space)."""
    base = protocols.check(protocol)
    if base in protocols.OWN:
        return TrainRecipe(cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.weight_decay,
                           Augment(cfg.crop_scale_min, cfg.flip, cfg.image_size), cfg.cutmix, cfg.ema_decay,
                           compile=cfg.compile)
    field = protocols.FIELD[base]
    n = protocols.epochs(protocol, cfg.epochs)
    operations = tuple(op for op in OPERATIONS if mirror_safe or op != "flip")
    augment = DSAugment(mean, std, operations) if field.augment == "dsa" else Augment(1.0, False, cfg.image_size)
    # DC's drop comes after epoch E // 2 + 1 counted from 0, i.e. after E // 2 + 2 epochs
    return TrainRecipe(n, field.batch_size, "sgd_dc", field.lr, field.weight_decay, augment,
                       schedule="step", step_epoch=n // 2 + 2, compile=cfg.compile)


# student.micro_batch=None on a CPU: parts of 32 train dsa's batches of 100 / 256 1.6x / 1.5x faster on 2 cores,
# soft's batch of 50 level (benchmarks/results/student-speed.json)
CPU_MICRO_BATCH = 32


def exact_micro_batch(cfg: StudentConfig, labels: str, model: torch.nn.Module, device) -> int:
    """The parts a batch is trained in (0: whole): student.micro_batch, or by default small parts on
    a CPU only, and only where the parts' summed gradients are the batch's own, i.e. the student
    keeps no batch statistics (BatchNorm) and the loss is a per-image mean (the sd term matches
    a batch's images to each other)."""
    if cfg.micro_batch is not None:
        wanted = cfg.micro_batch
    else:  # a GPU wants the whole batch
        wanted = CPU_MICRO_BATCH if torch.device(device).type == "cpu" else 0
    batch_stats = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    per_image = labels == "hard" or cfg.soft_loss.sd == 0
    return wanted if per_image and not batch_stats else 0


def train_student(ds: DistilledSet, test: ImageSet, cfg: StudentConfig, protocol: str, seed: int,
                  ensemble: TeacherEnsemble | None, device, quiet: bool = False, checkpoint=None,
                  data_stats: tuple[list[float], list[float]] | None = None, mirror_safe: bool = True) -> Cell:
    """One student, one protocol (protocols.py), one seed -> {final, best_epoch, per-epoch scores,
    seconds}. `checkpoint`: where its per-epoch training state lives, so a killed training resumes.
    `data_stats`: the training split's channel mean / std, with which the field's protocols (dc,
    dsa) normalise as their source does; the set's own statistics otherwise. `mirror_safe`: False
    where a mirror image changes the class (digits), which drops DSA's flip."""
    labels = protocols.labels(protocol)
    if labels == "soft" and ensemble is None and cfg.soft_labels == "online":
        raise UserError("the soft protocol needs teachers; list them under `teachers` in the config")
    start = time.time()
    ds = ds.training()  # with multi-formation: each stored image's parts, enlarged back
    images = TensorImages(ds.images, ds.hard)
    field = protocols.check(protocol) in protocols.FIELD
    mean, std = data_stats if field and data_stats is not None else channel_stats(images)
    torch.manual_seed(seed)
    size = cfg.image_size or ds.images.shape[-1]
    model = build_classifier(cfg.arch, ds.num_classes, ds.images.shape[1], size, mean, std).to(device)
    recipe = dataclasses.replace(student_recipe(protocol, cfg, mean, std, mirror_safe),
                                 micro_batch=exact_micro_batch(cfg, labels, model, device))
    hard = ds.hard.to(device)
    if labels == "soft" and cfg.soft_labels == "stored":
        if ds.soft_logits is None:
            raise UserError(f"student.soft_labels=stored but {ds.root} has no stored labels; run `otdistill relabel` first")
        stored = ds.soft_logits.to(device)

    seen: dict = {}

    def online(x):
        # CutMix asks for the targets of one view twice (both source images); label it once
        if seen.get("x") is not x:
            seen.update(x=x, logits=ensemble(x))
        return seen["logits"]

    def target_fn(x, idx):
        idx = idx.to(device)
        if labels == "hard":
            return Targets(hard[idx])
        # online: the teachers label the very augmented view the student sees
        return Targets(hard[idx], stored[idx] if cfg.soft_labels == "stored" else online(x))

    loss = soft_loss(cfg.soft_loss) if labels == "soft" else hard_loss

    scores: dict[int, float] = {}  # the curve: every point on the same images
    curve_test = every_nth(test, cfg.curve_test_images) if cfg.eval_every and cfg.curve_test_images else test

    def on_epoch(epoch: int) -> None:
        if cfg.eval_every and epoch % cfg.eval_every == 0 and epoch != recipe.epochs:
            scores[epoch] = accuracy(model, curve_test, device, cfg.test_batch_size, cfg.image_size)
            model.train()

    fit(model, images, recipe, loss, target_fn, generator(seed, "student", protocol), device, on_epoch,
        desc=f"{cfg.arch} {protocol} seed {seed}", quiet=quiet, checkpoint=checkpoint, extra=scores)
    final = accuracy(model, test, device, cfg.test_batch_size, cfg.image_size)
    scores[recipe.epochs] = final if curve_test is test else accuracy(model, curve_test, device, cfg.test_batch_size,
                                                                      cfg.image_size)
    return {"protocol": protocol, "seed": seed, "final": final, "epochs": recipe.epochs, "micro_batch": recipe.micro_batch,
            "threads": torch.get_num_threads(), "best_epoch": max(scores.values()), "scores": {str(k): v for k, v in sorted(scores.items())}, "seconds": round(time.time() - start, 1)}


def cell_workers(cfg: StudentConfig, device, cells: int) -> int:
    """How many student cells train at once: student.workers (by default 2 where a CPU has 2
    threads or more), never more than the cells or the threads; one on a GPU or under torchrun,
    whose ranks already share each student."""
    if torch.device(device).type != "cpu" or distributed.active().world > 1:
        return 1
    threads = torch.get_num_threads()
    return max(1, min(cfg.workers if cfg.workers is not None else 2, cells, threads))


@dataclasses.dataclass(frozen=True)
class CellJob:
    """One student cell to train: its protocol and seed, and where its training state is kept."""

    protocol: str
    seed: int
    checkpoint: Path


def train_job(job: CellJob, ds: DistilledSet, test: ImageSet, cfg: StudentConfig, teachers: list[str] | None, device,
              quiet: bool, data_stats, mirror_safe: bool, ensemble: TeacherEnsemble | None = None) -> Cell:
    """train_student for one job; the teachers (paths) are loaded here unless `ensemble` is given."""
    if ensemble is None and teachers and protocols.labels(job.protocol) == "soft":
        ensemble = load_ensemble(teachers, device)
    return train_student(ds, test, cfg, job.protocol, job.seed, ensemble, device, quiet, job.checkpoint,
                         data_stats, mirror_safe)


@dataclasses.dataclass(frozen=True)
class CellGroup:
    """The cells of one set to train and what they share: the set, the test split, the student
    recipe, the teachers that label soft cells, and the normalisation of the field's protocols."""

    ds: DistilledSet
    test: ImageSet
    cfg: StudentConfig
    jobs: list[CellJob]
    teachers: list[str] | None = None
    data_stats: tuple[list[float], list[float]] | None = None
    mirror_safe: bool = True

    def shared(self) -> dict:
        return dict(ds=self.ds, test=self.test, cfg=self.cfg, teachers=self.teachers, data_stats=self.data_stats,
                    mirror_safe=self.mirror_safe)


def train_cells(groups: list[CellGroup], device, quiet: bool = False,
                share_freed: bool = True) -> Iterator[tuple[int, CellJob, Cell]]:
    """Train every group's jobs (train_student) and yield (group index, job, cell) as each ends:
    one after the other, or `cell_workers` at once, each in a process of its own (cell_worker.py)
    with an equal share of the threads; a cell's numbers then differ from a whole-machine run's by
    float rounding only. The workers take the jobs of all groups in order, so several sets' cells
    keep every worker busy; once none is left to start, those still training take the threads of
    those that ended (else the last of three cells on two workers trains on one core of two), unless
    `share_freed` is False: a cell's thread count then never changes, nor its rounding with it. The
    teachers label the soft cells."""
    jobs = [(i, job) for i, group in enumerate(groups) for job in group.jobs]
    workers = min(cell_workers(g.cfg, device, len(jobs)) for g in groups) if jobs else 1
    if workers == 1:
        for i, group in enumerate(groups):
            soft = group.teachers and any(protocols.labels(job.protocol) == "soft" for job in group.jobs)
            ensemble = load_ensemble(group.teachers, device) if soft else None  # once for the group's cells
            for job in group.jobs:
                yield i, job, train_job(job, **group.shared(), device=device, quiet=quiet, ensemble=ensemble)
        return
    total = torch.get_num_threads()
    threads = share = max(1, total // workers)
    # the package's own folder first: scripts that put src/ on sys.path reach it uninstalled
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    bar = progress(total=len(jobs), desc=f"{groups[0].cfg.arch} students, {workers} at once", unit="cell",
                   disable=quiet)
    running: dict[subprocess.Popen, tuple[int, CellJob, Path]] = {}
    with _sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="otdistill-cells-") as tmp:
        inputs = [Path(tmp) / f"inputs-{i}.pkl" for i in range(len(groups))]
        for path, group in zip(inputs, groups):
            if group.jobs:
                path.write_bytes(pickle.dumps({**group.shared(), "device": device, "quiet": True}))
        pending = list(jobs)
        try:
            while pending or running:
                while pending and len(running) < workers:
                    i, job = pending.pop(0)
                    out = Path(tmp) / f"{len(jobs) - len(pending)}.json"
                    with open(out.with_suffix(".log"), "w") as log_file:
                        argv = [str(inputs[i]), job.protocol, str(job.seed), str(job.checkpoint), str(out),
                                str(threads), str(os.getpid())]
                        proc = subprocess.Popen([sys.executable, "-m", "otdistill.cell_worker", *argv], env=env,
                                                stdout=log_file, stderr=subprocess.STDOUT)
                    running[proc] = (i, job, out)
                for proc in [p for p in running if p.poll() is not None]:
                    i, job, out = running.pop(proc)
                    yield i, job, _worker_cell(proc, out)
                    bar.update()
                if share_freed and not pending and running and total // len(running) > share:  # the last cells take the freed threads
                    share = total // len(running)
                    for _, _, out in running.values():
                        write_text(out.with_suffix(".threads"), str(share))
                time.sleep(0.2)
        finally:  # an error or an interrupt stops the other workers; their checkpoints keep the epochs done
            for proc in running:
                proc.terminate()
                proc.wait()
            bar.close()


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """A SIGTERM (a scheduler's, a session's end) raises SystemExit while the workers train, so that
    they are stopped and their inputs' temporary folder removed, as on Ctrl-C, instead of the
    folder (tens of MB a run) staying behind; only where the caller set no handler of its own."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _worker_cell(proc: subprocess.Popen, out: Path) -> Cell:
    """The cell a worker wrote (written atomically: whatever the worker did after), its UserError
    raised again, or its log's tail when it died first."""
    result = json.loads(out.read_text()) if out.exists() else {}
    if "error" in result:
        raise UserError(result["error"])
    if not result:
        tail = out.with_suffix(".log").read_text()[-3000:]
        raise RuntimeError(f"a student cell's worker process ended with code {proc.returncode}:\n{tail}")
    return result


def summarise(cells: list[Cell]) -> dict[str, ProtocolResult]:
    """Group per-seed cells by protocol: final-epoch mean +- std (population std of the seeds), the
    protocol's length and, where the test split was scored during training on every seed, the
    learning curve (mean over seeds per scored epoch; a curve, never used to pick an epoch)."""
    out = {}
    for protocol in dict.fromkeys(c["protocol"] for c in cells):
        rows = [c for c in cells if c["protocol"] == protocol]
        finals = [c["final"] for c in rows]
        bests = [c["best_epoch"] for c in rows]
        epochs = [e for e in rows[0]["scores"] if all(e in c["scores"] for c in rows)]
        out[protocol] = {
            "final_mean": statistics.fmean(finals), "final_std": statistics.pstdev(finals),
            "seeds": [c["seed"] for c in rows], "final": finals,
            "best_epoch_mean (test-selected, reference only)": statistics.fmean(bests),
            "epochs": rows[0].get("epochs"),
        }
        if len(epochs) > 1:
            out[protocol]["curve"] = {e: statistics.fmean(c["scores"][e] for c in rows) for e in epochs}
    return out
