"""G_W: pull each new latent so that {latents already made for the class} + {new ones}
matches the class's pool of real latents in entropic OT (the paper's OTG term)."""

from __future__ import annotations

import torch

from ..config import OTGuidanceConfig
from ..ot import entropic_ot
from .common import WarmStarts, current_latent, guidance_step
from .pool import real_latent_pools
from .registry import GuidanceTerm, TermInputs, register_term


class OTGuidance(GuidanceTerm):
    name = "ot"

    def __init__(self, cfg: OTGuidanceConfig, pools: dict[int, torch.Tensor]):
        super().__init__(cfg)
        self.pools = pools
        self._warm = WarmStarts()

    def delta(self, state) -> torch.Tensor:
        real = self.pools[state.class_index].to(state.z)
        current = current_latent(state, self.cfg.input).detach().requires_grad_(True)
        with torch.enable_grad():
            value, plan = entropic_ot(torch.cat([state.memory, current]), real, self.cfg.reg, self.cfg.cost,
                                      warmstart=self._warm.get(state.class_index, state), max_iter=self.cfg.max_iter,
                                      tol=self.cfg.tol)
            grad, = torch.autograd.grad(value, current)
        self._warm.put(state.class_index, state, plan.potentials)
        return guidance_step(grad, self.cfg.weight, "OT", state)  # relative: the paper gives no formula for beta_1


def build(cfg: OTGuidanceConfig, inputs: TermInputs) -> OTGuidance:
    pools = real_latent_pools(inputs.model, inputs.data, cfg.pool_size, cfg.pool_select, cfg.pool_seed,
                              inputs.cache_dir, inputs.classes, inputs.quiet)
    return OTGuidance(cfg, pools)


register_term("ot", build)
