"""A first run tells the truth: junk is called junk, a generator not ready is not sampled from,
the real baseline rows stand beside ours, results never overwrite each other, global flags
work anywhere, logs off a terminal stay short."""

import dataclasses
import json
import logging
import shutil
import types

import pytest
import torch
from conftest import TINY, tiny_config

from otdistill import artifacts, progress
from otdistill.cli import build_parser, main
from otdistill.config import to_dict
from otdistill.context import RunContext
from otdistill.data import hold_out, load_dataset
from otdistill.errors import UserError
from otdistill.metrics import junk_warning
from otdistill.models.generator import load_generator
from otdistill.pipeline import ensure_generator, evaluate_stage, metrics_stage, relabel_stage, select_stage
from otdistill.readiness import NOT_READY_FD_RATIO, check_generator, require_ready
from otdistill.report import build, summary_text


def _cfg(trained, tmp_path, *overrides):
    return tiny_config(tmp_path, f"generator.path={trained.generator.path}",
                       f"teachers.0.path={trained.teachers[0].path}", "student.epochs=1", *overrides)


def _noise_set(root, data, cfg, ipc=3):
    g = torch.Generator().manual_seed(0)
    k = data.num_classes
    for c in range(k):
        noise = torch.randint(0, 256, (ipc, data.channels, data.image_size, data.image_size), generator=g,
                              dtype=torch.uint8)
        artifacts.write_class_images(root, artifacts.class_folder(c, data.class_ids[c], k), noise)
    artifacts.write_manifest(root, ipc=ipc, class_names=data.class_names, class_ids=data.class_ids,
                             channels=data.channels, image_size=data.image_size,
                             source={"kind": "generated", "generator": "noise"}, config=to_dict(cfg), seeds={})
    return root


def test_junk_is_called_junk_and_a_real_subset_is_not(trained, tmp_path, caplog):
    cfg = _cfg(trained, tmp_path, "sample.ipc=3")
    ctx = RunContext(cfg, quiet=True)
    sets = {"noise": _noise_set(tmp_path / "noise", ctx.data, cfg),
            "real": select_stage(ctx, "random", tmp_path / "real")}
    warned = {}
    for name, root in sets.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            relabel_stage(root, ctx)
            metrics_stage(root, ctx)
            result = evaluate_stage(root, ctx)
        manifest = json.loads((root / "manifest.json").read_text())
        text = summary_text(cfg.output, "digits", manifest, result, [], {})
        # the log line and the summary say it, and name the fix
        warned[name] = ("look like noise" in caplog.text, "WARNING" in text, "generator.diffusion.steps" in text)
    assert warned == {"noise": (True, True, True), "real": (False, False, False)}
    report = build(tmp_path).with_suffix(".md").read_text()
    assert report.count("**WARNING**") == 1 and "noise: the distilled images look like noise" in report


def test_low_coverage_is_called_noise_only_below_what_as_many_real_images_reach():
    def manifest(ipc, coverage):
        return {"source": {"kind": "generated"}, "num_classes": 10, "ipc": ipc,
                "teacher_agreement": {"overall": 0.9},
                "metrics": {"settings": {"per_class": 200, "k": 5}, "teacher_features": {"coverage": coverage}}}

    # one image per class covers about 5 of 200 held-out points: 0.007 there is a real-looking set
    assert junk_warning(manifest(1, 0.007)) is None
    assert "coverage of held-out real images is 0.000 (as many real images reach about 0.025)" in junk_warning(
        manifest(1, 0.0))
    assert junk_warning(manifest(10, 0.02)) is not None and junk_warning(manifest(10, 0.03)) is None
    assert junk_warning(manifest(50, 0.05)) is not None  # at IPC 50 real images reach every point's ball
    older = manifest(1, 0.0)
    del older["metrics"]["settings"]  # a set measured before the settings were stored: the defaults
    assert "reach about 0.025" in junk_warning(older)


def test_stored_metrics_are_measured_again_for_other_held_out_images_or_another_teacher(trained, tmp_path):
    cfg = _cfg(trained, tmp_path, "sample.ipc=3")
    ctx = RunContext(cfg, quiet=True)
    root = select_stage(ctx, "random", tmp_path / "real")
    first = metrics_stage(root, ctx)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert metrics_stage(root, ctx) == first and (root / "manifest.json").stat().st_mtime_ns == stamp  # reused
    validation = metrics_stage(root, RunContext(cfg, quiet=True, data=hold_out(ctx.data, 15, 0)))
    assert validation["scored_on"] != first["scored_on"]
    assert validation["teacher_features"]["ot_distance"] != first["teacher_features"]["ot_distance"]
    shutil.copytree(trained.teachers[0].path, tmp_path / "teacher-copy")
    other = metrics_stage(root, ctx.replace(teachers=[dataclasses.replace(cfg.teachers[0], path=str(tmp_path / "teacher-copy"))]))
    assert other["teacher"] == str(tmp_path / "teacher-copy")
    assert json.loads((root / "manifest.json").read_text())["metrics"] == other


