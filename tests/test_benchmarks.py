"""Benchmark scripts' own logic: the GPU check's code path at toy shapes on the CPU (it must
work when a GPU session finally runs it), and the bench harness's epoch specs and result merging."""

import dataclasses
import hashlib
import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY

from otdistill import pipeline
from otdistill.config import load_config
from otdistill.context import RunContext
from otdistill.data import SubsetImages, TensorImages, hold_out, load_dataset


def _script(name: str):
    if str(ROOT / "benchmarks") not in sys.path:  # the scripts import bench_rows beside them, as when run
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_epoch_specs_most_specific_wins():
    bench = _script("distill_bench")
    spec = ["80", "50=16", "resnet18=20", "resnet18/50=4"]
    assert [bench.epochs_for(spec, s, i) for s, i in [("convnet3", 10), ("convnet3", 50), ("resnet18", 10),
                                                       ("resnet18", 50), ("convnet3", None)]] == [80, 16, 20, 4, 80]
    with pytest.raises(SystemExit, match="add a plain number"):
        bench.epochs_for(["50=16"], "convnet3", 10)


def test_bench_results_keep_rows_of_other_runs(tmp_path):
    bench = _script("distill_bench")
    result = tmp_path / "bench.json"
    old = [{"method": "plain", "ipc": 10, "student": "convnet3", "labels": "soft", "acc_mean": 0.7},
           {"method": "plain", "ipc": 10, "student": "resnet18", "labels": "soft", "acc_mean": 0.6}]
    result.write_text(json.dumps(old))
    new = [{"method": "plain", "ipc": 10, "student": "resnet18", "labels": "soft", "acc_mean": 0.65}]
    assert bench.merged(result, new) == [old[0], new[0]]
    # a row over other draws of the set stands beside the one-set row (whose learning curve the docs read)
    over_sets = [{**old[0], "acc_mean": 0.72, "sample_seeds": [0, 1, 2]}]
    assert bench.merged(result, over_sets) == [*old, *over_sets]
    result.write_text(json.dumps([*old, *over_sets]))
    again = [{**over_sets[0], "acc_mean": 0.73}]
    assert bench.merged(result, again) == [*old, *again]


def test_a_run_cut_short_keeps_the_rows_it_finished(tmp_path):
    """distill_bench publishes after every row: the file then holds the earlier runs' rows and this
    run's finished ones, with IOR against the random row of the same cell, and its table."""
    bench = _script("distill_bench")
    result = tmp_path / "bench.json"
    row = {"ipc": 10, "student": "convnet3", "labels": "soft", "epochs": 300, "acc_std": 0.0, "seeds": [0],
           "gen_seconds": 1.0}
    result.write_text(json.dumps([{**row, "method": "random", "acc_mean": 0.8}, {**row, "method": "plain", "acc_mean": 0.7}]))
    bench.publish(result, [{**row, "method": "plain", "acc_mean": 0.75}])
    bench.publish(result, [{**row, "method": "plain", "acc_mean": 0.75}, {**row, "method": "otg", "acc_mean": 0.85}])
    got = {r["method"]: (r["acc_mean"], round(r["ior"], 6)) for r in json.loads(result.read_text())}
    assert got == {"random": (0.8, 0.0), "plain": (0.75, -0.05), "otg": (0.85, 0.05)}
    assert "| otg | 10 | convnet3 | soft |" in result.with_suffix(".md").read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left beside it


def test_bench_sets_are_scored_in_one_pool_and_done_when_all_their_students_are(monkeypatch, tmp_path):
    bench = _script("distill_bench")
    sets = [{"evaluations": {"convnet3": ("a",), "resnet18": ("b",)},
             "students": {"convnet3": ("cfg", 300, None), "resnet18": ("cfg", 300, None)}},
            {"evaluations": {"convnet3": ("c",)}, "students": {"convnet3": ("cfg", 300, None)}}]
    asked = []
    # the pool ends the second set's student first, then the first set's two
    monkeypatch.setattr(bench.pipeline, "evaluate_sets", lambda items, elsewhere: asked.extend(items) or
                        ((i, {"protocols": {"soft": items[i][0]}}) for i in (2, 1, 0)))
    assert list(bench.score_sets(sets, tmp_path)) == [1, 0] and asked == [("a",), ("b",), ("c",)]
    assert sets[0]["students"] == {"convnet3": ("cfg", 300, {"soft": "a"}), "resnet18": ("cfg", 300, {"soft": "b"})}
    assert sets[1]["students"] == {"convnet3": ("cfg", 300, {"soft": "c"})}


