import dataclasses
import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from otdistill.config import DataConfig
from otdistill.data import TensorImages, hold_out, load_dataset
from otdistill.data.fashion_mnist import FILES
from otdistill.errors import UserError


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion(root, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    write_idx(root / FILES["train_images"], rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(root / FILES["train_labels"], np.arange(n_train) % 10)
    write_idx(root / FILES["test_images"], rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(root / FILES["test_labels"], np.arange(n_test) % 10)


def test_fashion_mnist_reads_idx_files_and_resizes(tmp_path):
    fake_fashion(tmp_path)
    data = load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path), image_size=32))
    assert data.num_classes == 10 and data.channels == 1 and data.image_size == 32
    assert len(data.train) == 30 and len(data.test) == 10
    assert data.train.get([0, 1]).shape == (2, 1, 32, 32)
    native = load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert native.train.get([0]).shape == (1, 1, 28, 28)


def test_fashion_mnist_missing_or_truncated_files_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    fake_fashion(tmp_path)
    raw = gzip.open(tmp_path / FILES["test_images"]).read()
    with gzip.open(tmp_path / FILES["test_images"], "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(UserError, match="truncated"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    (tmp_path / FILES["test_images"]).write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable gzip"):
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))


def test_digits_split_is_stratified_and_seeded():
    a = load_dataset(DataConfig(name="digits", image_size=16))
    b = load_dataset(DataConfig(name="digits", image_size=16))
    assert torch.equal(a.test.labels, b.test.labels)
    assert set(a.test.labels.tolist()) == set(range(10)) == set(a.train.labels.tolist())
    assert a.train.get([0]).shape == (1, 1, 16, 16)
    assert len(a.train) + len(a.test) == 1797


def test_hold_out_carves_a_seeded_validation_split_from_train():
    data = load_dataset(DataConfig(name="digits"))
    val = hold_out(data, 20, seed=3)
    assert torch.equal(torch.bincount(val.test.labels), torch.full((10,), 20))
    assert len(val.train) + len(val.test) == len(data.train) and val.class_names == data.class_names
    # disjoint, and every image is the training image it claims to be
    held, kept = val.test.indices, val.train.indices
    assert not set(held.tolist()) & set(kept.tolist())
    assert torch.equal(val.test.get([0, 5]), data.train.get(held[[0, 5]]))
    assert torch.equal(val.train.labels, data.train.labels[kept])
    assert torch.equal(hold_out(data, 20, seed=3).test.indices, held)
    assert not torch.equal(hold_out(data, 20, seed=4).test.indices, held)
    with pytest.raises(UserError, match="choose a count in that range"):
        hold_out(data, 1000, seed=0)



def test_content_id_names_the_images_and_labels_of_a_split(tmp_path):
    data = load_dataset(DataConfig(name="digits"))
    again = load_dataset(DataConfig(name="digits"))
    assert data.test.content_id() == again.test.content_id() != data.train.content_id()
    relabelled = TensorImages(data.test.images, data.test.labels.roll(1))
    assert relabelled.content_id() != data.test.content_id()
    val, val_again = hold_out(data, 20, seed=3).test, hold_out(data, 20, seed=3).test
    assert val.content_id() == val_again.content_id() != hold_out(data, 20, seed=4).test.content_id()
    make_folder(tmp_path / "f", ["a", "b"])
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "f"), image_size=8, test_fraction=0.5)
    folder = load_dataset(cfg)
    assert folder.test.content_id() == load_dataset(cfg).test.content_id() != folder.train.content_id()
    assert load_dataset(dataclasses.replace(cfg, image_size=6)).test.content_id() != folder.test.content_id()

def make_folder(root, classes, per_class=3, size=(20, 12), mode="RGB"):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            rgb = np.stack([np.full((size[1], size[0]), v, np.uint8) for v in (40 * i, 200 - 40 * i, 90)], -1)
            Image.fromarray(rgb).convert(mode).save(root / c / f"{i}.png")


@pytest.mark.parametrize("bad_files", ["skip", "unchecked"])
def test_imagefolder_channels_follow_the_images(tmp_path, bad_files):
    """Grayscale files load as 1 channel, colour ones (or a single colour file) as 3; data.channels overrides."""
    make_folder(tmp_path / "gray", ["a", "b"], mode="L")
    make_folder(tmp_path / "rgb", ["a", "b"])
    make_folder(tmp_path / "mixed", ["a", "b"], mode="L")
    Image.fromarray(np.full((12, 20, 3), (255, 0, 0), np.uint8)).save(tmp_path / "mixed" / "a" / "0.png")

    def load(folder, channels="auto"):
        return load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / folder), image_size=8,
                                       test_fraction=0.5, bad_files=bad_files, channels=channels))
    gray = load("gray")
    assert gray.channels == 1 and gray.train.get([0]).shape == (1, 1, 8, 8)
    assert load("rgb").channels == 3 and load("rgb").train.get([0]).shape == (1, 3, 8, 8)
    assert load("mixed").channels == 3  # the first image of class a is colour
    assert load("gray", channels=3).train.get([0]).shape == (1, 3, 8, 8)
    assert load("rgb", channels=1).channels == 1


def test_imagefolder_with_class_list_and_val_split(tmp_path):
    make_folder(tmp_path / "train", ["n02", "n01", "n03"])
    make_folder(tmp_path / "val", ["n02", "n01", "n03"], per_class=1)
    (tmp_path / "classes.txt").write_text("n03\nn01\n")
    data = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, class_list=str(tmp_path / "classes.txt")))
    assert data.class_ids == ["n03", "n01"]
    assert len(data.train) == 6 and len(data.test) == 2
    assert data.train.get([0, 5]).shape == (2, 3, 8, 8)
    assert data.channels == 3


def test_imagefolder_skips_corrupt_files_and_reports_missing_classes(tmp_path):
    make_folder(tmp_path, ["a", "b"], per_class=4)
    (tmp_path / "a" / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, test_fraction=0.25))
    assert len(data.train) + len(data.test) == 8
    (tmp_path / "list.txt").write_text("a\nzebra\n")
    with pytest.raises(UserError, match="zebra is missing"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, class_list=str(tmp_path / "list.txt")))
    with pytest.raises(UserError, match="image_size"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_unknown_dataset_lists_adapters():
    with pytest.raises(UserError, match="fashion-mnist, digits, imagefolder"):
        load_dataset(DataConfig(name="cifar"))
