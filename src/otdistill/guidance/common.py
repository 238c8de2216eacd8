"""What guidance terms share: the latent they act on and how they scale their step."""

from __future__ import annotations

import torch

from ..errors import UserError


INPUTS = ("x0", "zt")  # what a term may measure: the predicted clean latent, or z_t itself
SCALINGS = ("relative", "igd")  # how a term sizes its step (guidance_step)


def current_latent(state, which: str) -> torch.Tensor:
    """The latent a term measures: the predicted clean latent (default; real latents are clean)
    or the noisy z_t itself."""
    if which == "x0":
        return state.x0
    if which == "zt":
        return state.z
    raise UserError(f"unknown guidance input '{which}'; use one of {', '.join(INPUTS)}")


def guidance_step(grad: torch.Tensor, weight: float, name: str, state, scaling: str = "relative",
                  igd_reference: torch.Tensor | None = None) -> torch.Tensor:
    """A term's step, per latent, by its `scaling` (SCALINGS):
    - relative (ours): weight * |sampler update| * grad / |grad|, so one weight works across
      models, resolutions and steps; d x0 / d z_t is taken as the identity up to a scale, which
      this normalisation absorbs;
    - igd (IGD's sampling code, so its published scales work as published): weight *
      |igd_reference| * grad / |grad| for a term that names a reference, the raw weight * grad
      for one that does not.
    A non-finite gradient is recorded in state.checks; the sampler raises once its loop ends."""
    state.checks.append((name, state.step_index, state.class_index, torch.isfinite(grad).all()))
    if scaling not in SCALINGS:
        raise UserError(f"unknown guidance scaling '{scaling}'; use one of {', '.join(SCALINGS)}")
    reference = state.update if scaling == "relative" else igd_reference
    if reference is None:
        return weight * grad
    shape = (-1,) + (1,) * (grad.ndim - 1)
    g_norm = grad.flatten(1).norm(dim=1).view(shape)
    r_norm = reference.flatten(1).norm(dim=1).view(shape)
    return weight * r_norm * grad / g_norm.clamp_min(1e-12)


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