def test_the_packed_feature_ot_row_keeps_one_real_target_per_image(tmp_path):
    """Packed 2x2, the herding pool the recipe aims one per image at IPC 10 and 50 grows 4x; IPC 1's
    random pool of the class stays as the recipe has it."""
    bench = _script("distill_bench")
    args = SimpleNamespace(protocols=["soft"], steps=None, overrides=[])
    train = TensorImages(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4))
    for ipc in (1, 10, 50):
        unpacked, packed = (bench.row_config(m, ipc, args, tmp_path, train).sample for m in ("fot_lia", "fot_lia_mf2"))
        pool = unpacked.guidance.feature_ot
        assert packed.formation == 2 and packed.guidance.feature_ot.pool_select == pool.pool_select
        assert packed.guidance.feature_ot.pool_size == (4 * ipc if pool.pool_select == "herding" else pool.pool_size)
    assert unpacked.guidance.feature_ot.pool_select == "herding"  # IPC 50: the rule did apply


def test_bench_row_folders_are_named_for_what_made_their_images(tmp_path, monkeypatch):
    bench = _script("distill_bench")
    args = SimpleNamespace(protocols=["soft", "hard"], steps=None, overrides=[])
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    train, held_out = TensorImages(images, torch.arange(4)), TensorImages(images[:2], torch.arange(2))

    def folders(split=train):
        return {m: bench.row_config(m, 10, args, tmp_path, split).output for m in ("random", "herding", "plain")}

    before = folders()
    assert len(set(before.values())) == 3 and all(f.startswith(str(tmp_path / "rows")) for f in before.values())
    assert not set(folders(held_out).values()) & set(before.values())  # a validation run never shares a folder
    for method in ("random", "herding"):  # herding reads the first teacher's features, random no model
        how, recipe, extra = bench.ROWS[method]
        monkeypatch.setitem(bench.ROWS, method, (how, recipe, [*extra, "teachers.0.path=elsewhere/teacher"]))
    after = folders()
    assert after["random"] == before["random"] and after["herding"] != before["herding"]
    how, recipe, extra = bench.ROWS["plain"]
    # a set drawn with another sampling seed (--sample-seeds) is another set; None is the recipe's seed
    assert bench.row_config("plain", 10, args, tmp_path, train, None).output == before["plain"]
    for method in ("random", "plain"):
        seeded = bench.row_config(method, 10, args, tmp_path, train, 7)
        assert seeded.sample.seed == 7 and seeded.output != after[method]
    monkeypatch.setitem(bench.ROWS, "plain", (how, recipe, [*extra, "sample.seed=7"]))
    assert folders()["plain"] != before["plain"]
    # herding_lia: herding's very subset (the same first teacher's features), labelled by LIA's teachers
    monkeypatch.undo()
    rows = _script("bench_rows")
    plain_herding, lia_herding = (bench.row_config(m, 10, args, tmp_path, train) for m in ("herding", "herding_lia"))
    assert len(lia_herding.teachers) > len(plain_herding.teachers) == 1
    assert rows.made_key(lia_herding, "herding_lia", train) == rows.made_key(plain_herding, "herding", train)


def test_bench_rows_pool_several_sets_over_sets_and_student_seeds():
    bench = _script("distill_bench")
    student = SimpleNamespace(soft_loss=SimpleNamespace(kl=1.0, ce=0.0, mse=0.0, sd=0.0))

    def scored(finals, seconds, distance):
        protocols = {"soft": {"final": finals, "final_mean": sum(finals) / len(finals), "seeds": [0, 1]}}
        return {"manifest": {"source": {"sample_seconds": seconds, "generator": "gen"}, "teachers": ["t"],
                             "teacher_agreement": {"overall": seconds / 100}},
                "metrics": {"ot_distance": distance, "coverage": 0.5},
                "students": {"convnet3": (SimpleNamespace(student=student), 80, protocols)}}

    sets = [scored([0.5, 0.7], 10.0, 14.0), scored([0.6, 0.8], 20.0, 16.0)]
    (row,) = bench.set_rows("fot", 10, sets, [0, 1], 1000)
    assert row["acc"] == [0.5, 0.7, 0.6, 0.8] and row["seeds"] == [0, 1]
    assert row["acc_mean"] == pytest.approx(0.65) and row["acc_std"] == pytest.approx(0.1118034)
    assert row["set_means"] == pytest.approx([0.6, 0.7]) and row["sample_seeds"] == [0, 1]
    assert (row["gen_seconds"], row["ot_distance"], row["coverage"]) == (15.0, 15.0, 0.5)
    assert row["teacher_agreement"] == pytest.approx(0.15)
    assert "| fot | 10 | convnet3 | soft | kl1 | 80 | 0,1 x 2 sets | 65.00 +- 11.18 |" in bench.render([row])
    (one,) = bench.set_rows("fot", 10, sets[:1], None, 1000)  # one set: the row as before, no set keys
    assert one["acc_mean"] == pytest.approx(0.6) and "set_means" not in one and "x 1 sets" not in bench.render([one])
    assert "curve" not in row
    for s, curve in zip(sets, ({"5": 0.3, "10": 0.5}, {"5": 0.5, "10": 0.7})):
        s["students"]["convnet3"][2]["soft"]["curve"] = curve
    student.curve_test_images = 500
    (curved,) = bench.set_rows("fot", 10, sets, [0, 1], 1000)  # the curve: mean over sets, on its test images
    assert curved["curve"] == pytest.approx({"5": 0.4, "10": 0.6}) and curved["curve_test_images"] == 500
    assert "on 500 test images" in bench.render([curved])


