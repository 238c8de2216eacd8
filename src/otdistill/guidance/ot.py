"""G_W: pull each new latent so that {latents already made for the class} + {new ones}
matches the class's pool of real latents in entropic OT (the paper's OTG term)."""

from __future__ import annotations

import time

import torch

from ..config import OTGuidanceConfig
from ..ot import entropic_ot
from .common import current_latent, relative_step


class OTGuidance:
    name = "ot"

    def __init__(self, cfg: OTGuidanceConfig, pools: dict[int, torch.Tensor]):
        self.cfg = cfg
        self.pools = pools
        self.seconds = 0.0  # time spent inside OT, for the overhead measurement
        self._warm = None
        self._key = None

    def __call__(self, state) -> torch.Tensor:
        start = time.perf_counter()
        real = self.pools[state.class_index].to(state.z)
        current = current_latent(state, self.cfg.input).detach().requires_grad_(True)
        with torch.enable_grad():
            value, plan = entropic_ot(torch.cat([state.memory, current]), real, self.cfg.reg, self.cfg.cost,
                                      warmstart=self._warm_start(state), max_iter=self.cfg.max_iter,
                                      tol=self.cfg.tol)
            grad, = torch.autograd.grad(value, current)
        # Potentials of the previous step start the next solve; reset per class and chunk so a
        # class's result never depends on which class ran before it.
        self._warm = plan.potentials
        delta = relative_step(grad, state.update, self.cfg.weight, "OT", state)
        self.seconds += time.perf_counter() - start
        return delta

    def _warm_start(self, state):
        key = (state.class_index, len(state.memory), len(state.z))
        if key != self._key:
            self._key, self._warm = key, None
        return self._warm
