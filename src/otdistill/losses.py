"""Student losses. A loss maps (student logits, target) to a scalar; the target is the hard
label for the hard protocol and the teacher's logits on the same augmented view for the
soft protocol. Registered by name so a config can swap them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UserError


def cross_entropy(student: torch.Tensor, labels: torch.Tensor, **_) -> torch.Tensor:
    return F.cross_entropy(student, labels)


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0, **_) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2 (Hinton; RDED/SRe2L recipe)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


LOSSES = {"ce": cross_entropy, "kl": kl_divergence}
PROTOCOL_LOSS = {"hard": "ce", "soft": "kl"}


def get_loss(name: str):
    if name not in LOSSES:
        raise UserError(f"unknown student loss '{name}'; available: {', '.join(LOSSES)}")
    return LOSSES[name]