def test_the_table_prints_published_methods_under_their_own_protocols_only(tmp_path):
    bench = _script("distill_bench")
    row = {"method": "random", "ipc": 10, "student": "convnet3", "labels": "dsa", "epochs": 1000, "acc_mean": 0.74,
           "acc_std": 0.0, "seeds": [0], "gen_seconds": 0.0}
    table = bench.render([row])
    assert "| DSA | 10 | dsa | 84.6 +- 0.3 |" in table and "| DC | 10 | dc | 82.3 +- 0.4 |" in table
    assert "| IDC | 10 | IDC's" in table and "| DSA | 1 |" not in table
    # the published coresets stand in the calibration file, beside ours with their gaps
    assert "| random | 10 | dc |" not in table and "calibration-fashion-mnist.md" in table
    assert "Published rows" not in bench.render([{**row, "labels": "soft", "epochs": 300}])
    model = tmp_path / "teacher"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"arch": "convnet3", "test_accuracy": 0.9346, "seed": 0, "epochs": 20,
                                                  "recipe": {"optimizer": "adamw"}}))
    full = bench.trained_full_data_row(model)
    assert f"full_data (convnet3): {model}, trained on the whole training split with its own recipe (adamw, 20" \
        in bench.render([row, full])
    assert (full["method"], full["student"], full["acc_mean"], full["epochs"]) == ("full_data", "convnet3", 0.9346, 20)
    assert bench.with_ior_hlr([row, full])[0]["hlr"] == pytest.approx(0.9346 - 0.74)


def test_rows_sampling_alike_share_one_set_and_relabel_it_cleanly(trained, digits, tmp_path, caplog):
    bench = _script("distill_bench")
    cfgs = [dataclasses.replace(trained, output=str(tmp_path / "rows" / row)) for row in ("otg", "otdistill")]
    sets = [bench.build_set(row, RunContext(cfg, quiet=True, data=digits), tmp_path)
            for row, cfg in zip(("otg", "otdistill"), cfgs)]
    assert len(list((tmp_path / "sets").iterdir())) == 1  # sampled once
    assert [p.name for p in sorted(sets[0].glob("images/*/*"))] == [p.name for p in sorted(sets[1].glob("images/*/*"))]
    caplog.clear()  # sampling's own INFO lines are captured too when an earlier test set the logger to INFO
    with caplog.at_level(logging.WARNING):
        manifest = pipeline.relabel_stage(sets[0], RunContext(cfgs[0], quiet=True, data=digits))
    assert manifest["teachers"] == [trained.teachers[0].path]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_hard_label_only_run_still_measures_teacher_agreement_without_retraining_a_cell(trained, digits, tmp_path,
                                                                                      monkeypatch):
    bench = _script("distill_bench")
    monkeypatch.setattr(bench, "row_config", lambda method, ipc, args, work, train, seed: dataclasses.replace(
        trained, output=str(work / "rows" / method)))
    args = SimpleNamespace(protocols=["dsa"], metrics=False, students=["convnet2"], epochs=["1"], seeds=[0],
                           test_subset=None)
    bare = bench.prepare_set("random", 2, None, args, tmp_path, digits, digits)
    assert "teacher_agreement" not in bare["manifest"] and not bare["metrics"]
    args.metrics = True
    measured = bench.prepare_set("random", 2, None, args, tmp_path, digits, digits)
    assert 0 <= measured["manifest"]["teacher_agreement"]["overall"] <= 1 and "coverage" in measured["metrics"]
    student = measured["students"]["convnet2"][0].student  # the labels just stored move no dsa cell
    assert pipeline.cell_key(student, measured["manifest"], "dsa") == pipeline.cell_key(student, bare["manifest"], "dsa")


