"""Generator training: resumable to the same weights, continued when steps are raised, and the
recipe options (backend, space, prediction, weighting, schedule) end to end on digits-tiny."""

import pytest
import torch
from conftest import tiny_config

from otdistill import train_generator as tg
from otdistill.context import RunContext
from otdistill.errors import UserError
from otdistill.models.generator import load_generator
from otdistill.pipeline import ensure_generator
from otdistill.sample import sample_class

UNET = ["generator.backend=unet", "generator.unet.block_out_channels=[16,32]", "generator.unet.attention=[false,true]",
        "generator.unet.norm_num_groups=8", "generator.unet.attention_head_dim=8"]


def _weights(path) -> dict:
    model = load_generator(path)
    parts = {"denoiser": model.denoiser} | ({"autoencoder": model.autoencoder} if model.autoencoder else {})
    return {f"{n}.{k}": v for n, m in parts.items() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_training_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, digits, monkeypatch):
    """Killed in the autoencoder, then in the denoiser: the third run ends where one run would."""
    common = ["generator.checkpoint_every=7", "generator.autoencoder.steps=12", "generator.diffusion.steps=16"]
    whole = tiny_config(tmp_path, f"generator.path={tmp_path / 'whole'}", *common, "generator.snapshot_steps=[5,16]")
    tg.train_generator(whole.generator, digits, "cpu", quiet=True)
    snapshots = tg.training_dir(whole.generator)
    assert load_generator(snapshots / "step-5").info["snapshot"]["step"] == 5
    final = {k: v for k, v in _weights(tmp_path / "whole").items() if k.startswith("denoiser")}
    assert _same(final, {k: v for k, v in _weights(snapshots / "step-16").items() if k.startswith("denoiser")})

    cut = tiny_config(tmp_path, f"generator.path={tmp_path / 'cut'}", *common)
    saved = tg.Resumable.save
    for part in ["autoencoder", "denoiser"]:
        def killed(self, step, part=part):  # the process dies right after this part's first checkpoint
            saved(self, step)
            if self.part == part:
                raise KeyboardInterrupt
        monkeypatch.setattr(tg.Resumable, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            tg.train_generator(cut.generator, digits, "cpu", quiet=True)
        assert not (tmp_path / "cut").exists()
    monkeypatch.setattr(tg.Resumable, "save", saved)
    tg.train_generator(cut.generator, digits, "cpu", quiet=True)
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "cut"))
    info = load_generator(tmp_path / "cut").info
    assert info["train_seconds"]["total"] > 0 and info["recipe"]["diffusion"]["steps"] == 16


def test_raising_the_steps_continues_a_finished_training(tmp_path, digits):
    cfg = tiny_config(tmp_path, f"generator.path={tmp_path / 'g'}", "generator.diffusion.steps=10")
    ensure_generator(RunContext(cfg, quiet=True, data=digits))
    before = _weights(cfg.generator.path)
    more = tiny_config(tmp_path, f"generator.path={tmp_path / 'g'}", "generator.diffusion.steps=14")
    ensure_generator(RunContext(more, quiet=True, data=digits))  # `run`: an existing generator is used as it is
    assert _same(before, _weights(cfg.generator.path))
    ensure_generator(RunContext(more, quiet=True, data=digits), extend=True)  # `train-generator`: trained on
    after = _weights(cfg.generator.path)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("autoencoder"))
    assert not _same(before, after)
    assert load_generator(cfg.generator.path).info["recipe"]["diffusion"]["steps"] == 14
    assert torch.load(tg.training_dir(more.generator) / "denoiser.pt", weights_only=False)["step"] == 14
    # without its saved state (a shipped checkpoint) it is not silently retrained from scratch
    moved = tg.training_dir(more.generator).rename(tmp_path / "elsewhere")
    longer = tiny_config(tmp_path, f"generator.path={tmp_path / 'g'}", "generator.diffusion.steps=18")
    with pytest.raises(UserError, match="training state.*--force"):
        ensure_generator(RunContext(longer, quiet=True, data=digits), extend=True)
    moved.rename(tg.training_dir(more.generator))
    # a different recipe cannot continue from that state
    other = tiny_config(tmp_path, f"generator.path={tmp_path / 'g'}", "generator.diffusion.steps=20",
                        "generator.diffusion.lr=0.01")
    with pytest.raises(UserError, match="different recipe.*--force"):
        ensure_generator(RunContext(other, quiet=True, data=digits), extend=True)


