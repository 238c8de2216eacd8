"""Feature OT guidance (guidance/feature_ot.py) on digits-tiny: its gradient against a finite
difference of the entropic OT objective written here with POT, and its effect on a sampled set."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import ot
import pytest
import torch
from conftest import generate

from otdistill.config import FeatureOTConfig, load_config
from otdistill.errors import UserError
from otdistill.guidance import FeatureOTGuidance, build_terms
from otdistill.guidance.feature_ot import real_feature_pools
from otdistill.metrics import features, held_out
from otdistill.models.generator import load_generator
from otdistill.teachers import load_teacher

TINY = Path(__file__).resolve().parents[1] / "configs" / "digits-tiny.yaml"


@pytest.fixture(scope="module")
def parts(trained, digits):
    model = load_generator(trained.generator.path)
    teacher, _ = load_teacher(trained.teachers[0].path)
    return model, teacher


def make_term(trained, digits, model, cfg, cache=None):
    g = dataclasses.replace(trained.sample.guidance, feature_ot=cfg)
    (term,) = build_terms(g, model, digits, cache_dir=cache, teachers=[trained.teachers[0].path])
    return term


def entropic_objective(made: np.ndarray, real: np.ndarray, reg: float, scale: float) -> tuple[float, float]:
    """min_P <P, C> + reg * scale * sum P log P over uniform couplings, squared Euclidean C, and
    <P, C> at the optimum: the entropic problem with the term's regularisation (relative to the
    mean cost `scale`), solved by POT to high precision in float64."""
    C = ((made[:, None, :] - real[None, :, :]) ** 2).sum(-1)
    a, b = np.full(len(made), 1 / len(made)), np.full(len(real), 1 / len(real))
    P = ot.sinkhorn(a, b, C / scale, reg, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000)
    return float((P * C).sum() + reg * scale * (P * np.log(P)).sum()), float((P * C).sum())


def test_gradient_matches_a_finite_difference(trained, digits, parts):
    model, teacher = parts
    model.autoencoder.double()
    try:
        term = make_term(trained, digits, model, FeatureOTConfig(weight=1.0, reg=0.5, pool_size=12, tol=1e-13,
                                                                  max_iter=100_000))
        term.nets = [n.double() for n in term.nets]
        g = torch.Generator().manual_seed(0)
        memory = torch.randn((1, *model.latent_shape), generator=g, dtype=torch.float64)
        x0 = torch.randn((2, *model.latent_shape), generator=g, dtype=torch.float64)
        state = SimpleNamespace(model=model, class_index=3, memory=memory, z=x0, step_index=0)
        x = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            value, _ = term.objective(x, state)
            grad, = torch.autograd.grad(value, x)
        real = term.pools[0][3].double().numpy()

        def embed(latents):
            with torch.no_grad():
                return teacher.double().embed(model.decode(latents)).flatten(1).numpy()

        made = np.concatenate([embed(memory), embed(x0)])
        C = ((made[:, None, :] - real[None, :, :]) ** 2).sum(-1)
        scale = C.mean()  # the regularisation's reference, held where the gradient is taken
        _, linear = entropic_objective(made, real, 0.5, scale)
        assert value.item() == pytest.approx(np.log(linear), rel=1e-6)
        direction = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        h = 1e-4
        plus, _ = entropic_objective(np.concatenate([embed(memory), embed(x0 + h * direction)]), real, 0.5, scale)
        minus, _ = entropic_objective(np.concatenate([embed(memory), embed(x0 - h * direction)]), real, 0.5, scale)
        # d log<P, C> with P held (the envelope theorem) = d W_eps / <P, C>
        assert (grad * direction).sum().item() == pytest.approx((plus - minus) / (2 * h) / linear, rel=1e-4)
    finally:
        model.autoencoder.float()
        teacher.float()


def test_it_lowers_the_ot_distance_in_its_feature_space(trained, digits, parts):
    model, teacher = parts
    cfg = dataclasses.replace(trained.sample, ipc=4, batch_size=2, steps=10)
    term = make_term(trained, digits, model, FeatureOTConfig(weight=1.0, pool_size=30))
    idx = held_out(digits.test, digits.num_classes, 30)
    real, labels = features(teacher, digits.test.get(idx), "cpu"), digits.test.labels[idx]

    def distance(latents, c):
        with torch.no_grad():
            made = teacher.embed(model.decode(latents))
        return ot.emd2([], [], torch.cdist(made.double(), real[labels == c].double()).pow(2).numpy())

    plain = sum(distance(generate(model, cfg, c, []), c) for c in range(4))
    guided = sum(distance(generate(model, cfg, c, [term]), c) for c in range(4))
    assert guided < 0.9 * plain
    assert term.seconds > 0


def test_pools_are_cached_per_classifier_and_images(trained, digits, parts, tmp_path):
    _, teacher = parts
    weights = Path(trained.teachers[0].path) / "model.safetensors"
    a = real_feature_pools(teacher, weights, digits, 8, 0, [0, 1], tmp_path)
    files = sorted(tmp_path.glob("real-features-*.safetensors"))
    assert len(files) == 2 and a[0].shape[0] == 8
    files[0].write_bytes(b"damaged")  # an unreadable class file is embedded again
    b = real_feature_pools(teacher, weights, digits, 8, 0, [0, 1], tmp_path)
    assert all(torch.equal(a[c], b[c]) for c in a)
    real_feature_pools(teacher, weights, digits, 8, 1, [0], tmp_path)  # another seed, other images, another file
    assert len(list(tmp_path.glob("real-features-*.safetensors"))) == 3
    with pytest.raises(UserError, match="fewer than the feature pool size"):
        real_feature_pools(teacher, weights, digits, 10_000, 0, [0], None)


def test_a_herding_pool_holds_the_herding_baselines_picks(trained, digits, parts, tmp_path):
    """pool_select=herding: the pool is the features of the images the herding baseline would pick
    (its own seed and candidates), cached apart from the random pool of the same size."""
    from otdistill.selection import TEACHER, select_class

    _, teacher = parts
    weights = Path(trained.teachers[0].path) / "model.safetensors"
    herded = real_feature_pools(teacher, weights, digits, 6, 0, [0, 3], tmp_path, select="herding")
    drawn = real_feature_pools(teacher, weights, digits, 6, 0, [0, 3], tmp_path)
    embed = TEACHER.build(trained.teachers[0].path, "cpu")
    for c in (0, 3):
        expected = embed(digits.train.get(select_class("herding", digits.train, c, 6, 0, embed)))
        assert torch.allclose(herded[c], expected, atol=1e-5) and not torch.allclose(drawn[c], expected)
        # independently of select_class: six distinct images of the class whose feature mean lies
        # nearer the class mean than the random pool's does (what herding is for)
        every = embed(digits.train.get(digits.train.indices_of(c)))
        assert (torch.cdist(herded[c], every).min(1).values < 0.05).all()  # others lie ~8 apart; batching moves ~0.01
        assert len({int(i) for i in torch.cdist(herded[c], every).argmin(1)}) == 6
        mean = every.mean(0)
        assert (herded[c].mean(0) - mean).norm() < (drawn[c].mean(0) - mean).norm()
    assert len(list(tmp_path.glob("real-features-*.safetensors"))) == 4


class MeanGrey(torch.nn.Module):
    """A classifier of flat grey images: its feature is the mean grey (x100), and its class-0 logit
    rises with it (class 1 wins below grey 0.4)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def embed(self, x):
        return x.mean(dim=(1, 2, 3)).unsqueeze(1) * 100

    def forward(self, x):
        s = (x.mean(dim=(1, 2, 3)) - 0.4) * 20
        return torch.stack([s, -s], 1)


