"""Student protocols (protocols.py): the field's dc / dsa recipes as their source defines them,
the step schedule against an independent loop written from DC's evaluate_synset, the names a
config accepts, and the honest verdict of the run summary."""

import copy
import dataclasses
import logging

import pytest
import torch

from otdistill import protocols
from otdistill.config import StudentConfig, load_config
from otdistill.data import TensorImages
from otdistill.dsa import DSAugment
from otdistill.errors import UserError
from otdistill.evaluate import student_recipe
from otdistill.losses import cross_entropy
from otdistill.models.classifiers import build_classifier
from otdistill.report import verdict
from otdistill.train import Augment, fit

from conftest import TINY


def test_the_field_protocols_are_their_source_recipes():
    cfg = StudentConfig(epochs=80, batch_size=25)
    dc = student_recipe("dc", cfg, [0.3], [0.35], mirror_safe=True)
    assert (dc.epochs, dc.batch_size, dc.optimizer, dc.lr, dc.weight_decay) == (300, 256, "sgd_dc", 0.01, 5e-4)
    assert (dc.schedule, dc.step_epoch) == ("step", 152)  # x0.1 after epoch 300 // 2 + 1, counted from 0
    assert isinstance(dc.augment, Augment) and dc.augment.crop_scale_min == 1.0 and not dc.augment.flip
    dsa = student_recipe("dsa", cfg, [0.3], [0.35], mirror_safe=True)
    assert dsa.epochs == 1000 and isinstance(dsa.augment, DSAugment) and "flip" in dsa.augment.operations
    digits = student_recipe("dsa-e20", cfg, [0.3], [0.35], mirror_safe=False)
    assert digits.epochs == 20 and digits.step_epoch == 12 and "flip" not in digits.augment.operations
    own = student_recipe("soft", cfg, [0.3], [0.35], mirror_safe=True)
    assert (own.epochs, own.batch_size, own.optimizer, own.schedule) == (80, 25, "adamw", "cosine")
    assert protocols.labels("dsa") == "hard" and protocols.labels("soft") == "soft"


def test_the_field_protocols_read_none_of_the_student_keys_their_cells_key_leaves_out():
    cfg = StudentConfig()
    others = {"epochs": 7, "batch_size": 3, "optimizer": "sgd", "lr": 0.5, "weight_decay": 0.1, "crop_scale_min": 0.2,
              "flip": False, "cutmix": 0.5, "ema_decay": 0.9}
    assert set(others) == set(protocols.FIELD_FIXES)  # a key added there needs its check here
    for name in ("dc", "dsa", "dsa-e20"):
        assert student_recipe(name, dataclasses.replace(cfg, **others), [0.3], [0.35], True) == \
            student_recipe(name, cfg, [0.3], [0.35], True)
    assert student_recipe("dc", dataclasses.replace(cfg, image_size=24), [0.3], [0.35], True) != \
        student_recipe("dc", cfg, [0.3], [0.35], True)


def test_names_and_descriptions_say_what_was_run():
    student = dataclasses.asdict(StudentConfig(epochs=80))
    assert "quick: short students" in protocols.describe("soft", student)
    assert "quick" not in protocols.describe("soft", {**student, "epochs": 300})
    assert "1000 epochs" in protocols.describe("dsa", student) and "not comparable" not in protocols.describe("dsa", student)
    assert "not comparable to published rows" in protocols.describe("dsa-e20", student)
    assert protocols.problem("dsa-e20") is None and protocols.problem("dc") is None
    assert "must be one of soft, hard, dc, dsa" in protocols.problem("dsb")
    assert protocols.problem("dsa-e0") and protocols.problem("soft-e20")


def test_a_config_names_a_wrong_protocol_once_and_clearly():
    with pytest.raises(UserError, match=r"student.protocols.1: must be one of soft, hard, dc, dsa .*got 'dca'"):
        load_config(TINY, ["student.protocols=[soft,dca]"])
    assert load_config(TINY, ["student.protocols=[soft,dsa-e3]"]).student.protocols == ["soft", "dsa-e3"]


