import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import generate

from otdistill.config import DeviationConfig, OTGuidanceConfig
from otdistill.errors import UserError
from otdistill.guidance import (
    DeviationGuidance,
    OTGuidance,
    build_terms,
    real_latent_pools,
)
from otdistill.metrics import held_out
from otdistill.models.generator import load_generator
from otdistill.ot import exact_ot
from otdistill.sample import sample_latents
from otdistill.train_generator import encode_all


@pytest.fixture(scope="module")
def setup(trained, digits):
    model = load_generator(trained.generator.path)
    cfg = dataclasses.replace(trained.sample, ipc=6, batch_size=2, steps=10)
    pools = real_latent_pools(model, digits, size=40, select="random", seed=0)
    return model, cfg, pools


def test_ot_guidance_lowers_ot_distance_to_held_out_real_latents(setup, digits):
    model, cfg, pools = setup
    idx = held_out(digits.test, 10, 30)
    real = encode_all(model, digits.test, "cpu", idx)
    labels = digits.test.labels[idx]
    term = OTGuidance(OTGuidanceConfig(weight=0.5, reg=0.05), pools)
    plain_d, ot_d = [], []
    for c in range(3):
        plain_d.append(exact_ot(generate(model, cfg, c, []), real[labels == c]))
        ot_d.append(exact_ot(generate(model, cfg, c, [term]), real[labels == c]))
    assert sum(ot_d) < sum(plain_d)
    assert term.seconds > 0


def test_guided_sampling_is_deterministic(setup):
    model, cfg, pools = setup
    a = generate(model, cfg, 4, [OTGuidance(OTGuidanceConfig(weight=0.3), pools), DeviationGuidance(DeviationConfig(weight=0.3))])
    b = generate(model, cfg, 4, [OTGuidance(OTGuidanceConfig(weight=0.3), pools), DeviationGuidance(DeviationConfig(weight=0.3))])
    assert torch.equal(a, b)


def test_deviation_spreads_the_samples_of_a_class(setup):
    model, cfg, _ = setup
    cfg1 = dataclasses.replace(cfg, batch_size=1)

    def max_cos(z):
        s = F.normalize(z.flatten(1), dim=1) @ F.normalize(z.flatten(1), dim=1).T
        return (s - 2 * torch.eye(len(z))).max(dim=1).values.mean().item()

    plain = generate(model, cfg1, 1, [])
    spread = generate(model, cfg1, 1, [DeviationGuidance(DeviationConfig(weight=1.0))])
    assert max_cos(spread) < max_cos(plain)


def test_non_finite_gradient_is_reported_not_written(setup):
    model, cfg, pools = setup
    broken = {c: p.clone() for c, p in pools.items()}
    broken[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="non-finite gradient.*class 0"):
        generate(model, cfg, 0, [OTGuidance(OTGuidanceConfig(weight=0.5), broken)])


def test_pools_are_cached_and_kmeans_picks_real_latents(setup, digits, tmp_path):
    model, _, _ = setup
    a = real_latent_pools(model, digits, 10, "kmeans", 0, tmp_path)
    files = sorted(tmp_path.glob("real-latents-kmeans-10-0-*.safetensors"))
    assert len(files) == digits.num_classes and a[0].shape == (10, *model.latent_shape)
    files[3].write_bytes(b"damaged")  # one unreadable class file is re-encoded, the rest are read
    b = real_latent_pools(model, digits, 10, "kmeans", 0, tmp_path)
    assert all(torch.equal(a[c], b[c]) for c in a)
    assert list(real_latent_pools(model, digits, 10, "kmeans", 0, tmp_path, classes=[2, 5])) == [2, 5]
    every = encode_all(model, digits.train, "cpu", digits.train.indices_of(0))
    assert all((every - z).abs().flatten(1).sum(1).min() < 1e-4 for z in a[0])  # each one is a real latent
    with pytest.raises(UserError, match="fewer than the real pool"):
        real_latent_pools(model, digits, 10_000, "random", 0)


def test_build_terms_follows_the_config(trained, digits, setup):
    model, _, _ = setup
    g = trained.sample.guidance
    assert build_terms(g, model, digits) == []
    g = dataclasses.replace(g, ot=dataclasses.replace(g.ot, weight=0.1, pool_size=5),
                            deviation=dataclasses.replace(g.deviation, weight=0.1))
    assert [t.name for t in build_terms(g, model, digits)] == ["deviation", "ot"]


