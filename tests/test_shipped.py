"""The checkpoints shipped for the embedded default load, the generator's images are
recognised by the shipped teacher as the class they were generated for, and the four LIA
teachers are four architectures that score what they record on real test images."""

import dataclasses
import json

import pytest
import torch
from conftest import ROOT

from otdistill.config import load_config
from otdistill.data.fashion_mnist import CLASS_NAMES
from otdistill.metrics import teacher_agreement
from otdistill.models.generator import load_generator
from otdistill.readiness import SAMPLES, grade_quality
from otdistill.sample import sample_class
from otdistill.teachers import load_teacher
from otdistill.train import accuracy

CFG = load_config(ROOT / "configs" / "fashion-mnist.yaml")


@pytest.fixture(scope="module", autouse=True)
def from_repo_root():
    import os

    old = os.getcwd()
    os.chdir(ROOT)  # the recipe's checkpoint paths are relative to the repository
    yield
    os.chdir(old)


def test_teacher_checkpoint_is_complete_and_accurate():
    teacher, info = load_teacher(CFG.teachers[0].path)
    assert info["class_names"] == CLASS_NAMES and info["arch"] == "convnet3"
    assert info["test_accuracy"] > 0.88
    assert info["command"].startswith("otdistill train-teacher")


def test_generated_images_are_recognised_as_their_class():
    model = load_generator(CFG.generator.path)
    assert model.info["class_names"] == CLASS_NAMES and "otdistill" in model.info["command"]
    assert "train-generator" in model.info["command"]
    teacher, _ = load_teacher(CFG.teachers[0].path)
    # the recipe's own sampler, 6 images per class
    cfg = dataclasses.replace(CFG.sample, ipc=6, batch_size=6)
    images = torch.cat([sample_class(model, c, cfg) for c in range(10)])
    agreement = teacher_agreement(teacher, images, torch.arange(10).repeat_interleave(6), "cpu")
    assert agreement >= 0.75, agreement  # docs/generator.md: about 85 % at CFG 1 on 2,000 samples


def test_the_shipped_generator_is_checked_good_with_the_recipes_sampler():
    """Its committed quality.json (remade by `otdistill train-generator configs/fashion-mnist.yaml`,
    about 3 minutes on 2 cores) was measured with the recipe's sampler and teacher, at the check's size."""
    quality = json.loads((ROOT / CFG.generator.path / "quality.json").read_text())
    assert (quality["samples"], quality["cfg_scale"], quality["steps"], quality["scheduler"], quality["teacher"]) == (
        SAMPLES, CFG.sample.cfg_scale, CFG.sample.steps, CFG.sample.scheduler, CFG.teachers[0].path)
    assert quality["verdict"] == "good" and quality["ready"]
    assert grade_quality(quality, 10) == ("good", [])  # today's thresholds agree with the stored verdict


@pytest.fixture(scope="module")
def every_5th_test_image():
    from otdistill.data import TensorImages, load_dataset

    test = load_dataset(CFG.data).test
    idx = torch.arange(0, len(test), 5)
    return TensorImages(test.get(idx), test.labels[idx])


def test_lia_teachers_are_four_architectures_that_score_what_they_record(every_5th_test_image):
    lia = load_config(ROOT / "configs" / "lia.yaml")
    archs = []
    for t in lia.teachers:
        teacher, info = load_teacher(t.path)
        assert info["arch"] == t.arch and info["class_names"] == CLASS_NAMES
        assert info["command"].startswith(("otdistill train-teacher configs/lia.yaml",  # made by the project's command
                                           "otdistill train-teacher configs/fashion-mnist.yaml"))
        # the recorded figure is on all 10k test images; every 5th of them lands within 2 points
        assert abs(accuracy(teacher, every_5th_test_image, "cpu") - info["test_accuracy"]) < 0.02
        assert info["test_accuracy"] > 0.78
        archs.append(info["arch"])
    assert len(set(archs)) == len(archs) >= 4


def test_every_shipped_teacher_scores_what_it_records(every_5th_test_image):
    """Teachers shipped ahead of the recipes that will use them (checkpoints README) too."""
    folders = sorted((ROOT / "checkpoints" / "fashion-mnist" / "teachers").iterdir())
    for folder in folders:
        teacher, info = load_teacher(folder)
        assert info["class_names"] == CLASS_NAMES and info["command"].startswith("otdistill train-teacher")
        assert abs(accuracy(teacher, every_5th_test_image, "cpu") - info["test_accuracy"]) < 0.02, folder
    assert len(folders) >= 4
