r"""Square attack (Andriushchenko et al., ECCV 2020): random search over square patches, gradient-free.

Our own because the protocol's gradient-free check must not depend on torchattacks (an optional extra that pins
old ``requests``), and because on a Poisson model the margin of each query is averaged over ``eot`` draws.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from ..validation import check_fraction, check_positive_int
from .apgd import margin
from .base import Attack, project

__all__ = ["Square"]

#: (iteration threshold on the 10,000-query scale, divisor of p_init) of the reference schedule
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


class Square(Attack):
    r"""L-infinity Square attack with the margin loss ``z_y - max_{j != y} z_j`` (to minimise).

    Start: vertical stripes ``x + eps * (+-1)`` (one sign per channel and column). Each query changes one square
    window per sample (side ``round(sqrt(p * H * W))``, ``p`` from ``p_init`` by the reference schedule rescaled to
    ``queries``) to ``x_best + 2*eps*(+-1)`` per channel, projected back to the ball, and keeps it when the margin
    falls. Samples whose margin is negative (misclassified) stop querying. Gradient-free: the gradient mode does not
    matter; a stochastic model's margin is the mean over ``eot`` draws of each query.

    :param queries: model queries per sample, the start included (>= 1).
    :param p_init: initial fraction of pixels in a window (0.8 in the reference code).
    """

    name = "square"

    def __init__(self, model, eps: float = 8 / 255, queries: int = 1000, p_init: float = 0.8, **kwargs):
        super().__init__(model, eps, **kwargs)
        self.queries = check_positive_int("queries", queries)
        self.p_init = check_fraction("p_init", p_init)

    def settings(self) -> Dict:
        settings = {**super().settings(), "queries": self.queries, "p_init": self.p_init}
        settings.pop("grad_mode")
        return settings

    def window_fraction(self, iteration: int) -> float:
        """``p`` at ``iteration``: ``p_init`` halved at each threshold of the schedule (on the 10,000 scale)."""
        scaled = int(iteration / self.queries * 10000)
        divisor = 512
        for threshold, value in _SCHEDULE:
            if scaled <= threshold:
                divisor = value
                break
        return self.p_init / divisor

    def sign(self, shape) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=self.generator).float() * 2 - 1

    @torch.no_grad()
    def margins(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin(sum(self.model(x) for _ in range(self.eot)) / self.eot, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = images.shape
        stripes = self.sign((n, channels, 1, width)).to(images)
        best = project(images + self.eps * stripes, images, self.eps)
        best_margin = self.margins(best, labels)
        for iteration in range(1, self.queries):
            rows = (best_margin >= 0).nonzero()[:, 0]
            if len(rows) == 0:
                break
            side = min(max(int(round(math.sqrt(self.window_fraction(iteration) * height * width))), 1), height - 1 or 1)
            top = torch.randint(0, height - side + 1, (len(rows),), generator=self.generator)
            left = torch.randint(0, width - side + 1, (len(rows),), generator=self.generator)
            signs = self.sign((len(rows), channels, 1, 1)).to(images)
            ys = torch.arange(height)[None, :, None]
            xs = torch.arange(width)[None, None, :]
            window = ((ys >= top[:, None, None]) & (ys < (top + side)[:, None, None])
                      & (xs >= left[:, None, None]) & (xs < (left + side)[:, None, None])).to(images.device)
            candidate = torch.where(window[:, None], best[rows] + 2 * self.eps * signs, best[rows])
            candidate = project(candidate, images[rows], self.eps)
            value = self.margins(candidate, labels[rows])
            improved = value < best_margin[rows]
            best[rows[improved]] = candidate[improved]
            best_margin[rows[improved]] = value[improved]
        return best
