"""End to end: `otdistill run` on the digits-tiny recipe, then the per-stage commands."""

import json

from conftest import TINY

from otdistill.cli import main


def test_run_writes_every_artifact(finished_run, capsys):
    out, _ = finished_run
    assert (out / "config.yaml").is_file()
    assert (out / "distilled" / "manifest.json").is_file() and (out / "distilled" / "labels.safetensors").is_file()
    result = json.loads((out / "distilled" / "eval.json").read_text())
    assert set(result["protocols"]) == {"soft", "hard", "dsa-e3"}  # conftest's run adds the field's protocol
    for r in result["protocols"].values():
        assert 0.0 <= r["final_mean"] <= 1.0 and r["seeds"] == [0]
    assert result["protocols"]["dsa-e3"]["epochs"] == 3 and len(result["protocols"]["soft"]["curve"]) == 3
    assert "final-epoch top-1" in (out / "summary.md").read_text()


def test_rerun_reuses_finished_stages(finished_run):
    out, args = finished_run
    stamp = {p: p.stat().st_mtime_ns for p in (out / "distilled").rglob("*.png")}
    cells = {p: p.stat().st_mtime_ns for p in (out / "distilled" / "eval").glob("*.json")}
    assert main(["--quiet", *args]) == 0
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "distilled").rglob("*.png")}
    assert cells == {p: p.stat().st_mtime_ns for p in (out / "distilled" / "eval").glob("*.json")}


def test_changed_config_refuses_to_mix_outputs(finished_run, capsys):
    out, args = finished_run
    assert main([*args, "--set", "sample.ipc=3"]) == 2
    assert "different config" in capsys.readouterr().err


def test_export_inspect_and_evaluate_commands(finished_run, tmp_path, capsys):
    out, _ = finished_run
    assert main(["export", str(out / "distilled"), "--format", "ddranking", "--out", str(tmp_path / "dd")]) == 0
    assert (tmp_path / "dd" / "soft_labels.pt").is_file()
    assert main(["inspect", str(out / "distilled")]) == 0
    text = capsys.readouterr().out
    assert "10 classes x IPC 2" in text and "teacher agrees" in text and "coverage" in text
    # evaluate alone, with the config recorded in the manifest, a different student and one protocol
    assert main(["--quiet", "evaluate", str(out / "distilled"), str(TINY), "--set", "student.arch=resnetap10",
                 "--set", "student.protocols=[hard]", "--set", "student.epochs=1",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["student"] == "resnetap10"


def test_select_random_real_baseline(trained, tmp_path):
    assert main(["--quiet", "select", str(TINY), "--out", str(tmp_path / "real"), "--set", "sample.ipc=3"]) == 0
    manifest = json.loads((tmp_path / "real" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "real-random" and manifest["ipc"] == 3


def test_user_errors_exit_2_with_one_message(tmp_path, capsys):
    assert main(["run", str(TINY), "--set", "sample.ipcc=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otdistill: error:") and "sample.ipc" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert main(["run", str(TINY), "--set", f"output={tmp_path}/o", "--set", "data.name=fashion-mnist",
                 "--set", f"data.root={tmp_path}", "--set", f"generator.path={tmp_path}/o/g",
                 "--set", f"teachers.0.path={tmp_path}/o/t"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_online_and_stored_soft_labels_agree_on_the_unaugmented_view(finished_run):
    import torch

    from otdistill.artifacts import read_distilled
    from otdistill.relabel import load_ensemble

    out, _ = finished_run
    ds = read_distilled(out / "distilled")
    online = load_ensemble(ds.manifest["teachers"])(ds.images.float() / 255)
    assert torch.allclose(online, ds.soft_logits, atol=1e-5)


def test_stored_soft_labels_protocol(finished_run, tmp_path):
    out, _ = finished_run
    assert main(["--quiet", "evaluate", str(out / "distilled"), str(TINY), "--set", "student.soft_labels=stored",
                 "--set", "student.protocols=[soft]", "--set", "student.epochs=1", "--set",
                 "student.soft_loss.sd=1.0", "--out", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["student_config"]["soft_labels"] == "stored" and "soft" in result["protocols"]


def test_adding_seeds_reuses_the_cells_already_trained(finished_run, tmp_path):
    out, _ = finished_run
    base = ["--quiet", "evaluate", str(out / "distilled"), str(TINY), "--set", "student.protocols=[hard]",
            "--set", "student.epochs=1", "--out", str(tmp_path / "e.json")]
    assert main([*base, "--set", "student.seeds=[0]"]) == 0
    cell = tmp_path / "e" / "convnet2-hard-seed0.json"
    stamp = cell.stat().st_mtime_ns
    assert main([*base, "--set", "student.seeds=[0,1]"]) == 0
    assert cell.stat().st_mtime_ns == stamp and (tmp_path / "e" / "convnet2-hard-seed1.json").is_file()
    assert json.loads((tmp_path / "e.json").read_text())["protocols"]["hard"]["seeds"] == [0, 1]


def test_other_ranks_print_warnings_only_marked_with_their_rank(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(TINY), "--set", "sample.ipcc=3"]) == 2
    assert capsys.readouterr().err.startswith("[rank 1] otdistill: error:")