def test_full_data_cells_are_reused_only_for_the_same_recipe(digits, tmp_path, monkeypatch):
    bench = _script("distill_bench")
    trainings = []
    resumes = []
    monkeypatch.setattr(bench, "train_student",
                        lambda *a, **k: trainings.append(a[2]) or resumes.append(k["checkpoint"]) or {"final": 0.5})
    cfg = load_config(TINY)
    small = dataclasses.replace(digits, train=SubsetImages(digits.train, range(50)))
    assert bench.full_data_cells(cfg, small, ["convnet2"], [0, 1], 1, tmp_path) == {"convnet2": [0.5, 0.5]}
    bench.full_data_cells(cfg, small, ["convnet2"], [0], 1, tmp_path)
    assert len(trainings) == 2  # seed 0 came from its cell
    # each training keeps its own epoch checkpoint beside its cell (ResNet-18: ~22 min an epoch on 2 CPU cores)
    assert len(set(resumes)) == 2 and all(r.parent == tmp_path / "full_data" and r.parent.is_dir() for r in resumes)
    bench.full_data_cells(cfg, small, ["convnet2"], [0], 2, tmp_path)
    bench.full_data_cells(dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, lr=0.1)), small,
                          ["convnet2"], [0], 1, tmp_path)
    assert len(trainings) == 4 and trainings[-1].lr == 0.1 and trainings[-2].epochs == 2

def test_tune_candidates_name_their_weights():
    tune = _script("tune_otm")
    assert tune.weights_of("ce1+mse0.1+sd10") == {"kl": 0.0, "ce": 1.0, "mse": 0.1, "sd": 10.0}
    assert tune.weights_of("kl1") == {"kl": 1.0, "ce": 0.0, "mse": 0.0, "sd": 0.0}
    for bad in ("ce1+foo2", "kl", "sd1e"):
        with pytest.raises(SystemExit, match="is not a term"):
            tune.weights_of(bad)


def test_gpu_check_runs_every_recipe_at_toy_shapes():
    gpu_check = _script("gpu_check")
    cpu = torch.device("cpu")
    model = gpu_check.build(True, cpu)
    assert model.denoiser.config.out_channels == 8 and model.info["image_size"] == 16

    def autocast():
        return torch.autocast("cpu", enabled=False)

    r = gpu_check.time_sampling(model, "igd+ot", 1, True, cpu, autocast)
    assert r["images_per_s"] > 0 and 0 < r["ot_share"] < 1
    r = gpu_check.time_sampling(model, "ot", 1, True, cpu, autocast, per_pass=2)
    assert r["images_per_s"] > 0 and 0 < r["ot_share"] < 1


def test_bench_table_lists_rows_best_first_with_their_metrics():
    bench = _script("distill_bench")
    rows = [{"method": m, "ipc": 10, "student": "convnet3", "labels": "soft", "epochs": 80, "acc_mean": a,
             "acc_std": 0.01, "seeds": [0, 1, 2], "gen_seconds": g, "ot_distance": d, "coverage": c,
             "teacher_agreement": t, "soft_loss": {"kl": 0.0, "ce": 1.0, "mse": 0.1, "sd": 1.0}}
            for m, a, g, d, c, t in [("plain", 0.70, 25.4, 18.0, 0.04, 0.82),
                                     ("otdistill", 0.75, 150.0, 17.5, 0.05, 0.9)]]
    rows.append({"method": "full_data", "ipc": None, "student": "convnet3", "labels": "hard", "epochs": 3,
                 "acc_mean": 0.9, "acc_std": 0.0, "seeds": [0], "gen_seconds": None})
    table = bench.render(rows).splitlines()
    body = [line for line in table if line.startswith("| ") and not line.startswith("| method")]
    assert body == ["| full_data | all | convnet3 | hard | ce | 3 | 0 | 90.00 +- 0.00 | - | - | - | - | - | - |",
                    "| otdistill | 10 | convnet3 | soft | ce1+mse0.1+sd1 | 80 | 0,1,2 | 75.00 +- 1.00 | - | - | 150 | 17.50 | 0.050 | "
                    "0.90 |",
                    "| plain | 10 | convnet3 | soft | ce1+mse0.1+sd1 | 80 | 0,1,2 | 70.00 +- 1.00 | - | - | 25 | 18.00 | 0.040 | "
                    "0.82 |"]


