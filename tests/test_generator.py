import dataclasses

import pytest
import torch

from otdistill.config import AutoencoderConfig
from otdistill.errors import UserError
from otdistill.models.generator import build_autoencoder, load_generator
from otdistill.sample import sample_class, sample_classes, sample_latents


def test_trained_generator_loads_from_diffusers_folders(trained):
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    path = trained.generator.path
    assert isinstance(AutoencoderKL.from_pretrained(f"{path}/autoencoder"), AutoencoderKL)
    assert isinstance(DiTTransformer2DModel.from_pretrained(f"{path}/dit"), DiTTransformer2DModel)
    model = load_generator(path)
    assert model.num_classes == 10 and model.latent_shape == (4, 8, 8)
    # the encoder/decoder pair maps images to latents and back at the right shapes
    x = torch.rand(3, 1, 16, 16)
    z = model.encode(x)
    assert z.shape == (3, 4, 8, 8)
    assert model.decode(z).shape == x.shape


def test_sampling_is_deterministic_and_class_independent(trained):
    model = load_generator(trained.generator.path)
    a = sample_class(model, 3, trained.sample)
    b = sample_class(model, 3, trained.sample)
    assert a.dtype == torch.uint8 and a.shape == (trained.sample.ipc, 1, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_class(model, 4, trained.sample))


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_classes_sharing_a_forward_pass_get_their_own_samples(trained, scheduler):
    """Several classes per DiT pass: each class keeps its own noise, variance noise, label and
    guidance state, so it matches sampling it alone up to the float arithmetic of the batch."""
    from otdistill.config import OTGuidanceConfig
    from otdistill.guidance import OTGuidance

    model = load_generator(trained.generator.path)
    cfg = dataclasses.replace(trained.sample, scheduler=scheduler, ipc=3, batch_size=2)  # 2 chunks: memory used
    pools = {c: torch.randn(6, *model.latent_shape, generator=torch.Generator().manual_seed(c)) for c in (2, 5, 7)}
    ot = OTGuidance(OTGuidanceConfig(weight=0.5), pools)
    group = sample_classes(model, [2, 5, 7], cfg, [ot], None)
    for c in (2, 5, 7):
        alone = sample_class(model, c, cfg, [ot], None)
        assert (group[c].int() - alone.int()).abs().max() <= 1  # uint8: at most a rounding step
    assert not torch.equal(group[2], group[5])


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_guidance_terms_plug_in_without_changing_the_sampler(trained, scheduler):
    model = load_generator(trained.generator.path)
    cfg = dataclasses.replace(trained.sample, scheduler=scheduler)
    plain = sample_latents(model, 2, 2, cfg)
    calls = []

    def zero(state):
        calls.append(state.step_index)
        assert state.x0.shape == state.z.shape == state.update.shape
        return torch.zeros_like(state.z)

    same = sample_latents(model, 2, 2, cfg, terms=[zero], window=(1, 3))
    assert torch.equal(plain, same)  # a term that returns nothing changes nothing
    assert calls == [1, 2]  # and acts only inside its window of steps

    def push(state):
        return 0.5 * torch.ones_like(state.z)

    assert not torch.equal(plain, sample_latents(model, 2, 2, cfg, terms=[push]))


def test_bad_shapes_and_folders_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not divisible"):
        build_autoencoder(AutoencoderConfig(block_out_channels=[8, 8, 8], norm_num_groups=4), 1, 10)
    with pytest.raises(UserError, match="train-generator"):
        load_generator(tmp_path)


def test_d4m_prototype_start_stays_near_its_prototypes(trained):
    """sample.init=prototypes: latents start from given prototypes noised part-way; with a small
    init_strength the result stays much closer to them than a sample from pure noise does."""
    model = load_generator(trained.generator.path)
    cfg = dataclasses.replace(trained.sample, init_strength=0.2, steps=10)
    proto = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(5))
    near = sample_latents(model, 1, 3, cfg, start=proto)
    free = sample_latents(model, 1, 3, cfg)
    assert (near - proto).norm() < 0.5 * (free - proto).norm()
    assert torch.equal(near, sample_latents(model, 1, 3, cfg, start=proto))  # seeded
