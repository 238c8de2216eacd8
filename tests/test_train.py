import pytest
import torch

from otdistill.config import TeacherConfig
from otdistill.data import TensorImages
from otdistill.errors import UserError
from otdistill.io import generator
from otdistill.losses import cross_entropy, kl_divergence
from otdistill.models.classifiers import build_classifier
from otdistill.teachers import load_teacher, train_teacher
from otdistill.train import Augment, TrainRecipe, fit, random_resized_crop


def test_crop_is_per_image_and_seeded():
    x = torch.rand(6, 3, 16, 16)
    a = random_resized_crop(x, 0.3, generator(1))
    b = random_resized_crop(x, 0.3, generator(1))
    assert a.shape == x.shape and torch.equal(a, b)
    full = random_resized_crop(x, 1.0, generator(1), ratio=(1.0, 1.0))
    assert torch.allclose(full, x, atol=1e-5)  # scale 1 and square ratio: the identity crop


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    s = torch.randn(4, 5)
    assert kl_divergence(s, s.clone()).abs() < 1e-6
    assert kl_divergence(s, torch.randn(4, 5)) > 0


def test_fit_learns_a_separable_task():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = torch.zeros(40, 1, 8, 8, dtype=torch.uint8)
    images[labels == 1, :, :, :4] = 255
    data = TensorImages(images, labels)
    model = build_classifier("convnet2", 2, 1, 8)
    losses = fit(model, data, TrainRecipe(15, 10, lr=3e-3, augment=Augment(1.0, False)), cross_entropy,
                 lambda x, idx: labels[idx], g, "cpu", quiet=True)
    assert losses[-1] < losses[0] * 0.5


