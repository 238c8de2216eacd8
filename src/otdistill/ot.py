"""The only module that talks to POT: ground costs, entropic plans, OT values.

Costs are torch tensors (differentiable); plans come from POT's log-domain Sinkhorn on the
detached cost, and values are differentiated by the envelope theorem (plan held fixed),
never by back-propagating through Sinkhorn iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import ot
import torch

from .errors import UserError

COSTS = ("l1", "sqeuclidean", "cosine")


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, metric: str = "l1") -> torch.Tensor:
    """(n, d) x (m, d) -> (n, m) ground costs."""
    x, y = x.flatten(1), y.flatten(1)
    if metric == "l1":
        return torch.cdist(x, y, p=1)
    if metric == "sqeuclidean":
        return (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2 * x @ y.T).clamp_min(0)
    if metric == "cosine":
        return 1 - torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    raise UserError(f"unknown ground cost '{metric}'; use one of {', '.join(COSTS)}")


@dataclass
class Plan:
    plan: torch.Tensor  # (n, m), rows sum to a, columns to b
    potentials: tuple[torch.Tensor, torch.Tensor]  # log-domain (log u, log v): a warm start for the next solve
    iterations: int


def sinkhorn(M: torch.Tensor, reg: float, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
             warmstart: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 1000,
             tol: float = 1e-9) -> Plan:
    """Entropic OT plan for cost M (detached), uniform weights by default."""
    M = M.detach()
    n, m = M.shape
    a = torch.full((n,), 1 / n, dtype=M.dtype, device=M.device) if a is None else a
    b = torch.full((m,), 1 / m, dtype=M.dtype, device=M.device) if b is None else b
    if warmstart is not None and (warmstart[0].shape != (n,) or warmstart[1].shape != (m,)):
        warmstart = None
    plan, log = ot.bregman.sinkhorn_log(a, b, M, reg, numItermax=max_iter, stopThr=tol, log=True,
                                        warn=False, warmstart=warmstart)
    return Plan(plan, (log["log_u"], log["log_v"]), int(log.get("niter", max_iter)))


def entropic_ot(x: torch.Tensor, y: torch.Tensor, reg: float, metric: str = "l1",
                warmstart: tuple[torch.Tensor, torch.Tensor] | None = None, normalise: bool = True,
                max_iter: int = 1000, tol: float = 1e-9) -> tuple[torch.Tensor, Plan]:
    """<P, C(x, y)> with P the entropic plan, differentiable in x and y by the envelope theorem.

    With `normalise`, the cost is divided by its mean before solving so `reg` is relative to
    the typical cost: one value then works across latent sizes and metrics."""
    C = pairwise_cost(x, y, metric)
    scale = C.detach().mean().clamp_min(1e-12) if normalise else 1.0
    res = sinkhorn(C / scale, reg, warmstart=warmstart, max_iter=max_iter, tol=tol)
    return (res.plan * C).sum(), res


def exact_ot(x: torch.Tensor, y: torch.Tensor, metric: str = "l1") -> float:
    """Unregularised OT cost (network simplex), for tests and metrics on small sets."""
    C = pairwise_cost(x, y, metric).detach().double()
    return float(ot.emd2(torch.full((len(x),), 1 / len(x), dtype=C.dtype), torch.full((len(y),), 1 / len(y), dtype=C.dtype), C))
