"""A module's state: context managers that change it for a block and always give it back (train/eval modes,
parameters' ``requires_grad`` flags), and the reset of neuron state before a forward. Low in the package (encoding,
classifiers, attacks, evaluation and training use them)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn
from spikingjelly.activation_based import base

__all__ = ["frozen_parameters", "preserved_modes", "reset_states"]


def reset_states(net: nn.Module) -> None:
    """Reset every neuron state in ``net``: each SpikingJelly memory module's ``reset()`` and each module's
    ``reset_state()`` (the bodies of :mod:`snn_adv.frameworks`: snnTorch and Norse networks).

    Why not ``functional.reset_net``: it calls ``reset()`` on any module that has an attribute of that name (every
    snnTorch neuron keeps a tensor called ``reset``: a TypeError), and SpikingJelly 2.x caches the modules it resets
    per network, so a neuron swapped in after the first reset is never reset again."""
    for module in net.modules():
        if isinstance(module, base.MemoryModule):
            module.reset()
        elif callable(getattr(module, "reset_state", None)):
            module.reset_state()


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
