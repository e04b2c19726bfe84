"""Fixtures shared by the attack and evaluation tests, on top of conftest's ``trained_pair`` (vgg-tiny ANN and its
converted SNN on real Fashion-MNIST). Import them into a test module: ``from attack_helpers import snn, ann, data``."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

#: T for attack tests: half the fixture's 32 (cost on CPU) keeps the converted SNN's accuracy (~75 %). At T = 8
#: (~60 %) surrogate BPTT no longer drives it to 0 at large eps: the self-checks flag that as possible masking.
TIMESTEPS = 16


@pytest.fixture
def snn(trained_pair):
    """The converted SNN (IF neurons, Poisson encoder seeded with 0) at T = ``TIMESTEPS``, eval mode."""
    trained_pair.snn.timesteps = TIMESTEPS
    return trained_pair.snn


@pytest.fixture
def ann(trained_pair):
    return trained_pair.ann


@pytest.fixture
def data(trained_pair):
    """32 real Fashion-MNIST test images in [0, 1] and their labels."""
    return trained_pair.x[:32], trained_pair.y[:32]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class _InputGradient(torch.autograd.Function):
    """Identity forward; backward maps the input gradient ``g`` by ``ctx.rule`` (a deliberately masked model)."""

    @staticmethod
    def forward(ctx, x, rule):
        ctx.rule = rule
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.rule(grad), None


MASKS = {
    # the attack walks downhill: accuracy rises with eps and never reaches 0
    "reversed": lambda g: -g,
    # the true gradient drowned in noise (torch's global stream, seeded per attack by the engine): one step is
    # nearly random, many steps or restarts add up the signal
    "noisy": lambda g: g + 4.0 * g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) / g[0].numel() ** 0.5 * torch.randn_like(g),
    # a surrogate gradient 10^4 times too small (signs intact): minimal-norm attacks overshoot
    "tiny": lambda g: 1e-4 * g,
}


class Masked(nn.Module):
    """``model`` with its input gradient replaced by ``MASKS[mask](g)``; the logits are unchanged."""

    def __init__(self, model: nn.Module, mask: str):
        super().__init__()
        self.model, self.rule = model, MASKS[mask]

    def forward(self, images):
        return self.model(_InputGradient.apply(images, self.rule))
