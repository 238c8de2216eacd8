"""Student losses. `fit` hands a loss the student's logits and a Targets: the hard labels
and, for the soft protocol, the teachers' logits on the very view the student saw.

The soft loss is a weighted sum of named terms (SoftLossConfig), so KL-only (RDED/SRe2L),
CE + MSE, and the paper's OTM (kappa_1 CE + kappa_2 MSE + beta_2 L_SD) are config changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import SoftLossConfig
from .errors import UserError
from .ot import pairwise_cost, sinkhorn


@dataclass
class Targets:
    hard: torch.Tensor  # (B,) class indices
    soft: torch.Tensor | None = None  # (B, K) teacher logits


def cross_entropy(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student, labels)


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2 (Hinton; RDED/SRe2L recipe)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def sinkhorn_logit_distance(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0,
                            eps: float = 0.1, iterations: int = 20) -> torch.Tensor:
    """L_SD: <P, C> with C_ij = |softmax(s_i/T) - softmax(t_j/T)|_1 over the B x B pairs of a
    batch and P its entropic plan (uniform marginals, a fixed number of Sinkhorn iterations),
    differentiated with the plan held fixed. It matches the batch of outputs to the batch of
    labels as a whole, so relations between samples count."""
    C = pairwise_cost(F.softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1), "l1")
    plan = sinkhorn(C, eps, max_iter=iterations, tol=0.0).plan
    return (plan * C).sum()


def soft_loss(cfg: SoftLossConfig):
    """The configured weighted sum as one loss(student, Targets)."""
    terms = {
        "kl": lambda s, t: kl_divergence(s, t.soft, cfg.temperature),
        "ce": lambda s, t: cross_entropy(s, t.hard),
        "mse": lambda s, t: F.mse_loss(s, t.soft),
        "sd": lambda s, t: sinkhorn_logit_distance(s, t.soft, cfg.sd_temperature, cfg.sd_eps, cfg.sd_iterations),
    }
    weights = {name: getattr(cfg, name) for name in terms if getattr(cfg, name) != 0}
    if not weights:
        raise UserError("student.soft_loss has every weight at 0; set kl, ce, mse or sd")

    def loss(student: torch.Tensor, targets: Targets) -> torch.Tensor:
        return sum(w * terms[name](student, targets) for name, w in weights.items())

    return loss


def hard_loss(student: torch.Tensor, targets: Targets) -> torch.Tensor:
    return cross_entropy(student, targets.hard)
