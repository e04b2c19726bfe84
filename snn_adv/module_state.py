"""Context managers that change a module's state for a block and always give it back: its train/eval modes and its
parameters' ``requires_grad`` flags. Low in the package (encoding, attacks, evaluation and training use them)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn

__all__ = ["frozen_parameters", "preserved_modes"]


@contextlib.contextmanager
def preserved_modes(model: nn.Module, training: bool = False) -> Iterator[None]:
    """Put ``model`` in ``train(training)`` for the block, then give every submodule its own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter of ``model`` requires a gradient in the block; each gets its own flag back afterwards. An attack
    wants the input gradient only: torch's own layers skip the weight gradient then anyway, but a custom autograd
    function (our spike layers, users' layers) computes every gradient its inputs were recorded to require."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
