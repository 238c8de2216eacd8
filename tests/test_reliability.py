"""Reliability: bad input, full or unwritable disks, kills at random points, damaged
artifacts, determinism and where a run may write."""

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from PIL import Image
from test_data import make_folder

from otdistill import evaluate, io, pipeline
from otdistill.cli import main
from otdistill.config import DataConfig, load_config
from otdistill.context import RunContext
from otdistill.data import SubsetImages, TensorImages, load_dataset
from otdistill.errors import UserError
from otdistill.evaluate import train_student
from otdistill.losses import cross_entropy
from otdistill.models.classifiers import build_classifier
from otdistill.pipeline import evaluate_stage
from otdistill.train import Augment, TrainRecipe, fit


def test_bad_image_files_skip_or_stop_by_config(tmp_path):
    make_folder(tmp_path, ["a", "b"], per_class=4)
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    Image.new("RGB", (20, 12)).save(tmp_path / "cut.png")
    (tmp_path / "b" / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:40])  # truncated
    cfg = dict(name="imagefolder", root=str(tmp_path), image_size=8, test_fraction=0.25)
    with pytest.warns(UserWarning, match="empty.png"):
        data = load_dataset(DataConfig(**cfg))
    assert len(data.train) + len(data.test) == 8
    with pytest.raises(UserError, match=r"2 unreadable image file\(s\).*data.bad_files=skip"):
        load_dataset(DataConfig(**cfg, bad_files="stop"))
    # a file that vanishes after the scan is named, not a traceback
    victim = data.train.paths[0]
    victim.unlink()
    with pytest.raises(UserError, match=f"image {victim} cannot be read"):
        data.train.get([0])


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "no space left"), (errno.EACCES, "cannot write"),
                                           (errno.EROFS, "cannot write")])
def test_full_or_unwritable_disk_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch, code, message):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io.os, "replace", refuse)
    with pytest.raises(UserError, match=message):
        io.write_json(tmp_path / "out" / "x.json", {"a": 1})
    assert list((tmp_path / "out").iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "a" / f".x.json.{io._host()}-{dead.pid}.abc123.tmp"
    live = tmp_path / f".y.json.{io._host()}-{os.getpid()}.def456.tmp"
    other_host = tmp_path / f".z.json.otherhost-{dead.pid}.ghi789.tmp"
    for d in (stale, live, other_host):
        d.mkdir(parents=True)
    assert io.remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists() and other_host.exists()


def _tiny_fit(checkpoint, on_epoch=None):
    torch.manual_seed(0)
    labels = torch.arange(24) % 3
    images = TensorImages((torch.arange(24 * 64) % 251).to(torch.uint8).view(24, 1, 8, 8), labels)
    model = build_classifier("convnet2-w16", 3, 1, 8)
    extra = {}
    fit(model, images, TrainRecipe(5, 8, lr=3e-3, augment=Augment(0.5, True), cutmix=0.5, ema_decay=0.9),
        cross_entropy, lambda x, idx: labels[idx], torch.Generator().manual_seed(1), "cpu", on_epoch,
        quiet=True, checkpoint=checkpoint, extra=extra)
    return model.state_dict(), extra


def test_killed_training_resumes_from_its_epoch_checkpoint_with_the_same_result(tmp_path):
    reference, _ = _tiny_fit(None)
    ckpt = tmp_path / "state.pt"

    def die_at_3(epoch, extra=None):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(ckpt, die_at_3)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed, _ = _tiny_fit(ckpt)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert not ckpt.exists()
    ckpt.write_bytes(b"damaged")  # an unreadable checkpoint restarts the training, same result
    again, _ = _tiny_fit(ckpt)
    assert all(torch.equal(reference[k], again[k]) for k in reference)


def _result(out: Path) -> tuple[dict, dict, bytes]:
    manifest = json.loads((out / "distilled" / "manifest.json").read_text())
    finals = {p: r["final"] for p, r in json.loads((out / "distilled" / "eval.json").read_text())["protocols"].items()}
    return manifest["files"], finals, (out / "distilled" / "labels.safetensors").read_bytes()


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".resume.pt")]