def test_a_few_step_generator_is_not_ready_and_run_will_not_sample_from_it(trained, tmp_path, caplog):
    cfg = _cfg(trained, tmp_path, f"generator.path={tmp_path / 'g'}", "generator.diffusion.steps=3",
               "generator.allow_unready=false")
    with caplog.at_level(logging.INFO):
        ensure_generator(RunContext(cfg, quiet=True), extend=True)
    quality = json.loads((tmp_path / "g" / "quality.json").read_text())
    assert quality["samples"] == 500 and 0 <= quality["teacher_agreement"] <= 1 and 0 <= quality["coverage"] <= 1
    # 3 steps of training are noise: far from real, and said so before any sampling
    assert quality["fd_ratio"] > NOT_READY_FD_RATIO and quality["verdict"] == "not ready" and not quality["ready"]
    assert "generator check" in caplog.text and "is not ready" in caplog.text
    # `run` and `sample` stop before the first image, naming the fix and the key that goes on anyway
    args = ["run", str(TINY), "--set", f"output={tmp_path / 'run'}", "--set", f"generator.path={tmp_path / 'g'}",
            "--set", f"teachers.0.path={trained.teachers[0].path}", "--set", "student.epochs=1"]
    with caplog.at_level(logging.INFO):
        assert main(["--quiet", *args, "--set", "generator.allow_unready=false"]) == 2
    assert "is not ready" in caplog.text and "generator.diffusion.steps" in caplog.text
    assert "--set generator.allow_unready=true" in caplog.text and not list((tmp_path / "run").rglob("*.png"))
    caplog.clear()
    assert main(["--quiet", "sample", *args[1:], "--set", "generator.allow_unready=true"]) == 0
    assert "although it is not ready" in caplog.text and list((tmp_path / "run").rglob("*.png"))  # said, then drawn
    assert check_generator(tiny_config(tmp_path, "teachers.0.path=/nowhere"), load_generator(tmp_path / "g"),
                           load_dataset(cfg.data), "cpu") is None


def test_an_unchecked_generator_is_checked_before_sampling_unless_imported(trained, tmp_path, caplog):
    cfg = _cfg(trained, tmp_path, "generator.allow_unready=false")
    data = load_dataset(cfg.data)
    imported = types.SimpleNamespace(info={"imported": {"dit": "DiT-XL-2-256x256.pt"}})
    cfg.generator.path = str(tmp_path / "imported")
    with caplog.at_level(logging.INFO):
        require_ready(cfg, imported, data, "cpu")  # no quality.json, no check: used as it is
    assert "imported and unchecked" in caplog.text and not (tmp_path / "imported" / "quality.json").exists()
    shutil.copytree(trained.generator.path, tmp_path / "g")
    (tmp_path / "g" / "quality.json").unlink(missing_ok=True)  # trained before its teacher: never checked
    cfg.generator.path = str(tmp_path / "g")
    with pytest.raises(UserError, match="is not ready .*generator.allow_unready=true"):
        require_ready(cfg, load_generator(tmp_path / "g"), data, "cpu")
    assert json.loads((tmp_path / "g" / "quality.json").read_text())["verdict"] == "not ready"  # stored once


def test_run_summary_carries_a_row_and_a_difference_per_baseline(finished_run):
    out, _ = finished_run
    summary = (out / "summary.md").read_text()
    for name in ("random", "herding"):
        assert f"| {name} real (baseline) |" in summary and f"| distilled - {name} real |" in summary
        assert f"over {name} real: " in summary
        baseline = json.loads((out / "baselines" / name / "eval.json").read_text())
        ours = json.loads((out / "distilled" / "eval.json").read_text())
        assert baseline["student_config"] == ours["student_config"] and baseline["full_data"]["accuracy"] > 0
    assert "better than picking real images" in summary and "full data" in summary
    # a verdict per protocol (one seed here: no verdict), each protocol described with its length
    assert "soft untold" in summary and "dsa-e3 untold" in summary and "quick: short students" in summary
    assert "- dsa-e3: hard labels, SGD 0.01 step schedule, DSA augmentation, 3 epochs" in summary
    assert "random real, teacher_features: OT distance" in summary  # the baselines' metrics too
    report = (out / "report" / "report.md").read_text()
    assert "vs random real (IOR)" in report and "baselines/random" in report and "baselines/herding" in report


def test_two_sets_in_one_folder_keep_their_own_results(trained, tmp_path):
    cfg = _cfg(trained, tmp_path, "sample.ipc=2", "student.protocols=[hard]")
    ctx = RunContext(cfg, quiet=True)
    a = select_stage(ctx, "random", tmp_path / "sets" / "random")
    b = select_stage(ctx, "herding", tmp_path / "sets" / "herding")
    first = evaluate_stage(a, ctx)
    files = {p: p.read_bytes() for p in (tmp_path / "sets").rglob("*.json")}
    second = evaluate_stage(b, ctx)
    assert all(p.read_bytes() == content for p, content in files.items())  # nothing of a's was touched
    assert json.loads((a / "eval.json").read_text()) == first and json.loads((b / "eval.json").read_text()) == second
    assert first["distilled"] != second["distilled"] and (b / "eval").is_dir()


def test_global_options_before_or_after_the_command():
    parse = build_parser().parse_args
    assert parse(["--quiet", "run", str(TINY)]).quiet and parse(["run", str(TINY), "--quiet"]).quiet
    assert not parse(["run", str(TINY)]).quiet
    assert main(["config", str(TINY), "--quiet"]) == 0


def test_progress_off_a_terminal_is_a_few_plain_lines(capsys):
    bar = progress.progress(range(2000), desc="steps")
    for _ in bar:
        bar.set_postfix(loss=1.0)
    err = capsys.readouterr().err
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 3 and "2000/2000" in err.splitlines()[-1]