def test_terms_come_from_the_registry_and_so_do_their_listings(trained, digits, setup, monkeypatch):
    """The pipeline builds whatever the registry holds; the report's names and the bench's
    "all off" overrides are read from it, so a new term changes neither."""
    from otdistill.guidance import TERMS, GuidanceTerm, method_label, off_overrides, register_term

    model, _, _ = setup
    assert off_overrides() == [f"sample.guidance.{n}.weight=0.0" for n in ("influence", "deviation", "ot", "feature_ot")]
    assert method_label(["influence", "deviation", "ot"]) == "igd+ot" and method_label(["deviation"]) == "deviation"

    class Stub(GuidanceTerm):
        name = "deviation"

        def delta(self, state):
            return torch.zeros_like(state.z)

    monkeypatch.setitem(TERMS, "deviation", TERMS["deviation"])
    register_term("deviation", lambda cfg, inputs: Stub(cfg), family="igd")
    g = dataclasses.replace(trained.sample.guidance, deviation=dataclasses.replace(trained.sample.guidance.deviation,
                                                                                     weight=0.1))
    (term,) = build_terms(g, model, digits)
    assert isinstance(term, Stub) and term.cfg.weight == 0.1
    term(SimpleNamespace(z=torch.ones(2, 3)))
    assert term.seconds > 0  # every term times itself


@pytest.fixture(scope="module")
def surrogate(trained, digits, tmp_path_factory):
    from otdistill.config import SurrogateConfig
    from otdistill.surrogate import load_trajectory, train_surrogate

    path = tmp_path_factory.mktemp("surrogate") / "s"
    train_surrogate(SurrogateConfig(arch="convnet2", epochs=2, checkpoints=[0, 2], train_subset=300, batch_size=64),
                    path, digits, "cpu", quiet=True)
    return path, load_trajectory(path)


def test_surrogate_trajectory_round_trips(surrogate):
    path, (models, info) = surrogate
    assert info["epochs"] == [0, 2] and len(models) == 2
    w0, w2 = (next(m.parameters()) for m in models)
    assert not torch.equal(w0, w2)  # different points of the trajectory


def test_influence_gradient_is_a_descent_direction(setup, digits):
    """On a smooth (linear) surrogate trajectory, a small step against the term's output
    lowers the gradient-matching distance. (ReLU surrogates make that distance too jagged
    for a finite-step check at this tiny scale.)"""
    from otdistill.config import InfluenceConfig
    from otdistill.guidance.influence import (
        InfluenceGuidance,
        param_grads,
        real_gradients,
    )
    from otdistill.models.classifiers import Classifier
    from otdistill.sample import SamplerState

    model, _, _ = setup
    torch.manual_seed(0)
    models = [Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)), [0.5], [0.5]).eval()
              for _ in range(2)]
    real = real_gradients(models, digits, 20, 0, "cpu")
    term = InfluenceGuidance(InfluenceConfig(weight=1.0), models, real)
    x0 = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    update = torch.randn_like(x0)
    state = SamplerState(x0, 500, 5, 10, x0, update, 0.5, 3, x0[:0], model, noise=torch.randn_like(x0))
    delta = term(state)
    assert delta.shape == x0.shape and torch.isfinite(delta).all()
    # the step's size is weight * sqrt(1 - alpha_bar) * |update| per latent
    assert torch.allclose(delta.flatten(1).norm(dim=1), (0.5 ** 0.5) * update.flatten(1).norm(dim=1), rtol=1e-4)

    def distance(z):
        with torch.enable_grad():
            images = model.decode(z)
            labels = torch.full((2,), 3)
            return sum(sum(1 - F.cosine_similarity(g.flatten(), t.flatten(), dim=0)
                           for g, t in zip(param_grads(net, images, labels, False), target)).item()
                       for net, target in zip(models, real[3]))

    step = delta / delta.norm() * 0.05
    assert distance(x0 - step) < distance(x0) < distance(x0 + step)


def linear_surrogates(digits):
    """Two seeded linear surrogates (a smooth trajectory) and each class's real mean gradients."""
    from otdistill.guidance.influence import real_gradients
    from otdistill.models.classifiers import Classifier

    torch.manual_seed(0)
    nets = [Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)), [0.5], [0.5]).eval()
            for _ in range(2)]
    return nets, real_gradients(nets, digits, 20, 0, "cpu")


