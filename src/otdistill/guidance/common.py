"""What guidance terms share: the latent they act on and how they scale their step."""

from __future__ import annotations

import torch

from ..errors import UserError


INPUTS = ("x0", "zt")  # what a term may measure: the predicted clean latent, or z_t itself


def current_latent(state, which: str) -> torch.Tensor:
    """The latent a term measures: the predicted clean latent (default; real latents are clean)
    or the noisy z_t itself."""
    if which == "x0":
        return state.x0
    if which == "zt":
        return state.z
    raise UserError(f"unknown guidance input '{which}'; use one of {', '.join(INPUTS)}")


def relative_step(grad: torch.Tensor, update: torch.Tensor, weight: float, name: str, state) -> torch.Tensor:
    """weight * |sampler update| * grad / |grad|, per latent: one weight then works across
    models, resolutions and steps. d x0 / d z_t is taken as the identity up to a scale, which
    this normalisation absorbs. A non-finite gradient is recorded in state.checks; the sampler
    raises once its loop ends."""
    state.checks.append((name, state.step_index, state.class_index, torch.isfinite(grad).all()))
    shape = (-1,) + (1,) * (grad.ndim - 1)
    g_norm = grad.flatten(1).norm(dim=1).view(shape)
    u_norm = update.flatten(1).norm(dim=1).view(shape)
    return weight * u_norm * grad / g_norm.clamp_min(1e-12)


class WarmStarts:
    """Sinkhorn potentials kept per key (a class, or a class and a space) from one step to the
    next: a class's previous step starts its next solve; anything else (another chunk, a new
    call) starts cold, so a class's result never depends on what ran before."""

    def __init__(self):
        self._kept: dict = {}  # key -> ((memory size, batch size, step), potentials)

    def get(self, key, state):
        where, potentials = self._kept.get(key, (None, None))
        return potentials if where == (len(state.memory), len(state.z), state.step_index - 1) else None

    def put(self, key, state, potentials) -> None:
        self._kept[key] = ((len(state.memory), len(state.z), state.step_index), potentials)