def test_a_kmeans_pool_reaches_every_mode_of_the_class_where_herding_keeps_to_its_mean(tmp_path):
    """pool_select=kmeans on a class with three modes of 40, 4 and 4 images (flat images of three
    grey levels; the features are the mean grey): k-means picks one image of each mode, while
    herding's picks keep their mean on the class mean (grey 55) and never reach the far mode."""
    from otdistill.data import LabelledData, TensorImages

    g = torch.Generator().manual_seed(0)
    grey = torch.cat([torch.full((40,), 30.0), torch.full((4,), 130.0), torch.full((4,), 230.0)])
    grey = (grey + torch.randint(-3, 4, (48,), generator=g)).clamp(0, 255)
    images = grey.view(48, 1, 1, 1).expand(48, 1, 4, 4).to(torch.uint8).contiguous()
    split = TensorImages(images, torch.zeros(48, dtype=torch.long))
    data = LabelledData("modes", split, split, ["a"], ["a"], 1, 4)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    modes = lambda pool: sorted(int(v // (100 * 100 / 255)) for v in pool.flatten())  # noqa: E731 (0, 1, 2)
    spread = real_feature_pools(MeanGrey(), weights, data, 3, 0, [0], None, select="kmeans")
    typical = real_feature_pools(MeanGrey(), weights, data, 3, 0, [0], None, select="herding")
    assert modes(spread[0]) == [0, 1, 2] and 2 not in modes(typical[0])


def test_confident_and_informative_pools_rank_by_the_classifiers_own_softmax():
    """pool_select=confident / informative on flat images of 20 grey levels, all of class 0, whose
    classifier's class-0 logit rises with the grey (class 1 wins below grey 0.4): confident keeps
    the three it is surest of (the brightest), informative the three it assigns to class 0 with
    the most uncertain labels (the darkest above 0.4), as the softmax computed here says."""
    import math

    from otdistill.data import LabelledData, TensorImages

    greys = [10 + 12 * i for i in range(20)]
    images = torch.tensor(greys, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 4, 4).contiguous()
    split = TensorImages(images, torch.zeros(20, dtype=torch.long))
    data = LabelledData("lean", split, split, ["a", "b"], ["a", "b"], 1, 4)

    def softmax0(grey):  # p(class 0) of a flat image, by hand
        s = (grey / 255 - 0.4) * 20
        return 1 / (1 + math.exp(-2 * s))

    def entropy(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    sure = sorted(greys, key=softmax0, reverse=True)[:3]
    assigned = [g for g in greys if softmax0(g) > 0.5]
    unsure = sorted(assigned, key=lambda g: entropy(softmax0(g)), reverse=True)[:3]
    assert sorted(sure) == greys[-3:] and sorted(unsure) == assigned[:3]  # what the docstring says
    for select, expected in (("confident", sure), ("informative", unsure)):
        pool = real_feature_pools(MeanGrey(), Path(__file__), data, 3, 0, [0], None, select=select)[0]
        assert torch.allclose(pool.flatten().sort().values, torch.tensor(sorted(expected)) / 255 * 100), select


def test_classifiers_default_to_the_first_teacher_and_take_a_surrogate(trained, digits, parts, tmp_path):
    from otdistill.config import SurrogateConfig
    from otdistill.surrogate import train_surrogate

    model, _ = parts
    term = make_term(trained, digits, model, FeatureOTConfig(weight=1.0, pool_size=5))
    assert isinstance(term, FeatureOTGuidance) and len(term.nets) == 1
    surrogate = tmp_path / "surrogate"
    train_surrogate(SurrogateConfig(arch="convnet2", epochs=1, checkpoints=[0, 1], train_subset=200, batch_size=64),
                    surrogate, digits, "cpu", quiet=True)
    both = make_term(trained, digits, model, FeatureOTConfig(weight=1.0, pool_size=5,
                                                              classifiers=[trained.teachers[0].path, str(surrogate)]))
    assert len(both.nets) == 2 and len(both.pools) == 2
    with pytest.raises(UserError, match="neither a teacher folder"):
        make_term(trained, digits, model, FeatureOTConfig(weight=1.0, classifiers=[str(tmp_path)]))


def test_a_sampled_set_is_keyed_by_the_classifier_it_reads(tmp_path):
    from otdistill.pipeline import sample_fingerprint
    on = ["sample.guidance.feature_ot.weight=1"]
    a = load_config(TINY, [*on, f"teachers.0.path={tmp_path / 'a'}"])
    b = load_config(TINY, [*on, f"teachers.0.path={tmp_path / 'b'}"])
    assert sample_fingerprint(a) != sample_fingerprint(b)
    off_a, off_b = (load_config(TINY, [f"teachers.0.path={tmp_path / n}"]) for n in "ab")
    assert sample_fingerprint(off_a) == sample_fingerprint(off_b)  # off, the teacher does not shape the images
