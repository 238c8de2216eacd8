"""G_I (IGD): make the surrogate's training gradient on the decoded predicted image match
the mean gradient of real images of the class, over checkpoints of its training. Its step is
k * sqrt(1 - alpha_bar_t) * reference * g / |g|, IGD's adaptive rho_t: the reference is the
sampler update's norm (scaling relative) or, as IGD's code has it, 0.0015 times the norm of the
predicted noise (scaling igd; RMS(eps) / RMS(g) there, the same ratio)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import InfluenceConfig
from ..data import LabelledData, class_subset, to_unit
from ..errors import UserError
from ..io import generator
from ..surrogate import load_trajectory
from .common import guidance_step
from .registry import GuidanceTerm, TermInputs, register_term


IGD_NOISE_SHARE = 0.0015  # IGD's code: rho_t's numerator is 0.0015 * RMS of the predicted noise
THROUGH = ("x0", "denoiser")  # influence.through: where the gradient is taken


def _layer_distance(grads, target) -> torch.Tensor:
    """Ours: each parameter tensor's gradient matched on its own, 1 - cosine summed over tensors."""
    return sum(1 - F.cosine_similarity(g.flatten(), t.flatten(), dim=0) for g, t in zip(grads, target))


def _flat_distance(grads, target) -> torch.Tensor:
    """IGD's code: 1 - cosine of all parameters' gradients as one vector (its mean over checkpoints
    is this sum up to a scale, which the step's normalisation removes)."""
    flat = [torch.cat([g.flatten() for g in gs]) for gs in (grads, target)]
    return 1 - F.cosine_similarity(flat[0], flat[1], dim=0)


DISTANCES = {"layers": _layer_distance, "flat": _flat_distance}  # influence.distance


def param_grads(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, create_graph: bool):
    loss = F.cross_entropy(net(images), labels)
    return torch.autograd.grad(loss, [p for p in net.parameters()], create_graph=create_graph)


def real_gradients(surrogates: list[torch.nn.Module], data: LabelledData, per_class: int, seed: int, device):
    """{class: [per-checkpoint list of mean parameter gradients]} over real images of the class."""
    out = {}
    for c in range(data.num_classes):
        idx = class_subset(data.train, c, per_class, generator(seed, "influence", c))
        x = to_unit(data.train.get(idx.sort().values), device)
        y = torch.full((len(x),), c, device=device)
        with torch.enable_grad():
            out[c] = [[g.detach() for g in param_grads(net, x, y, False)] for net in surrogates]
    return out


class InfluenceGuidance(GuidanceTerm):
    name = "influence"

    def __init__(self, cfg: InfluenceConfig, surrogates: list[torch.nn.Module], real: dict):
        super().__init__(cfg)
        self.surrogates = surrogates
        self.real = real

    def delta(self, state) -> torch.Tensor:
        match = DISTANCES[self.cfg.distance]
        with torch.enable_grad():
            leaf, x0 = self._clean_latent(state)
            images = state.model.decode(x0)
            labels = torch.full((len(x0),), state.class_index, device=x0.device)
            distance = 0.0
            for net, target in zip(self.surrogates, self.real[state.class_index]):
                distance = distance + match(param_grads(net, images, labels, create_graph=True), target)
            grad, = torch.autograd.grad(distance, leaf)
        weight = self.cfg.weight * math.sqrt(1 - state.alpha_bar)  # IGD's adaptive rho_t
        return guidance_step(grad, weight, "influence", state, self.cfg.scaling, IGD_NOISE_SHARE * state.noise)

    def _clean_latent(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """(the latent the gradient is taken at, the predicted clean latent): x0 itself, or z_t
        through the denoiser's guided prediction and x0's formula (through: denoiser, as IGD's
        code differentiates; one more denoiser forward and backward)."""
        if self.cfg.through == "x0":
            x0 = state.x0.detach().requires_grad_(True)
            return x0, x0
        z = state.z.detach().requires_grad_(True)
        return z, state.model.clean(state.predict(z), z, state.alpha_bar)


def build(cfg: InfluenceConfig, inputs: TermInputs) -> InfluenceGuidance:
    device = inputs.model.device
    surrogates, info = load_trajectory(cfg.surrogate, device)
    if info["class_names"] != inputs.data.class_names:
        raise UserError(f"the surrogate in {cfg.surrogate} was trained on other classes; "
                        "retrain it with `otdistill train-surrogate CONFIG --force`")
    return InfluenceGuidance(cfg, surrogates, real_gradients(surrogates, inputs.data, cfg.real_per_class, cfg.seed,
                                                             device))


register_term("influence", build, family="igd")
