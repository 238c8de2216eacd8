import json

import pytest
import torch

from otdistill import artifacts
from otdistill.errors import UserError


def make_set(root, k=3, ipc=2, soft=True):
    names = [f"class {i}" for i in range(k)]
    ids = [f"n{i:02d}" for i in range(k)]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (k * ipc, 3, 8, 8), generator=g, dtype=torch.uint8)
    for c in range(k):
        artifacts.write_class_images(root, artifacts.class_folder(c, ids[c], k), images[c * ipc:(c + 1) * ipc])
    hard = torch.arange(k).repeat_interleave(ipc)
    logits = torch.randn(k * ipc, k, generator=g) if soft else None
    artifacts.write_labels(root, hard, logits, ["teacher-a"])
    artifacts.write_manifest(root, ipc=ipc, class_names=names, class_ids=ids, channels=3, image_size=8,
                             source={"kind": "test"}, config={}, seeds={"sample": 0}, teachers=["teacher-a"])
    return images, hard, logits


def test_write_then_read_gives_the_same_tensors(tmp_path):
    images, hard, logits = make_set(tmp_path)
    ds = artifacts.read_distilled(tmp_path)
    assert torch.equal(ds.images, images) and torch.equal(ds.hard, hard) and torch.equal(ds.soft_logits, logits)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000-n00", "001-n01", "002-n02"]
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert {"config", "seeds", "versions", "classes", "files"} <= set(m)
    assert all(c["status"] == "done" for c in m["classes"])
    assert "torch" in m["versions"] and "labels.safetensors" in m["files"]


def test_tampering_and_incomplete_sets_are_detected(tmp_path):
    make_set(tmp_path)
    png = next((tmp_path / "images" / "001-n01").glob("*.png"))
    png.write_bytes(png.read_bytes() + b"x")
    with pytest.raises(UserError, match="hash mismatch"):
        artifacts.read_distilled(tmp_path)
    png.unlink()
    with pytest.raises(UserError, match="incomplete|missing"):
        artifacts.read_distilled(tmp_path)
    with pytest.raises(UserError, match="no manifest.json"):
        artifacts.read_distilled(tmp_path / "elsewhere")


def test_ddranking_export_reads_back_equal(tmp_path):
    images, hard, logits = make_set(tmp_path / "set")
    artifacts.export_ddranking(artifacts.read_distilled(tmp_path / "set"), tmp_path / "dd")
    x, soft, y = artifacts.load_ddranking(tmp_path / "dd")
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32
    assert torch.equal((x * 255).round().to(torch.uint8), images)
    assert torch.equal(soft, logits) and torch.equal(y, hard)
    assert y.tolist() == sorted(y.tolist())  # class-ordered, first dimension aligned


def test_export_needs_soft_labels(tmp_path):
    make_set(tmp_path, soft=False)
    with pytest.raises(UserError, match="relabel"):
        artifacts.export_ddranking(artifacts.read_distilled(tmp_path), tmp_path / "dd")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from otdistill.io import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