def test_bench_table_names_the_generator_and_teachers_its_rows_were_made_with():
    bench = _script("distill_bench")
    rows = [{"method": "plain", "ipc": 10, "student": "convnet3", "labels": "soft", "epochs": 80, "acc_mean": 0.7,
             "acc_std": 0.0, "seeds": [0], "gen_seconds": 1.0, "generator": "gen/a", "teacher_paths": ["t/1", "t/2"]},
            {"method": "random", "ipc": 10, "student": "convnet3", "labels": "soft", "epochs": 80, "acc_mean": 0.7,
             "acc_std": 0.0, "seeds": [0], "gen_seconds": 0.0, "generator": None, "teacher_paths": ["t/1"]}]
    table = bench.render(rows)
    assert "sampled from: gen/a (" in table and "Soft labels by: t/1 | t/1, t/2." in table
    assert "sampled from" not in bench.render([{**r, "generator": None} for r in rows])
    assert "| plain (10 real/class) | 10 |" in bench.render([{**rows[0], "real_per_class": 10}])
    assert "| random (packed 2x2) | 10 |" in bench.render([{**rows[1], "formation": 2}])
    assert "| plain (20 real parts/class) (packed 2x2) | 10 |" in \
        bench.render([{**rows[0], "real_per_class": 20, "formation": 2}])
    assert "| random | 10 |" in bench.render([{**rows[1], "formation": 1}])


def test_bench_rows_carry_their_gain_over_random_and_gap_to_full_data():
    bench = _script("distill_bench")
    rows = [{"method": m, "ipc": 10, "student": "convnet3", "labels": labels, "acc_mean": a}
            for m, labels, a in [("random", "soft", 0.80), ("otdistill", "soft", 0.82), ("random", "hard", 0.70),
                                 ("plain", "hard", 0.68)]]
    rows += [{"method": "full_data", "ipc": None, "student": "convnet3", "labels": "hard", "acc_mean": 0.91},
             {"method": "plain", "ipc": 10, "student": "resnet18", "labels": "hard", "acc_mean": 0.6}]
    got = {(r["method"], r["student"], r["labels"]): (r["ior"], r["hlr"]) for r in bench.with_ior_hlr(rows)}
    approx = {k: tuple(None if v is None else round(v, 6) for v in pair) for k, pair in got.items()}
    assert approx == {("random", "convnet3", "soft"): (0.0, None), ("otdistill", "convnet3", "soft"): (0.02, None),
                      ("random", "convnet3", "hard"): (0.0, 0.21), ("plain", "convnet3", "hard"): (-0.02, 0.23),
                      ("full_data", "convnet3", "hard"): (None, None), ("plain", "resnet18", "hard"): (None, None)}
    # against the random row over the same sets, else over the most sets of the cell
    one_set = {"ipc": 1, "student": "convnet3", "labels": "soft"}
    rows = [{**one_set, "method": "random", "acc_mean": 0.50}, {**one_set, "method": "fot", "acc_mean": 0.72},
            {**one_set, "method": "random", "acc_mean": 0.58, "sample_seeds": [0, 1, 2]},
            {**one_set, "method": "fot", "acc_mean": 0.73, "sample_seeds": [0, 1, 2]},
            {**one_set, "method": "fot_mf2", "acc_mean": 0.74, "sample_seeds": [0, 1, 2, 3, 4]}]
    assert [round(r["ior"], 6) for r in bench.with_ior_hlr(rows)] == [0.0, 0.22, 0.0, 0.15, 0.16]
    assert [round(r["ior"], 6) for r in bench.with_ior_hlr(rows[2:] + rows[:2])] == [0.0, 0.15, 0.16, 0.0, 0.22]


def test_generator_quality_rows(trained, tmp_path):
    """The generator benchmark on digits-tiny: the two real references and one generator at two
    CFG scales, every key of the result rows, the validation split kept out of the references."""
    bench = _script("generator_quality")
    result = tmp_path / "gq.json"
    args = ["--config", str(TINY), "--set", f"teachers.0.path={trained.teachers[0].path}",
            "--generators", f"tiny={trained.generator.path}", "--cfg", "1", "2", "--per-class", "12",
            "--val-per-class", "15", "--seeds", "0", "--work", str(tmp_path / "work"), "--result", str(result),
            "--shipped", "tiny"]
    bench.main(args)
    rows = json.loads(result.read_text())
    assert [(r["generator"], r["cfg_scale"]) for r in rows] == [("random_real", None), ("random_real_recon", None),
                                                                ("tiny", 1.0), ("tiny", 2.0)]
    keys = {"generator", "cfg_scale", "split", "fd_teacher", "precision", "recall", "density", "coverage",
            "teacher_agreement", "acc_soft_mean", "acc_soft_std", "acc_hard_mean", "acc_hard_std", "seeds",
            "train_cpu_hours", "shipped"}
    assert all(keys <= r.keys() and r["split"] == "validation" for r in rows)
    assert [r["shipped"] for r in rows] == [False, False, True, True]
    assert rows[0]["fd_teacher"] < rows[2]["fd_teacher"]  # real images are closer to real ones than noise-like samples
    bench.main(args)  # a rerun reads every cached sample and cell: the same rows
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert timeless(json.loads(result.read_text())) == timeless(rows)


