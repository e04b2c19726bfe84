"""A module's state: context managers that change it for a block and always give it back (train/eval modes,
parameters' ``requires_grad`` flags), and the reset of neuron state before a forward. Low in the package (encoding,
classifiers, attacks, evaluation and training use them)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn

__all__ = ["frozen_parameters", "preserved_modes", "reset_states"]


def reset_states(net: nn.Module) -> None:
    """Reset every neuron state in ``net``: SpikingJelly's contract, ``reset()`` on each module that has that method
    (its memory modules, users' stateful modules, the bodies of :mod:`snn_adv.frameworks` for snnTorch and Norse).

    Why not ``functional.reset_net`` itself: it calls ``reset`` on any module with an attribute of that name, method
    or not (every snnTorch neuron keeps a tensor called ``reset``: a TypeError), and SpikingJelly 2.x caches the
    modules it resets per network, so a neuron swapped in after the first reset is never reset again."""
    for module in net.modules():
        reset = getattr(module, "reset", None)
        if callable(reset):
            reset()


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