def test_step_schedule_matches_dc_evaluate_synset_written_independently():
    """DC: SGD(lr, momentum 0.9, wd 5e-4); after epoch E // 2 + 1 (from 0) a NEW optimiser at lr
    x 0.1. One full batch per epoch, so the batch order cannot matter (per-image norms)."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(8) % 2
    model = build_classifier("convnet2", 2, 1, 8)
    reference = copy.deepcopy(model)
    epochs = 6
    recipe = student_recipe("dc-e6", StudentConfig(), [0.5], [0.5], mirror_safe=True)
    fit(model, TensorImages(images, labels), recipe, cross_entropy, lambda x, idx: labels[idx],
        torch.Generator().manual_seed(0), "cpu", quiet=True)

    x = images.float() / 255
    lr = 0.01
    opt = torch.optim.SGD(reference.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    reference.train()
    for ep in range(epochs):
        loss = torch.nn.functional.cross_entropy(reference(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ep == epochs // 2 + 1:
            lr *= 0.1
            opt = torch.optim.SGD(reference.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_lr_factor_per_schedule():
    recipe = student_recipe("dc-e10", StudentConfig(), [0.5], [0.5], mirror_safe=True)
    factor = recipe.lr_factor(steps_per_epoch=2)
    assert [factor(s) for s in (0, 13, 14, 19)] == [1.0, 1.0, 0.1, 0.1]  # 7 epochs x 2 steps at the full rate
    cosine = dataclasses.replace(recipe, schedule="cosine").lr_factor(steps_per_epoch=2)
    assert cosine(0) == 1.0 and abs(cosine(10) - 0.5) < 1e-9 and abs(cosine(20)) < 1e-9


def _result(mean, std, seeds=3):
    return {"final_mean": mean, "final_std": std, "seeds": list(range(seeds))}


def test_verdict_is_level_inside_the_larger_seed_std():
    assert verdict(_result(0.8661, 0.0027), _result(0.8655, 0.0008)).startswith("level (+0.06 points")
    assert verdict(_result(0.7551, 0.0020), _result(0.7735, 0.0008)).startswith("behind (-1.84 points")
    assert verdict(_result(0.7544, 0.0031), _result(0.7184, 0.0050)).startswith("ahead (+3.60 points")
    assert "more seeds would tell" in verdict(_result(0.80, 0.01), _result(0.795, 0.002))
    assert verdict(_result(0.80, 0.0, 1), _result(0.79, 0.0, 1)).startswith("untold")


def test_a_schedule_asking_for_more_teachers_says_so_once(trained, caplog):
    from otdistill import relabel
    from otdistill.context import RunContext

    cfg = dataclasses.replace(trained, relabel=dataclasses.replace(trained.relabel, schedule=[[1, 1], [2, 3]]))
    relabel._TOLD.clear()
    with caplog.at_level(logging.WARNING, logger="otdistill.relabel"):
        for _ in range(2):
            chosen, how = relabel.choose_teachers(RunContext(cfg, quiet=True), torch.zeros(1), ipc=2)
    assert len(chosen) == 1 and how["count"] == 1
    told = [r for r in caplog.records if "asks for 3 teachers at IPC 2 but 1 is configured" in r.getMessage()]
    assert len(told) == 1


def test_compile_wraps_the_training_passes_only(monkeypatch):
    """student.compile hands the training forward to torch.compile (recorded here, not run: the
    speed is measured in benchmarks/student_speed.py); the returned model is the plain one."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net: compiled.append(net) or net)
    images = TensorImages(torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), torch.arange(8) % 2)
    for flag in (False, True):
        recipe = student_recipe("dc-e2", StudentConfig(compile=flag), [0.5], [0.5], mirror_safe=True)
        model = build_classifier("convnet2", 2, 1, 8)
        fit(model, images, recipe, cross_entropy, lambda x, idx: images.labels[idx], torch.Generator().manual_seed(0),
            "cpu", quiet=True)
    assert len(compiled) == 1 and compiled[0] is model


def test_a_curve_on_fewer_test_images_leaves_the_final_epoch_on_all(monkeypatch):
    """student.curve_test_images: the curve's epochs (the last one too, so that the curve is one
    set of images) on a spread subset; the reported final accuracy on the whole test split."""
    from otdistill import evaluate
    from otdistill.artifacts import DistilledSet

    scored = []
    real_accuracy = evaluate.accuracy
    monkeypatch.setattr(evaluate, "accuracy", lambda model, images, *a: scored.append(len(images))
                        or real_accuracy(model, images, *a))
    g = torch.Generator().manual_seed(0)
    ds = DistilledSet.in_memory(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=g),
                                torch.tensor([0, 1, 0, 1]), num_classes=2)
    test = TensorImages(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(40) % 2)
    cfg = StudentConfig(arch="convnet2", epochs=3, batch_size=4, eval_every=1, curve_test_images=7)
    cell = evaluate.train_student(ds, test, cfg, "hard", 0, None, "cpu", quiet=True)
    assert scored == [7, 7, 40, 7]  # epochs 1 and 2, the final on all, the final on the curve's images
    assert list(cell["scores"]) == ["1", "2", "3"]
    assert all(abs(7 * s - round(7 * s)) < 1e-6 for s in cell["scores"].values())
    assert abs(40 * cell["final"] - round(40 * cell["final"])) < 1e-6
    scored.clear()
    evaluate.train_student(ds, test, dataclasses.replace(cfg, curve_test_images=0), "hard", 0, None, "cpu", quiet=True)
    assert scored == [40, 40, 40]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="sharing threads between workers needs two")