def test_guidance_sweep_scores_on_the_validation_split(trained, tmp_path):
    """tune_otg on digits-tiny: two settings, every key of the result rows, the students
    scored on images held out of the training split (never the test split)."""
    tune = _script("tune_otg")
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        tune.main(["--settings", "ot.weight"])
    with pytest.raises(SystemExit, match="no baseline 'herd'"):
        tune.main(["--settings", "real:herd"])
    assert tune.overrides_of("feature_ot.weight=1+sample.cfg_scale=1.5") == [
        "sample.guidance.feature_ot.weight=1", "sample.cfg_scale=1.5"]  # whole sample.* keys pass as they are
    assert tune.overrides_of("real:herding+sample.formation=2") == ["sample.formation=2"]  # a packed real row
    with pytest.raises(SystemExit, match="whole sample.. keys only"):
        tune.overrides_of("real:herding+ot.weight=1")  # guidance means nothing to a selection
    result = tmp_path / "otg.json"
    args = ["--recipe", str(TINY), "--set", f"teachers.0.path={trained.teachers[0].path}",
            "--set", f"generator.path={trained.generator.path}", "--set", "student.protocols=[hard]",
            "--settings", "recipe", "ot.weight=1+ot.pool_size=5+window=[0,5]", "real:random", "--ipc", "2", "--seeds", "0",
            "--per-class", "15", "--work", str(tmp_path / "work"), "--result", str(result)]
    tune.main(args)
    rows = json.loads(result.read_text())
    assert [(r["setting"], r["labels"]) for r in rows] == [("recipe", "hard"), ("ot.weight=1+ot.pool_size=5+window=[0,5]",
                                                                                 "hard"), ("real:random", "hard")]
    keys = {"setting", "split", "acc_mean", "acc_std", "seeds", "ot_distance", "coverage", "cfg_scale", "guidance",
            "teacher_sha256"}
    assert all(keys <= r.keys() and r["split"] == "validation" for r in rows)
    assert all(r["epochs"] == load_config(TINY).student.epochs for r in rows)  # the protocol's length, in every row
    work = tmp_path / "work"
    guided = json.loads(next(work.glob("ot.weight=1_ot.pool_size=5_window=_0_5_-*/distilled/manifest.json")).read_text())
    assert guided["source"]["guidance"] == ["ot"] and guided["config"]["sample"]["guidance"]["ot"]["weight"] == 1.0
    assert rows[1]["guidance"]["ot"]["weight"] == 1.0 and rows[1]["guidance"]["window"] == [0, 5]  # as sampled
    real = json.loads(next(work.glob("real_random-*/distilled/manifest.json")).read_text())
    assert real["source"]["kind"] == "real-random"  # the reference row: real images, the same students
    cells = json.loads(next(work.glob("recipe-*/distilled/eval.json")).read_text())["cells"]
    validation = hold_out(load_dataset(load_config(TINY).data), 15, 0)
    assert cells[0]["scored_on"] == validation.test.content_id()
    # the same setting name on a changed recipe samples into its own folder
    tune.main([*args[:args.index("--settings")], "--set", "sample.seed=1", "--settings", "recipe",
               *args[args.index("--ipc"):]])
    assert len(list(work.glob("recipe-*"))) == 2
    # one row over several sampled sets: every set scored, the accuracy over sets x student seeds
    tune.main([*args[:args.index("--settings")], "--settings", "recipe", "--sample-seeds", "0", "2",
               *args[args.index("--ipc"):]])
    row = next(r for r in json.loads(result.read_text()) if r.get("sample_seeds") == [0, 2])
    assert len(row["acc"]) == 2 and row["set_means"] == row["acc"] and row["acc_mean"] == pytest.approx(sum(row["acc"]) / 2)
    assert len(list(work.glob("recipe-*"))) == 3  # seed 0's set is the recipe's own; seed 2 is new
    # --held-out-teachers: the recipe's teacher trained again, once, on the images the split keeps
    # a second teacher that LIA's schedule leaves out at this IPC is neither trained nor kept
    pair = [dataclasses.asdict(trained.teachers[0]), {"path": str(tmp_path / "spare"), "arch": "convnet3"}]
    held = [*args[:args.index("--settings")], "--set", f"teachers={json.dumps(pair)}", "--set", "relabel.schedule=[[1,1],[50,2]]",
            "--held-out-teachers", "--settings", "recipe", *args[args.index("--ipc"):]]
    tune.main(held)
    held_work = work / "held-out-teachers-15-seed0"
    assert [p.name for p in (held_work / "teachers").iterdir()] == [f"0-{Path(trained.teachers[0].path).name}"]
    teacher = held_work / "teachers" / f"0-{Path(trained.teachers[0].path).name}"
    mean = json.loads((teacher / "model.json").read_text())["mean"]
    pixel_mean = lambda images: (images.get(torch.arange(len(images))).double() / 255).mean().item()  # noqa: E731
    assert mean == pytest.approx([pixel_mean(validation.train)], abs=1e-5)  # its training images: the kept ones
    assert mean != pytest.approx([pixel_mean(load_dataset(load_config(TINY).data).train)], abs=1e-5)
    row = json.loads(result.read_text())[-1]
    assert [t["path"] for t in json.loads(row["base_overrides"][-1].removeprefix("teachers="))] == [str(teacher)]
    digest = hashlib.sha256((teacher / "model.safetensors").read_bytes()).hexdigest()[:16]
    assert row["teacher_sha256"] == {str(teacher): digest}  # which copy labelled
    labelled = json.loads(next(held_work.glob("recipe-*/distilled/manifest.json")).read_text())
    assert labelled["teachers"] == [str(teacher)] and labelled["metrics"]["teacher"] == str(teacher)
    assert len(list(work.glob("recipe-*"))) == 3  # the sets labelled by the shipped teacher stay as they were
    stamp = (teacher / "model.safetensors").stat().st_mtime_ns
    tune.main(held)  # a rerun finds the teacher
    assert (teacher / "model.safetensors").stat().st_mtime_ns == stamp
    # a recipe guiding with IGD's influence gets a surrogate trajectory trained on the kept images too
    igd = load_config(TINY, [f"teachers.0.path={trained.teachers[0].path}", "sample.guidance.influence.weight=0.3",
                             "sample.guidance.surrogate.train_subset=0", "sample.guidance.surrogate.epochs=1",
                             "sample.guidance.surrogate.checkpoints=[0,1]"])
    assert not any("surrogate" in o for o in tune.held_out_teachers(dataclasses.replace(
        igd, sample=load_config(TINY).sample), validation, held_work))
    override = tune.held_out_teachers(igd, validation, held_work)[-1]
    key, path = override.split("=", 1)
    info = json.loads((Path(path) / "surrogate.json").read_text())
    assert key == "sample.guidance.influence.surrogate" and Path(path).is_relative_to(held_work)
    assert info["train_subset"] == len(validation.train) and info["mean"] == pytest.approx([pixel_mean(validation.train)], abs=1e-5)


