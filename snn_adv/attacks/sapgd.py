r"""SA-PGD, stable adaptive PGD (Wang et al., arXiv 2512.22522), by default with their adaptive-sharpness surrogate
(ASSG): an Adam-like step on an L1-normalised gradient, clipped to the step size, for the non-smooth input
landscape of spiking networks."""
from __future__ import annotations

from typing import Dict, List

import torch

from ..neurons import spiking_neurons
from .apgd import APGD
from .base import project
from .gradients import ASSG

__all__ = ["SAPGD"]


class SAPGD(APGD):
    r"""L-infinity SA-PGD. From APGD's random start, with per-sample step ``eta`` (initially ``eps``)::

        m_k = b1*m_{k-1} + g_k / mean|g_k|,      v_k = b2*v_{k-1} + g_k^2 / mean(g_k^2)
        x_{k+1} = P(x_k + clip(eta * m_k / sqrt(v_k), -eta, eta))

    (means over a sample's coordinates; ``b1 = 0.5``, ``b2 = 0.8`` as in the reference code), and ``eta`` halved at
    every checkpoint of APGD's schedule. Best point, fooling and restarts as :class:`APGD` (cross-entropy loss).
    The default gradient mode is :class:`~snn_adv.attacks.gradients.ASSG` with the reference code's ``A = 0.425``;
    pass ``grad_mode=...`` for another; a model without spiking neurons gets its exact gradient.
    """

    name = "sapgd"
    initial_step = 1.0
    first_momentum, second_momentum = 0.5, 0.8

    def __init__(self, model, eps: float = 8 / 255, steps: int = 100, **kwargs):
        kwargs.setdefault("grad_mode", ASSG(vanishing=0.425) if spiking_neurons(model) else "bptt")
        super().__init__(model, eps, steps=steps, loss="ce", **kwargs)

    def settings(self) -> Dict:
        settings = super().settings()
        for unused in ("loss", "target_classes", "rho"):
            settings.pop(unused)
        return settings

    def update(self, x: torch.Tensor, images: torch.Tensor, grad: torch.Tensor, iteration: int,
               state: Dict[str, torch.Tensor]) -> torch.Tensor:
        dims = tuple(range(1, grad.dim()))
        normalised = grad / grad.abs().mean(dims, keepdim=True).clamp(min=1e-30)
        squared = grad * grad
        squared = squared / squared.mean(dims, keepdim=True).clamp(min=1e-30)
        state["m"] = normalised if iteration == 0 else self.first_momentum * state["m"] + normalised
        state["v"] = squared if iteration == 0 else self.second_momentum * state["v"] + squared
        step = state["step"]
        move = torch.max(torch.min(step * state["m"] / (state["v"].sqrt() + 1e-12), step), -step)
        return project(x + move, images, self.eps)

    def at_checkpoint(self, state: Dict[str, torch.Tensor], history: List[torch.Tensor], interval: int,
                      best: torch.Tensor, best_at_last: torch.Tensor) -> torch.Tensor:
        """Every sample halves its step; none goes back to its best point (the reference code's rule)."""
        state["step"] /= 2.0
        return torch.zeros_like(best, dtype=torch.bool)