def _entries(folder: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(folder))  # os.walk skips entries that vanish


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_result(finished_run, tmp_path):
    """Fault injection: `otdistill run` is SIGKILLed at random moments, then run again to the
    end; the set, its labels and the accuracies equal those of the uninterrupted run. The moments
    are drawn in the run's progress (entries on disk), not in seconds, so that a fast machine
    cannot finish before the first kill."""
    reference, args = finished_run
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "otdistill.cli", "--quiet", *args, "--set", f"output={out}"]
    # the reference ran in this process: the same thread count, since it can change the last bit of a logit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    rng = random.Random(0)
    kills = 0
    for at in sorted(rng.sample(range(1, _entries(reference) * 3 // 4), 3)):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        while proc.poll() is None and _entries(out) < at:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3  # each run is stopped before it reaches its share of the entries
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert _result(out) == _result(reference)
    assert _leftovers(out) == []


def test_a_cell_worker_ends_when_its_caller_is_killed():
    """A student cell's worker process outlives a SIGKILLed caller by its imports and a poll: left running,
    it would write the cell's checkpoint under the rerun that resumes it."""
    child = ("import sys, time; from otdistill.cell_worker import exit_with_parent; "
             "exit_with_parent(int(sys.argv[1]), 0.05); time.sleep(120)")
    caller = ("import os, subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())]); print(p.pid, flush=True); "
              "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", caller], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    assert _alive(pid)
    proc.send_signal(signal.SIGKILL)  # at once: the worker may still be importing
    proc.wait()
    deadline = time.time() + 40  # its imports first: 16 s measured beside two training students
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_a_sigterm_stops_the_cell_workers_and_removes_their_inputs(tmp_path):
    """SIGTERM to a run training cells in workers (a scheduler's, a session's end) stops the workers
    and leaves no temporary folder of pickled inputs behind, as Ctrl-C does."""
    script = ("import sys, torch; from pathlib import Path\n"
              "from otdistill.artifacts import DistilledSet\n"
              "from otdistill.config import StudentConfig\n"
              "from otdistill.data import TensorImages\n"
              "from otdistill.evaluate import CellGroup, CellJob, train_cells\n"
              "ds = DistilledSet.in_memory(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), num_classes=2)\n"
              "test = TensorImages(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.arange(10) % 2)\n"
              "cfg = StudentConfig(arch='convnet2', epochs=100000, batch_size=4, workers=2)\n"
              "jobs = [CellJob('hard', s, Path(sys.argv[1]) / f'{s}.pt') for s in (0, 1)]\n"
              "list(train_cells([CellGroup(ds, test, cfg, jobs)], 'cpu', quiet=True))\n")
    temp, cells = tmp_path / "tmp", tmp_path / "cells"
    temp.mkdir()
    cells.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", script, str(cells)], env={**os.environ, "TMPDIR": str(temp)})
    deadline = time.time() + 120
    while len(list(cells.glob("*.pt"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # both workers past their first epoch
    assert proc.poll() is None and len(list(cells.glob("*.pt"))) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(temp.iterdir()) == []
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(temp) in _read(p)]  # no worker left


def _read(path: Path) -> str:
    """A /proc file's text, empty once its process has gone."""
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as ended)."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_damaged_artifacts_are_redone_on_rerun(finished_run, tmp_path):
    reference, args = finished_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    pngs = sorted((out / "distilled" / "images").rglob("*.png"))
    pngs[0].write_bytes(b"not a png")
    pngs[-1].unlink()
    (out / "distilled" / "labels.safetensors").write_bytes(b"\0" * 10)
    next((out / "distilled" / "eval").glob("*.json")).write_text("{truncated")
    assert main(["--quiet", *args, "--set", f"output={out}"]) == 0
    files, finals, labels = _result(out)
    ref_files, ref_finals, ref_labels = _result(reference)
    assert files == ref_files and labels == ref_labels and finals == ref_finals
    assert "is damaged" in (out / "otdistill.log").read_text()


def test_same_seed_gives_byte_identical_images_and_labels(finished_run, tmp_path):
    reference, args = finished_run
    out = tmp_path / "again"
    assert main(["--quiet", *args, "--set", f"output={out}", "--set", "student.protocols=[hard]",
                 "--set", "student.epochs=1"]) == 0
    ref_files, _, ref_labels = _result(reference)
    files, _, labels = _result(out)
    assert files == ref_files and labels == ref_labels


def test_a_run_never_writes_models_outside_its_folder(trained, tmp_path):
    outside = tmp_path / "elsewhere" / "teacher"
    assert main(["--quiet", "run", str(TINY), "--set", f"output={tmp_path / 'run'}",
                 "--set", f"generator.path={trained.generator.path}", "--set", f"teachers.0.path={outside}"]) == 2
    assert not outside.parent.exists()


def test_cell_names_cannot_escape_the_eval_folder(finished_run, tmp_path):
    reference, _ = finished_run
    with pytest.raises(UserError, match="student.arch: unknown classifier"):  # a recipe cannot even say it
        load_config(TINY, ["student.arch=../../escape"])
    cfg = load_config(TINY, ["student.epochs=1", "student.protocols=[hard]"])
    cfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, arch="../../escape"))  # nor the API
    with pytest.raises(UserError, match="unknown classifier"):
        evaluate_stage(reference / "distilled", RunContext(cfg, quiet=True), tmp_path / "e.json")
    assert not (tmp_path.parent / "escape-hard-seed0.json").exists()



def test_a_cached_student_cell_is_reused_only_on_the_split_it_was_scored_on(finished_run, tmp_path, monkeypatch):
    reference, _ = finished_run
    cfg = load_config(TINY, ["student.epochs=1", "student.protocols=[hard]", "student.seeds=[0]"])
    ctx = RunContext(cfg, quiet=True)
    trainings = []
    monkeypatch.setattr(evaluate, "train_student", lambda *a, **k: trainings.append(a[1]) or train_student(*a, **k))
    out = tmp_path / "e.json"
    first = evaluate_stage(reference / "distilled", ctx, out)
    assert evaluate_stage(reference / "distilled", ctx, out) == first
    assert len(trainings) == 1
    # same recipe and set, other test images (a validation split, a subset): scored again
    half = dataclasses.replace(ctx.data, test=SubsetImages(ctx.data.test, range(0, len(ctx.data.test), 2)))
    again = evaluate_stage(reference / "distilled", RunContext(cfg, quiet=True, data=half), out)
    assert len(trainings) == 2 and trainings[-1] is half.test
    assert again["cells"][0]["scored_on"] == half.test.content_id() != first["cells"][0]["scored_on"]


def test_sets_scored_in_one_pool_get_the_cells_each_gets_alone(finished_run, tmp_path, monkeypatch):
    """pipeline.evaluate_sets: two sets' cells train in one pool of two workers (3 seeds each); each
    set's evaluation is the one evaluating it alone gives, and its cells are cached for a rerun."""
    reference, _ = finished_run
    cfg = load_config(TINY, ["student.epochs=1", "student.protocols=[hard]", "student.seeds=[0,1,2]", "student.workers=2"])
    ctx = RunContext(cfg, quiet=True)
    sets = [reference / "distilled", reference / "baselines" / "random"]
    together = dict(pipeline.evaluate_sets([(s, ctx, tmp_path / "pool" / f"{i}.json") for i, s in enumerate(sets)]))
    alone = [evaluate_stage(s, ctx, tmp_path / "alone" / f"{i}.json") for i, s in enumerate(sets)]
    finals = [[c["final"] for c in e["cells"]] for e in (together[0], together[1], *alone)]
    assert [together[0]["distilled"], together[1]["distilled"]] == [str(s) for s in sets]
    assert finals[:2] == finals[2:] and finals[0] != finals[1]
    monkeypatch.setattr(pipeline, "train_cells", lambda groups, *a: iter(()) if not any(g.jobs for g in groups)
                        else pytest.fail("a cached cell was trained again"))
    assert dict(pipeline.evaluate_sets([(s, ctx, tmp_path / "pool" / f"{i}.json") for i, s in enumerate(sets)])) == together


def test_a_cell_two_sets_share_trains_once_and_a_finished_one_is_taken_from_elsewhere(finished_run, tmp_path,
                                                                                    monkeypatch):
    """Two folders holding the same images (e.g. rows that differ only in their teachers) train
    each hard-label cell once between them; a third copy takes the finished cells from the
    folders `elsewhere` names, trains nothing and keeps its own copy; other images still train."""
    reference, _ = finished_run
    cfg = load_config(TINY, ["student.epochs=1", "student.protocols=[hard]", "student.seeds=[0,1]"])
    ctx = RunContext(cfg, quiet=True)
    copies = [tmp_path / f"copy{i}" for i in range(3)]
    for copy in copies:
        shutil.copytree(reference / "distilled", copy)
    trainings = []
    monkeypatch.setattr(evaluate, "train_student", lambda *a, **k: trainings.append(a[4]) or train_student(*a, **k))
    pair = dict(pipeline.evaluate_sets([(c, ctx, tmp_path / "eval" / f"{i}.json") for i, c in enumerate(copies[:2])]))
    assert sorted(trainings) == [0, 1]
    assert [c["final"] for c in pair[0]["cells"]] == [c["final"] for c in pair[1]["cells"]]
    assert len(list((tmp_path / "eval" / "1").glob("*-hard-seed1.json"))) == 1
    third = dict(pipeline.evaluate_sets([(copies[2], ctx, tmp_path / "third.json"),
                                         (reference / "baselines" / "random", ctx, tmp_path / "random.json")],
                                        elsewhere=[tmp_path / "eval" / "0"]))
    assert sorted(trainings) == [0, 0, 1, 1]  # only the random set's two cells
    assert third[0]["cells"] == pair[0]["cells"] and len(list((tmp_path / "third").glob("*-hard-seed0.json"))) == 1


def test_new_soft_label_settings_retrain_only_the_soft_label_students(finished_run, tmp_path, monkeypatch):
    reference, _ = finished_run
    recipe = ["student.epochs=1", "student.protocols=[hard,soft]", "student.seeds=[0]"]
    trainings = []
    monkeypatch.setattr(evaluate, "train_student", lambda *a, **k: trainings.append(a[3]) or train_student(*a, **k))
    out = tmp_path / "e.json"
    evaluate_stage(reference / "distilled", RunContext(load_config(TINY, recipe), quiet=True), out)
    assert trainings == ["hard", "soft"]
    other_loss = load_config(TINY, [*recipe, "student.soft_loss.mse=1.0"])
    evaluate_stage(reference / "distilled", RunContext(other_loss, quiet=True), out)
    assert trainings == ["hard", "soft", "soft"]
    # other teachers relabel the set: new logits and teacher list, same images and hard labels
    manifest = json.loads((reference / "distilled" / "manifest.json").read_text())
    relabelled = {**manifest, "teachers": ["elsewhere/teacher"],
                  "files": {**manifest["files"], "labels.safetensors": "0" * 64}}
    student = other_loss.student
    assert pipeline.cell_key(student, relabelled, "hard") == pipeline.cell_key(student, manifest, "hard")
    assert pipeline.cell_key(student, relabelled, "soft") != pipeline.cell_key(student, manifest, "soft")
    moved = {**manifest, "files": {f"images/009-x/{i}.png": d for i, d in enumerate(manifest["files"].values())}}
    assert pipeline.cell_key(student, moved, "hard") != pipeline.cell_key(student, manifest, "hard")
    # dc / dsa fix their own recipe: the student section's length, optimiser or batch retrain none of their cells
    other_recipe = dataclasses.replace(student, epochs=7, lr=0.5, batch_size=3, optimizer="sgd", flip=False)
    assert pipeline.cell_key(other_recipe, manifest, "dsa") == pipeline.cell_key(student, manifest, "dsa")
    assert pipeline.cell_key(other_recipe, manifest, "hard") != pipeline.cell_key(student, manifest, "hard")
    for applies in ({"arch": "convnet3"}, {"eval_every": 5}, {"image_size": 32}):  # what dsa does read
        assert pipeline.cell_key(dataclasses.replace(student, **applies), manifest, "dsa") != \
            pipeline.cell_key(student, manifest, "dsa")


def test_a_class_smaller_than_the_ipc_stops_before_writing(trained, tmp_path, capsys):
    assert main(["select", str(TINY), "--set", "sample.ipc=1000", "--out", str(tmp_path / "real")]) == 2
    assert "fewer than sample.ipc=1000; lower the IPC" in capsys.readouterr().err
    assert not list((tmp_path / "real").glob("images/*"))
