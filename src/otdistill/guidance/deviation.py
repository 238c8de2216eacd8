"""G_D (IGD): push each new latent away from the most cosine-similar latent already
generated for its class, so the class's samples stay diverse. With scaling igd the step is
IGD's: gamma times the raw gradient of that cosine similarity (IGD measures z_t: input zt)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import DeviationConfig
from .common import current_latent, guidance_step
from .registry import GuidanceTerm, register_term


class DeviationGuidance(GuidanceTerm):
    name = "deviation"
    cfg: DeviationConfig

    def delta(self, state) -> torch.Tensor:
        memory = state.memory[-self.cfg.memory_size:]
        if len(memory) == 0:
            return torch.zeros_like(state.z)
        current = current_latent(state, self.cfg.input).detach().requires_grad_(True)
        with torch.enable_grad():
            sims = F.normalize(current.flatten(1), dim=1) @ F.normalize(memory.flatten(1), dim=1).T
            grad, = torch.autograd.grad(sims.max(dim=1).values.sum(), current)
        return guidance_step(grad, self.cfg.weight, "deviation", state, self.cfg.scaling)


register_term("deviation", lambda cfg, inputs: DeviationGuidance(cfg), family="igd")
