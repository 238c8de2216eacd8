"""Class-conditional sampling over a diffusers scheduler, with pluggable guidance terms.

A guidance term is any callable `term(state) -> delta` that returns the amount to subtract
from the sampler's next latent; it sees the whole SamplerState (and owns its scaling, e.g.
relative to the sampler's own update). The loop below never changes when a term is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .config import SampleConfig
from .io import generator
from .models.generator import LatentDiffusion


@dataclass
class SamplerState:
    z: torch.Tensor  # current noisy latents z_t, (B, C, h, w)
    t: int  # diffusion timestep
    step_index: int  # position in the respaced schedule, 0 = noisiest
    num_steps: int
    x0: torch.Tensor  # the sampler's predicted clean latents
    update: torch.Tensor  # the sampler's own step, z_{t-1} - z_t
    alpha_bar: float
    class_index: int
    memory: torch.Tensor  # latents already generated for this class, (M, C, h, w)
    model: LatentDiffusion


GuidanceTerm = Callable[[SamplerState], torch.Tensor]


def predict_noise(model: LatentDiffusion, z: torch.Tensor, t, class_index: int, cfg_scale: float) -> torch.Tensor:
    """The DiT's noise prediction with classifier-free guidance (one batched forward)."""
    n = len(z)
    labels = torch.tensor([model.label(class_index)] * n + [model.null_class] * n, device=z.device)
    timesteps = torch.full((2 * n,), int(t), device=z.device, dtype=torch.long)
    # a DiT trained with learned variance (DiT-XL/2) also outputs sigma channels: keep the noise
    eps = model.dit(torch.cat([z, z]), timestep=timesteps, class_labels=labels).sample[:, :z.shape[1]]
    cond, uncond = eps.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def sample_latents(model: LatentDiffusion, class_index: int, n: int, cfg: SampleConfig,
                   terms: Sequence[GuidanceTerm] = (), window: tuple[int, int] | None = None,
                   memory: torch.Tensor | None = None, chunk: int = 0, start: torch.Tensor | None = None) -> torch.Tensor:
    """Draw n latents of one class. Noise comes from a generator seeded by (seed, class, chunk),
    so a class's latents do not depend on which other classes run, or where. With `start`
    (n latents, e.g. D4M's prototypes), sampling begins from them noised to the step where
    cfg.init_strength of the schedule remains."""
    device = next(model.dit.parameters()).device
    sched = model.noise_scheduler(cfg.scheduler)
    sched.set_timesteps(cfg.steps)
    g = generator(cfg.seed, "sample", class_index, chunk)
    noise = torch.randn((n, *model.latent_shape), generator=g).to(device)
    first = 0
    if start is None:
        z = noise * sched.init_noise_sigma
    else:
        first = cfg.steps - max(1, round(cfg.steps * cfg.init_strength))
        z = sched.add_noise(start.to(device), noise, sched.timesteps[first:first + 1])
    memory = memory if memory is not None else z.new_zeros((0, *model.latent_shape))
    lo, hi = window if window is not None else (0, cfg.steps)
    for i, t in enumerate(sched.timesteps[first:], start=first):
        with torch.no_grad():
            eps = predict_noise(model, z, t, class_index, cfg.cfg_scale)
            # DDPM draws its variance noise from `generator`; DDIM (eta=0) ignores it.
            out = sched.step(eps, t, z, generator=g, return_dict=True)
        z_next = out.prev_sample
        if terms and lo <= i < hi:
            state = SamplerState(z, int(t), i, cfg.steps, out.pred_original_sample, z_next - z,
                                 float(sched.alphas_cumprod[int(t)]), class_index, memory, model)
            for term in terms:
                z_next = z_next - term(state)
        z = z_next
    return z


def latents_to_uint8(model: LatentDiffusion, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        images = model.decode(latents)
    return images.mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


def sample_class(model: LatentDiffusion, class_index: int, cfg: SampleConfig,
                 terms: Sequence[GuidanceTerm] = (), window: tuple[int, int] | None = None,
                 prototypes: torch.Tensor | None = None) -> torch.Tensor:
    """All IPC images of one class as uint8 (IPC, C, H, W); chunks of sample.batch_size, each
    chunk seeing the latents of the chunks before it as the class memory."""
    done = []
    for chunk, start in enumerate(range(0, cfg.ipc, cfg.batch_size)):
        n = min(cfg.batch_size, cfg.ipc - start)
        memory = torch.cat(done) if done else None
        init = prototypes[start:start + n] if prototypes is not None else None
        done.append(sample_latents(model, class_index, n, cfg, terms, window, memory, chunk, init))
    return latents_to_uint8(model, torch.cat(done))
