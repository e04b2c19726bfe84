"""Run every attack (ours, torchattacks', any library's) on a user's own spiking network: SpikingJelly with stock
neurons, snnTorch or Norse (:mod:`snn_adv.frameworks`).

torchattacks' contract is "a module mapping [0, 1] images to logits, put in ``eval()`` during the attack". Stock
SpikingJelly 0.0.0.0.14 ``LIFNode``/``IFNode`` take a hard step with no gradient in ``eval()``, so attacks on them
silently see zero gradients. :func:`adapt` wraps the network as a :class:`~snn_adv.classifier.SpikingClassifier`
(normalise, encode, reset state every forward, mean over T) whose forward switches *only the neurons* to training
mode (surrogate path; no effect on their forward spikes) and then gives each its mode back, so dropout and batch
norm stay in eval and the model's modes after the attack are what they were before.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn

from ..classifier import SpikingClassifier
from ..encoding import Encoder
from ..frameworks import FRAMEWORKS, framework_body, framework_of
from ..neurons import spiking_neurons

__all__ = ["AdaptedSpikingClassifier", "adapt", "neurons_in_training_mode"]


@contextlib.contextmanager
def neurons_in_training_mode(net: nn.Module) -> Iterator[None]:
    """Switch every SpikingJelly neuron of ``net`` to training mode for the block (surrogate gradients), then back."""
    nodes = [(n, n.training) for n in spiking_neurons(net)]
    for node, _ in nodes:
        node.training = True
    try:
        yield
    finally:
        for node, mode in nodes:
            node.training = mode


class AdaptedSpikingClassifier(SpikingClassifier):
    """A :class:`SpikingClassifier` over a network of stock SpikingJelly neurons, differentiable in ``eval()``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with neurons_in_training_mode(self.body):
            return super().forward(images)


def adapt(
    network: nn.Module,
    encoder: Optional[Encoder] = None,
    timesteps: int = 8,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    output: str = "spikes",
    **kwargs,
) -> SpikingClassifier:
    """Wrap a user's spiking ``network`` as a classifier of images in [0, 1] for every attack and the protocol.

    The framework is recognised by the network's neurons (:func:`snn_adv.frameworks.framework_of`):

    - **SpikingJelly** (multistep, ``[T, N, C, H, W] -> [T, N, K]``): an :class:`AdaptedSpikingClassifier`, which
      keeps surrogate gradients under ``eval()`` (stock neurons of SpikingJelly 0.0.0.0.14 have none there).
    - **snnTorch** (neurons with ``init_hidden=True``, one call per timestep) and **Norse** (``out, state =
      network(x, state)``, cells or sequence neurons): a :class:`SpikingClassifier` over
      :class:`~snn_adv.frameworks.SnnTorchBody` / :class:`~snn_adv.frameworks.NorseBody`; ``output`` picks
      snnTorch's readout of a ``(spk, mem)`` output (``'spikes'``: spike counts, ``'membrane'``).

    The result maps images to ``mean_t network(encoder((x - mean)/std))[t]``, resets neuron state every forward
    and shares ``network``'s parameters (device detection by ``next(model.parameters())`` works). ``mean``/``std``
    default to the framework's input convention (:data:`~snn_adv.frameworks.FRAMEWORKS`: ``0.5, 0.5`` for signed
    spikes on SpikingJelly, ``0, 1`` for rate coding on the others); the encoder defaults to our
    :class:`~snn_adv.encoding.PoissonEncoder` (straight-through gradient). Extra keyword arguments go to
    :class:`SpikingClassifier` (``in_channels``, ``input_size``...).

    :raises ValueError: when ``network`` has no spiking neuron, or (SpikingJelly) a layer in single-step mode.
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"argument 'network' must be a torch.nn.Module, got {type(network).__name__}")
    framework = framework_of(network)
    if framework is None:
        raise ValueError("argument 'network': has no spiking neuron (SpikingJelly, snnTorch or Norse); for a "
                         "conventional network use AnnClassifier")
    default_mean, default_std = FRAMEWORKS[framework]
    mean, std = mean if mean is not None else default_mean, std if std is not None else default_std
    if framework != "spikingjelly":
        return SpikingClassifier(framework_body(network, framework, output), encoder, timesteps, mean, std, **kwargs)
    if output != "spikes":
        raise ValueError(f"argument 'output' = {output!r}: applies to snnTorch networks; a SpikingJelly network's "
                         "logits are its output layer's (readout='spikes' adds IF output neurons)")
    single = sorted({type(m).__name__ for m in network.modules() if getattr(m, "step_mode", "m") != "m"})
    if single:
        raise ValueError(
            f"argument 'network': layers {single} are in single-step mode; the adapter feeds [T, N, ...] at once, "
            "call spikingjelly.activation_based.functional.set_step_mode(network, 'm') first"
        )
    return AdaptedSpikingClassifier(network, encoder, timesteps, mean, std, **kwargs)
