"""Multi-formation (formation.py): f x f images of 1/f the side packed into each stored image,
made and labelled as parts, trained on as parts enlarged back; the budget stays IPC stored images."""

import dataclasses

import pytest
import torch

from otdistill import artifacts, pipeline
from otdistill.config import load_config
from otdistill.context import RunContext
from otdistill.errors import UserError
from otdistill.evaluate import train_student
from otdistill.formation import as_part, pack, unpack
from otdistill.report import inspect_text

from conftest import TINY


def test_pack_puts_each_image_shrunk_by_block_means_into_its_part_row_major():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 4, 6), dtype=torch.uint8, generator=g)
    packed = pack(x, 2)
    assert packed.shape == (2, 3, 4, 6)
    for i in range(2):
        for j in range(4):
            row, col = divmod(j, 2)
            image = x[i * 4 + j].double()
            for y in range(2):
                for z in range(3):  # the mean of the 2 x 2 block, written out by hand
                    block = image[:, 2 * y:2 * y + 2, 2 * z:2 * z + 2].mean(dim=(1, 2))
                    assert torch.equal(packed[i, :, 2 * row + y, 3 * col + z], block.round().to(torch.uint8))
    assert torch.equal(pack(x, 1), x)


def test_unpack_returns_each_part_enlarged_to_the_stored_size():
    values = torch.tensor([10, 60, 120, 250], dtype=torch.uint8)
    x = values.view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()  # four flat images
    parts = unpack(pack(x, 2), 2)
    assert parts.shape == (4, 1, 8, 8) and torch.equal(parts, x)  # a flat part enlarges to the same flat image
    ramp = (torch.arange(16, dtype=torch.uint8) * 10).view(1, 1, 4, 4)
    top_left = unpack(ramp, 2)[0]  # the part [[0, 10], [40, 50]] enlarged to 4 x 4, its corners kept
    assert top_left.shape == (1, 4, 4) and top_left[0, 0, 0] == 0 and top_left[0, -1, -1] == 50
    with pytest.raises(ValueError, match="do not split"):
        unpack(torch.zeros(1, 1, 5, 5, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="whole packs"):
        pack(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), 2)


def test_an_image_as_a_part_reads_as_it_would_back_from_a_pack():
    x = torch.randint(0, 256, (8, 3, 4, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(as_part(x, 2), unpack(pack(x, 2), 2)) and torch.equal(as_part(x, 1), x)


def test_a_formation_that_does_not_tile_the_images_is_refused_at_load():
    with pytest.raises(UserError, match="sample.formation.*must divide data.image_size=16"):
        load_config(TINY, ["sample.formation=3"])


def test_a_packed_selection_stores_ipc_images_and_trains_students_on_their_parts(tmp_path, trained, monkeypatch):
    cfg = dataclasses.replace(trained, output=str(tmp_path / "run"))
    packed_cfg = load_config(TINY, [f"output={tmp_path / 'run'}", f"generator.path={trained.generator.path}",
                                    f"teachers.0.path={trained.teachers[0].path}", "sample.formation=2"])
    plain = pipeline.select_stage(RunContext(cfg, quiet=True), "random", tmp_path / "plain")
    root = pipeline.select_stage(RunContext(packed_cfg, quiet=True), "random", tmp_path / "packed")
    ds = artifacts.read_distilled(root)
    assert ds.formation == 2 and len(ds.images) == 10 * cfg.sample.ipc  # the budget: IPC stored images
    assert pipeline.select_fingerprint(packed_cfg, "random") != pipeline.select_fingerprint(cfg, "random")
    parts = ds.training()
    assert len(parts.images) == 4 * len(ds.images) and torch.equal(parts.hard, ds.hard.repeat_interleave(4))
    assert parts.images.shape[1:] == ds.images.shape[1:]
    # relabelled per part, and read back whole
    pipeline.relabel_stage(root, RunContext(packed_cfg, quiet=True))
    labelled = artifacts.read_distilled(root)
    assert labelled.soft_logits.shape == (4 * len(ds.images), 10)
    assert len(artifacts.read_distilled(plain).images) == len(ds.images)
    artifacts.export_ddranking(labelled, tmp_path / "dd")  # DD-Ranking trains on the parts, as ours do
    images, soft, hard = artifacts.load_ddranking(tmp_path / "dd")
    assert len(images) == len(soft) == len(hard) == 4 * len(ds.images)
    seen = []
    monkeypatch.setattr("otdistill.evaluate.fit", lambda model, images, *a, **k: seen.append(len(images)))
    monkeypatch.setattr("otdistill.evaluate.accuracy", lambda *a, **k: 0.5)
    for protocol in ("hard", "soft"):
        train_student(labelled, RunContext(packed_cfg, quiet=True).data.test, packed_cfg.student, protocol, 0,
                      None if protocol == "hard" else _ensemble(packed_cfg), "cpu", quiet=True)
    assert seen == [4 * len(ds.images)] * 2


def _ensemble(cfg):
    from otdistill.relabel import load_ensemble

    return load_ensemble([cfg.teachers[0].path], "cpu")


def test_a_packed_generated_set_draws_four_images_per_stored_one(tmp_path, trained, monkeypatch):
    import otdistill.pipeline as p

    cfg = load_config(TINY, [f"output={tmp_path / 'run'}", f"generator.path={trained.generator.path}",
                             f"teachers.0.path={trained.teachers[0].path}", "sample.formation=2"])
    drawn = []
    real_sample = p.sample_classes
    monkeypatch.setattr(p, "sample_classes", lambda model, group, scfg, *a: drawn.append(scfg.ipc)
                        or real_sample(model, group, scfg, *a))
    root = p.sample_stage(RunContext(cfg, quiet=True))
    ds = artifacts.read_distilled(root)
    assert set(drawn) == {4 * cfg.sample.ipc} and len(ds.images) == 10 * cfg.sample.ipc and ds.formation == 2
    assert "packs 2 x 2 parts of 8 px" in inspect_text(root)
