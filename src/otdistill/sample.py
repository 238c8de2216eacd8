"""Class-conditional sampling over a diffusers scheduler, with pluggable guidance terms.

A guidance term (guidance.GuidanceTerm: a name, its config section, its own timing) is
called as `term(state) -> delta`, the amount to subtract from the sampler's next latent; it
sees the whole SamplerState (and owns its scaling, e.g. relative to the sampler's own
update). The loop below only calls terms, so it never changes when a term is added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .config import SampleConfig
from .errors import UserError
from .io import generator
from .models.generator import Generator

if TYPE_CHECKING:  # named in annotations only: importing guidance would load POT and the surrogate
    from .guidance.registry import GuidanceTerm


@dataclass
class SamplerState:
    """What a guidance term sees: one class's latents at one step."""

    z: torch.Tensor  # current noisy latents z_t, (B, C, h, w)
    t: int  # diffusion timestep
    step_index: int  # position in the respaced schedule, 0 = noisiest
    num_steps: int
    x0: torch.Tensor  # the sampler's predicted clean latents
    update: torch.Tensor  # the sampler's own step, z_{t-1} - z_t
    alpha_bar: float
    class_index: int
    memory: torch.Tensor  # latents already generated for this class, (M, C, h, w)
    model: Generator
    # (term, step, class, all-finite flag) per guidance gradient, checked once after the loop:
    # a check per step would be a GPU -> host sync per step
    checks: list = field(default_factory=list)
    noise: torch.Tensor | None = None  # the noise the sampler's (guided) prediction stands for
    # that guided prediction as a function of z_t (differentiable), for a term that differentiates
    # through the denoiser
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None


def sample_group(model: Generator, classes: Sequence[int], n: int, cfg: SampleConfig,
                 terms: Sequence[GuidanceTerm] = (), window: tuple[int, int] | None = None,
                 memories: Sequence[torch.Tensor | None] | None = None, chunk: int = 0,
                 starts: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """Draw n latents of each class in `classes` with one DiT forward pass per step for all of
    them. Noise, the scheduler's variance noise and guidance stay per class (a generator seeded
    by (seed, class, chunk)), so a class's latents do not depend on the other classes beyond
    the float arithmetic of the shared forward pass. The scheduler reads the prediction as
    the generator was trained to make it (noise or velocity), with CFG on cfg.cfg_channels; DDPM
    reads a learned-sigma DiT's variance. With a start (n latents, e.g. D4M's
    prototypes), sampling begins from them noised to where cfg.init_strength of the schedule
    remains."""
    device = model.device
    k = len(classes)
    memories = memories or [None] * k
    starts = starts or [None] * k
    scheds, gens, zs = [], [], []
    first = 0 if starts[0] is None else cfg.steps - max(1, round(cfg.steps * cfg.init_strength))
    for c, start in zip(classes, starts):
        # one per class: a scheduler may keep state
        sched = model.noise_scheduler(cfg.scheduler, cfg.steps, cfg.spacing)
        g = generator(cfg.seed, "sample", c, chunk)
        noise = torch.randn((n, *model.latent_shape), generator=g).to(device)
        zs.append(noise * sched.init_noise_sigma if start is None
                  else sched.add_noise(start.to(device), noise, sched.timesteps[first:first + 1]))
        scheds.append(sched)
        gens.append(g)
    memories = [m if m is not None else zs[0].new_zeros((0, *model.latent_shape)) for m in memories]
    rows = [c for c in classes for _ in range(n)]
    lo, hi = window if window is not None else (0, cfg.steps)
    checks: list = []
    variance = model.reads_variance(cfg.scheduler)
    for i, t in enumerate(scheds[0].timesteps[first:], start=first):
        with torch.no_grad():
            pred = model.predict(torch.cat(zs), t, rows, cfg.cfg_scale, cfg.cfg_channels, variance).split(n)
        for j, (c, sched, g) in enumerate(zip(classes, scheds, gens)):
            z = zs[j]
            with torch.no_grad():
                # DDPM draws its variance noise from `g` (and splits off the variance channels);
                # DDIM (eta=0) ignores it.
                out = sched.step(pred[j], t, z, generator=g, return_dict=True)
            z_next = out.prev_sample
            if terms and lo <= i < hi:
                alpha_bar = float(sched.alphas_cumprod[int(t)])
                state = SamplerState(z, int(t), i, cfg.steps, out.pred_original_sample, z_next - z, alpha_bar, c,
                                     memories[j], model, checks,
                                     model.predicted_noise(pred[j][:, :z.shape[1]], z, alpha_bar),
                                     lambda v, c=c, t=t: model.predict(v, t, c, cfg.cfg_scale, cfg.cfg_channels))
                for term in terms:
                    z_next = z_next - term(state)
            zs[j] = z_next
    _raise_if_not_finite(checks)
    return zs


def _raise_if_not_finite(checks: list) -> None:
    if not checks or bool(torch.stack([ok for *_, ok in checks]).all()):
        return
    name, step, c, _ = next(check for check in checks if not bool(check[3]))
    raise UserError(f"{name} guidance produced a non-finite gradient at step {step} of class {c}; "
                    "its regularisation is probably too small (raise it)")


def sample_latents(model: Generator, class_index: int, n: int, cfg: SampleConfig,
                   terms: Sequence[GuidanceTerm] = (), window: tuple[int, int] | None = None,
                   memory: torch.Tensor | None = None, chunk: int = 0, start: torch.Tensor | None = None) -> torch.Tensor:
    """n latents of one class (sample_group of one)."""
    return sample_group(model, [class_index], n, cfg, terms, window, [memory], chunk, [start])[0]


def latents_to_uint8(model: Generator, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        images = model.decode(latents)
    return images.mul(255).round().clamp(0, 255).to(torch.uint8).cpu()


def sample_classes(model: Generator, classes: Sequence[int], cfg: SampleConfig,
                   terms: Sequence[GuidanceTerm] = (), window: tuple[int, int] | None = None,
                   prototypes: dict[int, torch.Tensor] | None = None,
                   made: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """All IPC images of each class as uint8 (IPC, C, H, W), the classes sharing each forward
    pass; chunks of sample.batch_size per class, each chunk seeing the latents of the chunks
    before it, after any latents `made` gives for the class (e.g. of real images it keeps), as
    the class memory."""
    done: dict[int, list[torch.Tensor]] = {c: [] for c in classes}
    made = made or {}
    for chunk, start in enumerate(range(0, cfg.ipc, cfg.batch_size)):
        n = min(cfg.batch_size, cfg.ipc - start)
        seen = {c: ([made[c]] if c in made else []) + done[c] for c in classes}
        memories = [torch.cat(seen[c]) if seen[c] else None for c in classes]
        inits = [prototypes[c][start:start + n] for c in classes] if prototypes is not None else None
        for c, z in zip(classes, sample_group(model, classes, n, cfg, terms, window, memories, chunk, inits)):
            done[c].append(z)
    return {c: latents_to_uint8(model, torch.cat(done[c])) for c in classes}


def sample_class(model: Generator, class_index: int, cfg: SampleConfig,
                 terms: Sequence[GuidanceTerm] = (), window: tuple[int, int] | None = None,
                 prototypes: torch.Tensor | None = None) -> torch.Tensor:
    """All IPC images of one class (sample_classes of one)."""
    protos = {class_index: prototypes} if prototypes is not None else None
    return sample_classes(model, [class_index], cfg, terms, window, protos)[class_index]