def test_igd_scaling_steps_are_igds_formulas(setup, digits):
    """scaling igd: deviation's step is gamma times the raw gradient of the cosine similarity to the
    most similar memory latent (IGD's dev-scale acting on z_t); influence's is
    k * sqrt(1 - alpha_bar) * 0.0015 * RMS(eps) / RMS(g) * g, IGD's rho_t. Written here from the
    equations: d cos(z, m) / dz = m / (|z| |m|) - cos(z, m) z / |z|^2."""
    from otdistill.config import InfluenceConfig
    from otdistill.guidance.influence import InfluenceGuidance, param_grads
    from otdistill.sample import SamplerState

    model, _, _ = setup
    g = torch.Generator().manual_seed(0)
    z, update, noise = (torch.randn(2, *model.latent_shape, generator=g) for _ in range(3))
    x0, memory = 0.5 * z + 0.1 * update, torch.randn(5, *model.latent_shape, generator=g)
    state = SamplerState(z, 400, 6, 50, x0, update, 0.3, 3, memory, model, noise=noise)

    deviation = DeviationGuidance(DeviationConfig(weight=120.0, input="zt", scaling="igd"))(state)
    for r in range(2):
        v, ms = z[r].flatten(), memory.flatten(1)
        cos = ms @ v / (ms.norm(dim=1) * v.norm())
        m = ms[cos.argmax()]
        grad = m / (v.norm() * m.norm()) - cos.max() * v / v.norm() ** 2
        assert torch.allclose(deviation[r].flatten(), 120.0 * grad, atol=1e-6)

    nets, real = linear_surrogates(digits)
    x = x0.clone().requires_grad_(True)
    labels = torch.full((2,), 3)
    distance = sum(sum(1 - F.cosine_similarity(a.flatten(), b.flatten(), dim=0)
                       for a, b in zip(param_grads(net, model.decode(x), labels, True), target))
                   for net, target in zip(nets, real[3]))
    grad, = torch.autograd.grad(distance, x)
    rms = lambda v: v.flatten(1).pow(2).mean(1).sqrt().view(-1, 1, 1, 1)  # noqa: E731
    for scaling, expected in [("igd", 0.0015 * rms(noise) / rms(grad) * grad),
                              ("relative", update.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * grad
                               / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1))]:
        term = InfluenceGuidance(InfluenceConfig(weight=5.0, scaling=scaling), nets, real)
        assert torch.allclose(term(state), 5.0 * (1 - 0.3) ** 0.5 * expected, rtol=1e-4, atol=1e-5), scaling


def test_influence_can_match_igds_flat_gradient_through_the_denoiser(setup, digits):
    """distance flat + through denoiser, as IGD's code: the gradient w.r.t. z_t of 1 - cosine of
    all the surrogate's parameter gradients as one vector against the real one, at
    x0(z_t) = (z_t - sqrt(1 - ab) eps(z_t)) / sqrt(ab), eps the CFG-guided prediction."""
    from otdistill.config import InfluenceConfig
    from otdistill.guidance.influence import InfluenceGuidance, param_grads
    from otdistill.sample import SamplerState

    model, _, _ = setup
    g = torch.Generator().manual_seed(1)
    z, update, noise = (torch.randn(2, *model.latent_shape, generator=g) for _ in range(3))
    state = SamplerState(z, 400, 6, 50, z, update, 0.3, 3, z[:0], model, noise=noise,
                         predict=lambda v: model.predict(v, 400, 3, 2.0))
    nets, real = linear_surrogates(digits)

    zz = z.clone().requires_grad_(True)
    t = torch.full((2,), 400)
    cond, uncond = model.forward(zz, t, torch.full((2,), 3)), model.forward(zz, t, torch.full((2,), model.null_class))
    x0 = (zz - 0.7 ** 0.5 * (uncond + 2.0 * (cond - uncond))) / 0.3 ** 0.5
    images, labels = model.decode(x0), torch.full((2,), 3)
    distance = 0.0
    for net, target in zip(nets, real[3]):
        ours = torch.cat([a.flatten() for a in param_grads(net, images, labels, True)])
        distance = distance + 1 - F.cosine_similarity(ours, torch.cat([b.flatten() for b in target]), dim=0)
    grad, = torch.autograd.grad(distance, zz)
    rms = lambda v: v.flatten(1).pow(2).mean(1).sqrt().view(-1, 1, 1, 1)  # noqa: E731
    expected = 5.0 * 0.7 ** 0.5 * 0.0015 * rms(noise) / rms(grad) * grad
    igd = InfluenceConfig(weight=5.0, scaling="igd", distance="flat", through="denoiser")
    term = InfluenceGuidance(igd, nets, real)
    assert torch.allclose(term(state), expected, rtol=1e-4, atol=1e-7)
    # the sampler hands the term its guided prediction as a function of z_t
    cfg = dataclasses.replace(setup[1], steps=3, ipc=2, batch_size=2)
    guided = sample_latents(model, 3, 2, cfg, [term])
    assert torch.isfinite(guided).all() and not torch.equal(guided, sample_latents(model, 3, 2, cfg))
