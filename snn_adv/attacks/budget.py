r"""Minimal-norm attacks (FAB, DeepFool, CW) read at a fixed budget, and a gradient rescaler for them.

A minimal-norm attack returns, per sample, the smallest perturbation it found that changes the prediction, of any
size. Robust accuracy at a budget counts a sample as fooled only when that perturbation fits the budget:
:func:`within_budget` keeps each adversarial image whose ``||x_adv - x||_p <= eps`` and gives back the clean image
otherwise, which makes the attack an ordinary eps-ball attack the evaluation engine can score and check.

Minimal-norm attacks take linear steps ``f / ||grad f||``: a surrogate input gradient much smaller than the true
sensitivity (deep SNNs: about 50x at gamma 0.3) makes them overshoot and report false robustness.
:class:`GradientScaled` multiplies the logits' input gradient by a constant and leaves the logits (so the
prediction and every gradient sign) exactly as they were.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..validation import check_fraction, check_positive

__all__ = ["BudgetedAttack", "GradientScaled", "NORMS", "perturbation_norm", "within_budget"]

NORMS = ("Linf", "L2")


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``||delta||_inf`` or ``||delta||_2`` of [N, ...] perturbations."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


class BudgetedAttack:
    """``attack`` whose outputs outside the ``norm`` ball of radius ``eps`` are replaced by the clean images.

    Has ``model``, ``norm`` and ``eps`` (the radius in that norm) like a torchattacks attack.
    """

    def __init__(self, attack: Any, eps: float, norm: str = "Linf"):
        if not hasattr(attack, "model") or not callable(attack):
            raise TypeError(f"argument 'attack': must be an attack with a .model, got {type(attack).__name__}")
        if norm not in NORMS:
            raise ValueError(f"argument 'norm' = {norm!r}: must be one of {', '.join(NORMS)}")
        self.attack, self.norm, self.model = attack, norm, attack.model
        self.eps = check_fraction("eps", eps) if norm == "Linf" else check_positive("eps", eps)
        self.seed: Optional[int] = getattr(attack, "seed", None)

    def settings(self) -> Dict[str, Any]:
        inner = self.attack.settings() if hasattr(self.attack, "settings") else {"name": type(self.attack).__name__}
        return {"name": f"{inner['name']}@budget", "norm": self.norm, "eps": self.eps, "attack": inner}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if hasattr(self.attack, "seed") and self.seed is not None:
            self.attack.seed = self.seed
        adversarial = self.attack(images, labels).detach()
        inside = perturbation_norm(adversarial - images, self.norm) <= self.eps * (1 + 1e-6)
        return torch.where(inside.view(-1, *([1] * (images.dim() - 1))), adversarial, images)


def within_budget(attack: Any, eps: float, norm: str = "Linf") -> BudgetedAttack:
    """``attack`` counted at the budget ``||x_adv - x||_norm <= eps`` (outputs outside it give the clean image).

    To compare an L2 attack with L-inf PGD at ``eps``, use the L2 ball ``eps * sqrt(d)`` (d = values per image): it
    contains the L-inf ball, so a sound L2 attack fools at least the samples PGD fools.
    """
    return BudgetedAttack(attack, eps, norm)


class GradientScaled(nn.Module):
    r"""``model`` with its logits' input gradient multiplied by ``scale`` and its logits unchanged::

        logits = z.detach() + scale * (z - z.detach()),   z = model(x)

    in the forward pass ``z - z.detach()`` is exactly 0, so the logits, their argmax and every gradient sign are
    those of ``model``; ``d logits / dx = scale * dz/dx``. Give it to minimal-norm attacks (DeepFool, CW, FAB) on a
    spiking network whose surrogate gradient is too small (``scale`` about the ratio of the ANN twin's input
    gradient norm to the SNN's).
    """

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model = model
        self.scale = check_positive("scale", scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        return logits.detach() + self.scale * (logits - logits.detach())
