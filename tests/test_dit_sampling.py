"""Sampling a converted original DiT the way DiT's and IGD's sample.py do: DDPM respaced to 50
steps with the learned variance of the sigma channels, CFG on the first three latent channels.
The expected values are written here from the equations of DiT's diffusion/gaussian_diffusion.py
and respace.py (posterior mean and variance, learned-range interpolation, space_timesteps),
never from the library under test."""

import dataclasses

import numpy as np
import pytest
import torch
from test_pretrained import CLASSES, HEADS, IN_CH, SIZE, original_dit_state_dict, original_forward

from otdistill.config import SampleConfig
from otdistill.errors import UserError
from otdistill.guidance import GuidanceTerm
from otdistill.io import generator
from otdistill.models.generator import Generator
from otdistill.models.pretrained import dit_from_original
from otdistill.sample import sample_latents

T = 1000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy shapes run fastest on one thread; restored after the module, since the other tests
    compare bytes with subprocesses that run on conftest's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dit():
    """A tiny learned-sigma DiT in pixel space (its 'latents' are what it denoises) and its weights."""
    sd = original_dit_state_dict(seed=3)
    info = {"class_names": [f"c{i}" for i in range(CLASSES)], "num_train_timesteps": T, "space": "pixel",
            "timestep_embedding": "dit-original"}
    return Generator(None, dit_from_original(sd, heads=HEADS).eval(), info), sd


def respaced(steps: int) -> list[int]:
    """space_timesteps(1000, str(steps)): one section, stride (T - 1) / (steps - 1), rounded."""
    return [round(i * (T - 1) / (steps - 1)) for i in range(steps)][::-1]


class Recorder(GuidanceTerm):
    """Sees every step's state and changes nothing."""

    name = "record"

    def __init__(self):
        super().__init__(None)
        self.steps = []

    def delta(self, state):
        self.steps.append((state.step_index, state.t, state.z.clone(), state.update.clone()))
        return torch.zeros_like(state.z)


def test_ddpm_steps_are_dits_learned_range_posterior(dit):
    """Every step of sample_latents is DiT's p_sample: the posterior mean of the respaced chain at
    the CFG-guided x0 (first three channels guided), plus exp(log variance / 2) times the noise
    drawn from the class's generator, the log variance interpolated by the sigma channels between
    log beta_tilde and log beta of the respaced betas."""
    model, sd = dit
    cfg = SampleConfig(ipc=2, batch_size=2, steps=50, scheduler="ddpm", spacing="dit", cfg_scale=4.0,
                       cfg_channels="first3")
    record = Recorder()
    sample_latents(model, 1, 2, cfg, [record], window=(0, cfg.steps))
    g = generator(cfg.seed, "sample", 1, 0)
    draws = [torch.randn((2, IN_CH, SIZE, SIZE), generator=g) for _ in range(cfg.steps + 1)]  # start, then steps
    ts = respaced(50)
    assert [t for _, t, _, _ in record.steps] == ts and ts[0] == 999 and ts[-1] == 0

    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, T, dtype=np.float64))  # DiT's linear schedule
    for i, t, z, update in record.steps:
        ab_t, ab_prev = ab[t], (ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        beta = 1 - ab_t / ab_prev  # the respaced beta
        beta_tilde = beta * (1 - ab_prev) / (1 - ab_t)
        tt = torch.full((2,), t)
        with torch.no_grad():
            cond = original_forward(sd, z, tt, torch.full((2,), 1)).double()
            uncond = original_forward(sd, z, tt, torch.full((2,), CLASSES)).double()
        eps = torch.cat([uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3]), cond[:, 3:IN_CH]], dim=1)
        frac = (cond[:, IN_CH:] + 1) / 2  # the sigma channels: the conditional branch's
        x0 = (z.double() - (1 - ab_t) ** 0.5 * eps) / ab_t ** 0.5
        mean = ab_prev ** 0.5 * beta / (1 - ab_t) * x0 + (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab_t) * z.double()
        log_var = frac * np.log(beta) + (1 - frac) * np.log(beta_tilde) if t > 0 else None
        expected = mean + torch.exp(0.5 * log_var) * draws[i + 1].double() if t > 0 else mean  # no noise at t = 0
        got = (z + update).double()
        assert ((got - expected).norm() / expected.norm()).item() < 1e-4, (i, t)