@pytest.mark.parametrize("extra", [
    UNET + ["generator.diffusion.prediction=v_prediction", "generator.diffusion.loss_weighting=min_snr",
            "generator.diffusion.noise_schedule=cosine"],
    ["generator.space=pixel", "generator.dit.patch_size=4", "generator.diffusion.prediction=v_prediction"],
], ids=["latent-unet-v-minsnr-cosine", "pixel-dit-v"])
def test_recipe_options_train_record_and_sample(tmp_path, digits, trained, extra):
    # the latent case reuses the session's trained autoencoder as it is
    reuse = [] if "generator.space=pixel" in extra else [f"generator.autoencoder.pretrained={trained.generator.path}"]
    cfg = tiny_config(tmp_path, f"generator.path={tmp_path / 'g'}", "generator.checkpoint_every=0", *extra, *reuse)
    model = ensure_generator(RunContext(cfg, quiet=True, data=digits))
    info = model.info
    if reuse:
        shipped = load_generator(trained.generator.path).autoencoder.state_dict()
        assert _same(shipped, model.autoencoder.state_dict()) and "autoencoder" not in info["train_seconds"]
    assert info["prediction"] == "v_prediction" and info["recipe"]["diffusion"] == vars(cfg.generator.diffusion)
    assert model.noise_scheduler("ddim").config.prediction_type == "v_prediction"
    assert model.noise_scheduler("ddim").config.beta_schedule == info["recipe"]["diffusion"]["noise_schedule"].replace(
        "cosine", "squaredcos_cap_v2")
    if "generator.space=pixel" in extra:
        assert model.autoencoder is None and model.latent_shape == (1, 16, 16)
        assert not (tmp_path / "g" / "autoencoder").exists()
    images = sample_class(load_generator(tmp_path / "g"), 2, cfg.sample)
    assert images.shape == (cfg.sample.ipc, 1, 16, 16) and images.dtype == torch.uint8


def test_dit_labels_drop_once_per_sample_not_per_block(tmp_path):
    """diffusers' DiT drops labels in each block's own embedding; ours never does, so the
    trainer's single drop trains exactly the all-null input CFG samples with."""
    from diffusers.models.embeddings import LabelEmbedding

    from otdistill.models.generator import backend

    dit = backend("dit").build(tiny_config(tmp_path).generator, 4, 8, 10).train()
    embeds = [m for m in dit.modules() if isinstance(m, LabelEmbedding)]
    assert len(embeds) == 2 and all(m.dropout_prob == 0 for m in embeds)
    labels = torch.arange(10)
    assert all(torch.equal(m.token_drop(labels) if m.dropout_prob else labels, labels) for m in embeds)
    z, t = torch.randn(10, 4, 8, 8), torch.full((10,), 50)
    assert torch.equal(dit(z, timestep=t, class_labels=labels).sample, dit(z, timestep=t, class_labels=labels).sample)


def test_min_snr_weights(tmp_path):
    alpha_bar = torch.tensor([0.999, 0.5, 0.001])
    snr = alpha_bar / (1 - alpha_bar)
    cfg = tiny_config(tmp_path, "generator.diffusion.loss_weighting=min_snr").generator.diffusion
    eps = tg.loss_weights(alpha_bar, cfg)
    assert torch.allclose(eps, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert eps[1] == 1 and eps[2] == 1 and eps[0] < 0.01  # only the near-clean timesteps are down-weighted


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sampler_follows_the_prediction_type(prediction, schedule, monkeypatch):
    """An oracle denoiser for data that is one point per class (x0 = label + 1): whatever it
    predicts (noise or velocity), DDIM must land on that point."""
    from diffusers import DDPMScheduler

    from otdistill.config import SampleConfig
    from otdistill.models import generator as gen
    from otdistill.sample import sample_latents

    alphas = DDPMScheduler(num_train_timesteps=1000, **gen.SCHEDULES[schedule]).alphas_cumprod

    def oracle(m, z, t, labels):
        a = alphas[t].view(-1, 1, 1, 1)
        x0 = (labels.float() + 1).view(-1, 1, 1, 1).expand_as(z)
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0

    class Net(torch.nn.Module):
        config = type("C", (), {"in_channels": 2, "sample_size": 4})

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))  # gives the generator its device

    monkeypatch.setitem(gen.BACKENDS, "oracle", gen.Backend(lambda *a: Net(), lambda p: Net(), oracle, lambda m: 3))
    model = gen.Generator(None, Net(), {"class_names": ["a", "b", "c"], "backend": "oracle", "space": "pixel",
                                    "prediction": prediction, "noise_schedule": schedule, "num_train_timesteps": 1000})
    z = sample_latents(model, 1, 3, SampleConfig(steps=20, cfg_scale=1.0))
    assert torch.allclose(z, torch.full_like(z, 2.0), atol=1e-3)
