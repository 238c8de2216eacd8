import itertools

import pytest
from conftest import ROOT, TINY

from otdistill.config import Config, dump_config, fingerprint, from_dict, load_config
from otdistill.errors import UserError


def test_every_recipe_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), Config), path


def test_overrides_reach_nested_keys_and_list_items():
    cfg = load_config(TINY, ["sample.ipc=7", "student.seeds=[3, 4]", "teachers.0.epochs=9", "data.root=/x"])
    assert cfg.sample.ipc == 7
    assert cfg.student.seeds == [3, 4]
    assert cfg.teachers[0].epochs == 9
    assert cfg.data.root == "/x"


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(UserError, match="did you mean 'sample.ipc'"):
        load_config(TINY, ["sample.ipcs=3"])
    with pytest.raises(UserError, match="did you mean 'student'"):
        from_dict({"studnet": {}})
    with pytest.raises(UserError, match="did you mean 'generator.dit.num_layers'"):
        from_dict({"generator": {"dit": {"num_layer": 2}}})


def test_wrong_types_are_rejected_with_the_key():
    with pytest.raises(UserError, match="sample.ipc' must be an integer"):
        load_config(TINY, ["sample.ipc=ten"])
    with pytest.raises(UserError, match="student.flip' must be true or false"):
        from_dict({"student": {"flip": "yes"}})
    with pytest.raises(UserError, match="index out of range"):
        load_config(TINY, ["teachers.5.epochs=1"])
    with pytest.raises(UserError, match="key.path=value"):
        load_config(TINY, ["sample.ipc"])


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(bad)


def test_dump_round_trips_and_fingerprint_tracks_changes():
    import yaml

    cfg = load_config(TINY)
    again = from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert fingerprint(cfg.sample) == fingerprint(again.sample)
    again.sample.ipc += 1
    assert fingerprint(cfg.sample) != fingerprint(again.sample)


def test_base_recipes_merge_and_cycles_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("output: a\nsample:\n  ipc: 3\n  steps: 7\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nsample:\n  ipc: 5\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.output, cfg.sample.ipc, cfg.sample.steps) == ("a", 5, 7)
    (tmp_path / "d.yaml").write_text("output: d\nsample:\n  steps: 9\n  seed: 4\n")
    (tmp_path / "e.yaml").write_text("base: [b.yaml, d.yaml]\nsample:\n  seed: 6\n")  # merged in order
    cfg = load_config(tmp_path / "e.yaml")
    assert (cfg.output, cfg.sample.ipc, cfg.sample.steps, cfg.sample.seed) == ("d", 5, 9, 6)
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        load_config(tmp_path / "c.yaml")


def test_per_ipc_settings_apply_from_their_ipc_on_and_overrides_still_win(tmp_path):
    (tmp_path / "a.yaml").write_text("sample:\n  cfg_scale: 1.5\n  steps: 7\nper_ipc:\n  10:\n    sample: {cfg_scale: 1.0}\n"
                                     "  50:\n    sample: {cfg_scale: 3.0, steps: 9}\n")
    at = lambda ipc, *more: load_config(tmp_path / "a.yaml", [f"sample.ipc={ipc}", *more]).sample  # noqa: E731
    assert [(at(i).cfg_scale, at(i).steps) for i in (1, 9, 10, 49, 50, 100)] == \
        [(1.5, 7), (1.5, 7), (1.0, 7), (1.0, 7), (3.0, 9), (3.0, 9)]
    assert at(10, "sample.cfg_scale=2.5").cfg_scale == 2.5  # the command line over the recipe's choice
    (tmp_path / "b.yaml").write_text("base: a.yaml\nper_ipc:\n  10:\n    sample: {steps: 8}\n")  # merged like any key
    b = load_config(tmp_path / "b.yaml").sample
    assert (b.cfg_scale, b.steps) == (1.0, 8)
    (tmp_path / "c.yaml").write_text("per_ipc:\n  10:\n    sample: {cfg_scael: 1.0}\n")
    with pytest.raises(UserError, match="per_ipc.10.sample.cfg_scael.*cfg_scale"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("per_ipc:\n  ten: {}\n")
    with pytest.raises(UserError, match="per_ipc.*whole numbers"):
        load_config(tmp_path / "d.yaml")


def test_config_reference_is_current_and_complete():
    """docs/config.md is generated from the dataclasses; regenerate with
    `otdistill config --reference > docs/config.md` when a key changes."""
    from otdistill.config_reference import reference

    text = reference()
    assert (ROOT / "docs" / "config.md").read_text() == text + "\n"
    rows = [r for r in text.splitlines() if r.startswith("| `")]
    assert len(rows) > 80 and all(not r.rstrip().endswith("|  |") for r in rows), "every key needs a comment"


def test_config_command_prints_the_effective_config(capsys):
    import yaml

    from otdistill.cli import main

    assert main(["config", str(TINY), "--set", "sample.ipc=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sample"]["ipc"] == 7 and printed["data"]["name"] == "digits"
    assert main(["config", "--reference"]) == 0 and "`sample.guidance.ot.reg`" in capsys.readouterr().out


def test_fingerprint_ignores_fields_left_at_their_defaults():
    """A key added in a later version with a behaviour-preserving default must not orphan
    earlier outputs: fields at their defaults do not enter the fingerprint."""
    import dataclasses

    from otdistill.config import SampleConfig

    base = SampleConfig(ipc=7)
    assert fingerprint(base) == fingerprint(dataclasses.replace(base, init="noise", init_strength=0.7))
    assert fingerprint(base) != fingerprint(dataclasses.replace(base, init="prototypes"))
    nested = dataclasses.replace(base, guidance=dataclasses.replace(base.guidance, window=[1, 2]))
    assert fingerprint(base) != fingerprint(nested)


def test_baseline_is_a_list_and_a_single_name_still_loads():
    """Recipes and manifests written when `baseline` held one name load as a one-item list."""
    assert load_config(TINY).baseline == ["random"]
    assert load_config(TINY, ["baseline=herding"]).baseline == ["herding"]
    assert load_config(TINY, ["baseline=[random,herding]"]).baseline == ["random", "herding"]
    assert load_config(TINY, ["baseline=none"]).baseline == load_config(TINY, ["baseline=[]"]).baseline == []
    assert from_dict({"baseline": "kmeans"}).baseline == ["kmeans"]
    with pytest.raises(UserError, match="baseline: lists random more than once"):
        load_config(TINY, ["baseline=[random,herding,random]"])
    with pytest.raises(UserError, match="baseline.1: must be one of .*did you mean 'herding'"):
        load_config(TINY, ["baseline=[random,herd]"])


def test_combined_recipes_keep_what_each_part_says():
    """A recipe of several bases (X+lia.yaml, the main job) samples as its sampling recipe and
    labels as LIA: a later base's own base must not reset what an earlier one chose."""
    from otdistill.pipeline import sample_fingerprint

    lia = load_config(ROOT / "configs" / "lia.yaml")
    for (combined, sampler), ipc in itertools.product([("feature-ot+lia.yaml", "feature-ot.yaml"),
                                                       ("fashion-mnist.yaml", "feature-ot.yaml"),
                                                       ("otdistill.yaml", "igd+ot.yaml")], [1, 10, 50]):
        at = [f"sample.ipc={ipc}"]  # per_ipc settings included
        cfg, alone = load_config(ROOT / "configs" / combined, at), load_config(ROOT / "configs" / sampler, at)
        assert sample_fingerprint(cfg) == sample_fingerprint(alone), (combined, ipc)
        assert cfg.teachers == lia.teachers and cfg.relabel == lia.relabel, combined