def test_imagenet_rehearsal_runs_the_recipe_at_toy_shapes(tmp_path):
    """imagenet_rehearsal.py --size tiny: the full-size rehearsal's code path (stand-in files,
    import-generator, import-teacher, the imagenet-1k recipe's stages, FLOP counts, the H200 projection)."""
    rehearsal = _script("imagenet_rehearsal")
    out = tmp_path / "imagenet-rehearsal.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy shapes: a second thread only waits on a busy machine (100x slower here)
    try:
        result = rehearsal.rehearse("tiny", tmp_path / "work", out)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == result
    stages = result["stages"]
    assert list(stages) == ["write_inputs", "import_generator", "import_teacher", "train_surrogate", "sample",
                            "relabel", "evaluate", "count_flops"]
    assert all(s["seconds"] > 0 and s["peak_rss_mb"] >= s["rss_at_start_mb"] > 0 for s in stages.values())
    assert result["images"] == 4  # 2 classes x IPC 2
    flops = result["flops"]
    assert flops["guidance_terms"] == ["influence", "deviation", "ot"]
    assert 0 < flops["plain_step"] < flops["guided_step"]
    assert min(flops["decode"], flops["encode"], flops["student_train_step"]) > 0
    assert flops["real_gradient"] == pytest.approx(4 * flops["surrogate_train_step"])  # the recipe's 4 checkpoints
    assert set(flops["teacher_forward"]) == {"tv:resnet18", "tv:mobilenet_v2", "tv:efficientnet_b0", "tv:resnet50"}
    projection = result["projection"]
    assert projection["status"].startswith("PROJECTION")
    assert (projection["steps"], projection["guided_steps"]) == (50, 16)  # the recipe's, not the rehearsal's
    ten, fifty = projection["ipc"]["10"], projection["ipc"]["50"]
    assert 0 < ten["sampling_h200_hours"] < fifty["sampling_h200_hours"] and len(fifty["teachers"]) == 4
    parts = ten["sampling_h200_hours"] + 3 * ten["student_h200_hours_per_seed"] + projection["surrogate_h200_hours"]
    assert ten["total_h200_hours"] == pytest.approx(parts, rel=0.02)  # each part rounded to 3 digits