def test_teacher_round_trip_and_bad_weights(tmp_path, digits):
    cfg = TeacherConfig(path=str(tmp_path / "t"), arch="convnet2", epochs=1, batch_size=128)
    model, info = train_teacher(cfg, digits, "cpu", quiet=True)
    assert 0.5 < info["test_accuracy"] <= 1.0  # one epoch on digits is well above chance (0.1)
    loaded, info2 = load_teacher(cfg.path)
    x = digits.test.get([0, 1, 2]).float() / 255
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    # A checkpoint whose weights do not fit its declared architecture is refused clearly.
    import json
    meta = json.loads((tmp_path / "t" / "model.json").read_text())
    meta["arch"] = "convnet3"
    (tmp_path / "t" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not fit a convnet3"):
        load_teacher(cfg.path)
    with pytest.raises(UserError, match="not a teacher folder"):
        load_teacher(tmp_path / "missing")


def test_teacher_recipe_comes_from_config_and_is_recorded(tmp_path, digits, monkeypatch):
    import otdistill.teachers as teachers

    recipes = []
    real_fit = teachers.fit
    monkeypatch.setattr(teachers, "fit", lambda *a, **k: recipes.append(a[2]) or real_fit(*a, **k))
    cfg = TeacherConfig(path=str(tmp_path / "t"), arch="convnet2", epochs=1, batch_size=256, optimizer="sgd",
                        lr=0.05, crop_scale_min=0.6, flip=False)
    _, info = train_teacher(cfg, digits, "cpu", quiet=True)
    used = recipes[0]
    assert (used.optimizer, used.lr, used.batch_size, used.augment.crop_scale_min, used.augment.flip) == \
        ("sgd", 0.05, 256, 0.6, False)
    assert info["recipe"] == {"arch": "convnet2", "epochs": 1, "batch_size": 256, "optimizer": "sgd", "lr": 0.05,
                              "weight_decay": 5e-4, "crop_scale_min": 0.6, "flip": False, "seed": 0}


def test_resumed_teacher_reports_the_training_time_of_every_run(tmp_path, digits, monkeypatch):
    import otdistill.teachers as teachers

    real_fit = teachers.fit

    def fit_killed_in_epoch_2(*args, **kwargs):  # after the checkpoint of epoch 1
        def on_epoch(epoch):
            args[7](epoch)  # the teacher's clock
            if epoch == 2:
                raise KeyboardInterrupt
        return real_fit(*args[:7], on_epoch, *args[8:], **kwargs)

    cfg = TeacherConfig(path=str(tmp_path / "t"), arch="convnet2", epochs=3, batch_size=128)
    monkeypatch.setattr(teachers, "fit", fit_killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg, digits, "cpu", quiet=True)
    monkeypatch.setattr(teachers, "fit", real_fit)
    ckpt = next(tmp_path.glob(".t-*.resume.pt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["extra"]["seconds"] > 0  # epoch 1's time, kept with the checkpoint
    state["extra"]["seconds"] = 1000.0  # as if the first run had been long
    torch.save(state, ckpt)
    _, info = train_teacher(cfg, digits, "cpu", quiet=True)
    assert 1000 < info["train_seconds"] < 1300  # the first run's time plus the resumed epochs


def test_cutmix_pastes_a_box_and_reports_the_kept_share():
    from otdistill.train import cutmix

    x = torch.arange(4, dtype=torch.float).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    mixed, perm, lam = cutmix(x, generator(3))
    for i in range(4):
        kept = (mixed[i] == x[i]).float().mean().item()
        if perm[i] != i:
            assert kept == pytest.approx(lam)


def test_ema_and_cutmix_run_in_fit():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(20) % 2
    data = TensorImages(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), labels)
    model = build_classifier("convnet2", 2, 1, 8)
    before = [p.clone() for p in model.parameters()]
    recipe = TrainRecipe(3, 10, augment=Augment(1.0, False), cutmix=1.0, ema_decay=0.9)
    losses = fit(model, data, recipe, cross_entropy, lambda x, idx: labels[idx], g, "cpu", quiet=True)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_student_image_size_crops_for_training_and_centres_for_testing():
    from otdistill.train import center_view

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    assert torch.equal(center_view(x, 6), x[..., 1:7, 1:7]) and center_view(x, None) is x
    assert center_view(x, 12).shape == (2, 3, 12, 12)
    out = Augment(0.5, True, size=6)(x, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 6, 6)


def test_micro_batches_give_the_batchs_own_gradient():
    """Parts of a batch, their mean losses weighted by their share: the same training (instance
    norm, per-image losses), with CutMix and soft targets computed on each part's views."""
    labels = torch.arange(24) % 3
    data = TensorImages(torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8, generator=generator(1)), labels)
    teacher = build_classifier("convnet2", 3, 1, 8).eval()

    def target(x, idx):  # a teacher labelling the very (mixed) view, as evaluate's online labels do
        with torch.no_grad():
            return teacher(x)

    trained = []
    for micro in (0, 5, 24):  # 3 parts of 4, and a part as large as the batch
        torch.manual_seed(0)
        model = build_classifier("convnet2", 3, 1, 8)
        recipe = TrainRecipe(2, 12, optimizer="sgd_dc", lr=0.1, augment=Augment(0.5, True), cutmix=0.5,
                             micro_batch=micro)
        losses = fit(model, data, recipe, lambda s, t: kl_divergence(s, t), target, generator(2), "cpu", quiet=True)
        trained.append((losses, [p.detach().clone() for p in model.parameters()]))
    for losses, params in trained[1:]:
        assert losses == pytest.approx(trained[0][0], rel=1e-5)
        assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(params, trained[0][1]))


def test_micro_batches_only_where_they_leave_the_gradient_unchanged():
    from otdistill.config import SoftLossConfig, StudentConfig
    from otdistill.evaluate import CPU_MICRO_BATCH, exact_micro_batch

    convnet = build_classifier("convnet2", 3, 1, 8)  # instance norm: no batch statistics
    batchnorm = build_classifier("convnet4-w64-batchnorm-max", 3, 1, 32)
    assert exact_micro_batch(StudentConfig(), "soft", convnet, "cpu") == CPU_MICRO_BATCH
    assert exact_micro_batch(StudentConfig(), "hard", convnet, "cuda") == 0  # a GPU wants the whole batch
    assert exact_micro_batch(StudentConfig(micro_batch=4), "dsa", convnet, "cuda") == 4
    assert exact_micro_batch(StudentConfig(micro_batch=4), "dsa", batchnorm, "cpu") == 0
    with_sd = StudentConfig(soft_loss=SoftLossConfig(sd=1.0))  # the sd term matches a batch's images to each other
    assert exact_micro_batch(with_sd, "soft", convnet, "cpu") == 0
    assert exact_micro_batch(with_sd, "hard", convnet, "cpu") == CPU_MICRO_BATCH