def test_cfg_guides_all_channels_or_the_first_three(dit):
    model, _ = dit
    z = torch.randn(2, IN_CH, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = model.forward(z, torch.tensor([700, 700]), torch.tensor([2, 2]), variance=True)
        uncond = model.forward(z, torch.tensor([700, 700]), torch.tensor([CLASSES, CLASSES]), variance=True)
        every = model.predict(z, 700, 2, 3.0)
        first3 = model.predict(z, 700, 2, 3.0, "first3", variance=True)
    guided = uncond + 3.0 * (cond - uncond)
    assert every.shape == z.shape and torch.allclose(every, guided[:, :IN_CH], atol=1e-5)
    assert first3.shape == cond.shape
    assert torch.allclose(first3[:, :3], guided[:, :3], atol=1e-5)
    assert torch.allclose(first3[:, 3:], cond[:, 3:], atol=1e-5)  # the fourth latent channel and the sigma channels
    with pytest.raises(UserError, match="cfg_channels.*all, first3"):
        model.predict(z, 700, 2, 3.0, "first4")


def test_spacings_and_ddim_stay_available(dit):
    model, _ = dit
    leading = model.noise_scheduler("ddpm", 50).timesteps.tolist()
    assert leading == list(range(980, -1, -20))  # diffusers' default: what the embedded recipes sample with
    assert model.noise_scheduler("ddpm", 50, "dit").timesteps.tolist() == respaced(50)
    assert model.noise_scheduler("ddpm", 250, "dit").timesteps.tolist() == respaced(250)  # DiT's default
    with pytest.raises(UserError, match="needs sample.scheduler=ddpm"):
        model.noise_scheduler("ddim", 50, "dit")
    # DDIM ignores the sigma channels of a learned-sigma DiT
    cfg = SampleConfig(ipc=2, batch_size=2, steps=5, scheduler="ddim", cfg_scale=4.0)
    assert not model.reads_variance("ddim") and model.reads_variance("ddpm")
    z = sample_latents(model, 0, 2, cfg)
    assert z.shape == (2, IN_CH, SIZE, SIZE) and torch.isfinite(z).all()


def test_spacing_dit_with_ddim_is_refused_at_load():
    from conftest import TINY

    from otdistill.config import load_config

    assert load_config(TINY).sample.spacing == "leading" and load_config(TINY).sample.cfg_channels == "all"
    with pytest.raises(UserError, match="sample.spacing: dit needs sample.scheduler=ddpm"):
        load_config(TINY, ["sample.scheduler=ddim", "sample.spacing=dit"])
    assert load_config(TINY, ["sample.scheduler=ddpm", "sample.spacing=dit"]).sample.spacing == "dit"
    assert dataclasses.replace(SampleConfig(), cfg_channels="first3").cfg_channels == "first3"


def test_the_imagenet_recipes_sampling_runs_on_a_tiny_learned_sigma_dit(dit):
    """configs/imagenet-1k.yaml's sample section (DDPM, DiT spacing, CFG on three channels, one
    latent at a time, IGD's deviation and influence with its own scaling, through the denoiser)."""
    from conftest import ROOT

    from otdistill.config import load_config
    from otdistill.guidance.deviation import DeviationGuidance
    from otdistill.guidance.influence import InfluenceGuidance, param_grads
    from otdistill.models.classifiers import Classifier
    from otdistill.sample import sample_class

    model, _ = dit
    cfg = dataclasses.replace(load_config(ROOT / "configs/imagenet-1k.yaml").sample, ipc=2, classes_per_pass=1)
    g = cfg.guidance
    assert (cfg.scheduler, cfg.spacing, cfg.cfg_channels, cfg.batch_size) == ("ddpm", "dit", "first3", 1)
    assert (g.deviation.scaling, g.influence.scaling, g.influence.through) == ("igd", "igd", "denoiser")
    torch.manual_seed(0)
    nets = [Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(IN_CH * SIZE * SIZE, CLASSES)),
                       [0.5] * IN_CH, [0.5] * IN_CH).eval()]
    real_images = torch.rand(8, IN_CH, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    real = {2: [[t.detach() for t in param_grads(nets[0], real_images, torch.full((8,), 2), False)]]}
    terms = [InfluenceGuidance(g.influence, nets, real), DeviationGuidance(g.deviation)]
    guided = sample_class(model, 2, cfg, terms, tuple(g.window))
    plain = sample_class(model, 2, cfg)
    assert guided.shape == plain.shape == (2, IN_CH, SIZE, SIZE) and not torch.equal(guided, plain)
    assert all(term.seconds > 0 for term in terms)