def test_cells_trained_two_at_once_are_one_thread_cells_trained_in_turn(tmp_path):
    """student.workers: cells in spawned processes, a thread each, give exactly the cells that one
    thread gives trained one after the other (only the threads differ from a whole-machine run),
    also when the workers take the cells of two sets from one queue."""
    from otdistill.artifacts import DistilledSet
    from otdistill.evaluate import CellGroup, CellJob, cell_workers, train_cells

    g = torch.Generator().manual_seed(0)
    sets = [DistilledSet.in_memory(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=g),
                                   torch.tensor([0, 1, 0, 1, 0, 1]), num_classes=2) for _ in range(2)]
    test = TensorImages(torch.randint(0, 256, (400, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(400) % 2)
    cfg = StudentConfig(arch="convnet2", epochs=3, batch_size=4, eval_every=1, workers=2)
    jobs = [[CellJob(p, seed, tmp_path / f"{k}-{p}-{seed}.pt") for p in ("hard", "dc-e2") for seed in seeds]
            for k, seeds in enumerate([(0, 1), (0,)])]  # the second set's cells queue behind the first's
    assert (cell_workers(cfg, "cpu", 4), cell_workers(cfg, "cpu", 1), cell_workers(cfg, "meta", 4)) == (2, 1, 1)
    assert cell_workers(dataclasses.replace(cfg, workers=None), "cpu", 4) == 2  # the default on a CPU

    def cells(student):
        groups = [CellGroup(ds, test, student, j) for ds, j in zip(sets, jobs)]
        return {(i, job): cell for i, job, cell in train_cells(groups, "cpu", quiet=True, share_freed=False)}

    together = cells(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_turn = cells(dataclasses.replace(cfg, workers=1))
    finally:
        torch.set_num_threads(threads)
    assert set(together) == {(i, j) for i in (0, 1) for j in jobs[i]} and all(c["threads"] == 1 for c in together.values())
    same = ("protocol", "seed", "final", "scores", "epochs")
    assert all({k: together[j][k] for k in same} == {k: in_turn[j][k] for k in same} for j in together)
    # different students, not one copied; so each worker trained the cell of the set its job came with
    assert len({str(c["scores"]) for c in together.values()}) == len(together)
    # a worker's mistake reaches the caller as the same one message
    with pytest.raises(UserError, match="the soft protocol needs teachers"):
        list(train_cells([CellGroup(sets[0], test, cfg, [CellJob("soft", seed, tmp_path / f"s{seed}.pt") for seed in (0, 1)])],
                         "cpu", quiet=True))


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="sharing threads between workers needs two")
def test_the_last_cell_takes_the_threads_of_the_workers_that_ended(tmp_path):
    """Once no cell is left to start, a worker still training gets the threads of those that ended:
    a short and a long cell on two workers, the long one ends with every thread."""
    from otdistill.artifacts import DistilledSet
    from otdistill.evaluate import CellGroup, CellJob, train_cells

    g = torch.Generator().manual_seed(0)
    ds = DistilledSet.in_memory(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=g),
                                torch.tensor([0, 1, 0, 1, 0, 1]), num_classes=2)
    test = TensorImages(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(40) % 2)
    short, long = (StudentConfig(arch="convnet2", epochs=e, batch_size=6, workers=2) for e in (1, 400))
    groups = [CellGroup(ds, test, cfg, [CellJob("hard", 0, tmp_path / f"{cfg.epochs}.pt")]) for cfg in (short, long)]
    threads = {cell["epochs"]: cell["threads"] for _, _, cell in train_cells(groups, "cpu", quiet=True)}
    assert threads == {1: torch.get_num_threads() // 2, 400: torch.get_num_threads()}