def test_split_leak_tells_copies_of_the_validation_images_from_fresh_draws():
    """split_leak.distances: images near the validation images of their class lie nearer them than
    to the test images (ratio below 1); fresh draws of the same distribution do not."""
    leak = _script("split_leak")
    g = torch.Generator().manual_seed(0)
    draw = lambda n: torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)  # noqa: E731
    held, test = draw(40), draw(40)
    splits = {name: {0: (x, x.flatten(1).float())} for name, x in (("validation", held), ("test", test))}
    embed = lambda x: x.flatten(1).float()  # noqa: E731
    copies = (held[:10].int() + torch.randint(-3, 4, held[:10].shape, generator=g)).clamp(0, 255).to(torch.uint8)
    for images, leaking in ((copies, True), (draw(10), False)):
        near = leak.distances(images, torch.zeros(10, dtype=torch.long), splits, embed)
        ratio = near["validation"]["features"] / near["test"]["features"]
        assert (ratio < 0.5) if leaking else (0.8 < ratio < 1.25)


def test_calibration_rows_stand_beside_dc_papers_coreset_rows_marked_unverified():
    calibrate = _script("calibrate")
    ours = {"method": "random", "ipc": 10, "labels": "dsa", "epochs": 1000, "student": "convnet3", "acc_mean": 0.7385,
            "acc_std": 0.0017, "seeds": [0, 1, 2], "acc": [0.74, 0.7385, 0.737]}
    row = calibrate.calibration_row(ours, 32)
    assert row["published"] == {"mean": 73.8, "std": 0.7, "verified": False} and row["gap"] == pytest.approx(0.05)
    assert "73.8 +- 0.7 (unverified) | +0.05 |" in calibrate.render([row])
    assert calibrate.calibration_row({**ours, "method": "kmeans"}, 32)["published"] is None


def test_the_table_tells_per_cell_whether_a_generated_row_beats_the_real_ones():
    bench = _script("distill_bench")

    def row(method, labels, acc):
        return {"method": method, "ipc": 1, "student": "convnet3", "labels": labels, "epochs": 300, "acc": acc,
                "acc_mean": sum(acc) / len(acc), "acc_std": float(torch.tensor(acc).std(unbiased=False)),
                "seeds": [0, 1, 2], "gen_seconds": 0.0}
    rows = [row("random", "soft", [0.50, 0.51, 0.52]), row("herding_lia", "soft", [0.70, 0.71, 0.72]),
            row("fot_lia", "soft", [0.75, 0.75, 0.76]), row("plain", "soft", [0.60, 0.60, 0.60]),
            row("herding", "dsa", [0.66, 0.67, 0.68]), row("fot", "dsa", [0.665, 0.675, 0.67]),
            row("kmeans", "hard", [0.5, 0.5, 0.5])]  # no generated row in that cell: no verdict
    table = bench.render(rows)
    assert "| 1 | convnet3 | soft | 300 | fot_lia 75.33 | herding_lia 71.00 | ahead (+4.33 points" in table
    assert "| 1 | convnet3 | dsa | 300 | fot 67.00 | herding 67.00 | level (+0.00 points" in table
    assert "\n| 1 | convnet3 | hard |" not in table
    # a row over several draws of its set says so
    over_sets = [{**row("herding", "soft", [0.72, 0.73, 0.74]), "sample_seeds": [0, 1, 2]}]
    assert "| 1 | convnet3 | soft | 300 | fot_lia 75.33 | herding 73.00 x 3 sets | ahead (+2.33 points" in \
        bench.render(rows + over_sets)
    # a method measured on one set and over three counts by its three: a lucky draw decides no cell
    lucky = row("herding", "dsa", [0.70, 0.70, 0.70])
    over_sets = [{**row("herding", "dsa", [0.65, 0.66, 0.67]), "sample_seeds": [0, 1, 2]}]
    assert "| 1 | convnet3 | dsa | 300 | fot 67.00 | herding 66.00 x 3 sets | ahead (+1.00 points" in \
        bench.render([r for r in rows if r["method"] != "herding"] + [lucky, *over_sets])
