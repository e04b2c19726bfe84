"""Backward rules: how the spikes are differentiated (the forward never changes), and the recipe by which a layer
lets a neuron recompute its input current instead of saving it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import torch

if TYPE_CHECKING:
    from .lif import LeakyLIFNode

__all__ = ["BackwardRule", "Derivative", "RECOMPUTABLE", "RecomputableCurrent", "recomputable_recipe",
           "spike_with_derivative"]

#: ``derivative(node, x_seq, h_seq) -> sg_seq``: the factor ``ds/dh`` at every step and membrane (like ``h_seq``).
Derivative = Callable[["LeakyLIFNode", torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackwardRule:
    """A backward rule given to a :class:`LeakyLIFNode` (``node.backward_rule``) in place of surrogate BPTT with its
    own ``surrogate_function``. The node differentiates its own dynamics (:meth:`LeakyLIFNode.charge`,
    :meth:`~LeakyLIFNode.reset_after_spike`), with the spike's derivative replaced by ``sg[t]``::

        s[t] = H(h[t] - v_th) in the forward, ds[t]/dh[t] = sg[t] in the backward

    :param derivative: ``sg_seq`` from the input currents and pre-reset membranes, called once per forward (with
        gradients enabled), so a rule may keep state across the forwards of an attack.
    :param temporal: keep the path through the membrane over time (BPTT); False detaches ``v[t-1]`` at every step.
    :param time_average: replace every step's input gradient by its mean over time.
    """

    derivative: Derivative
    temporal: bool = True
    time_average: bool = False


@dataclass(frozen=True)
class RecomputableCurrent:
    """How the layer that produced a neuron's input current recomputes it, bitwise, from what it keeps anyway (its
    1-byte input spikes and its weight): attached by that layer to its output (``RECOMPUTABLE``) when asked to
    (:func:`snn_adv.models.recompute_currents`), so that the neuron saves these instead of the current.

    :param tensors: what the neuron saves in the current's place (autograd checks their versions in the backward).
    :param recompute: ``recompute(*tensors)``, the current as the layer output it (no autograd).
    :param version: the output's version counter when tagged: an in-place change since voids the recipe.
    """

    tensors: Tuple[Optional[torch.Tensor], ...]
    recompute: Callable[..., torch.Tensor]
    version: int


#: the attribute of a layer's output that holds its :class:`RecomputableCurrent`
RECOMPUTABLE = "_snn_adv_recomputable"


def recomputable_recipe(x_seq: torch.Tensor) -> Optional[RecomputableCurrent]:
    """The recipe of ``x_seq`` when it is, unchanged, a whole contiguous view of a tagged layer output; else None."""
    base = x_seq if x_seq._base is None else x_seq._base
    recipe = getattr(base, RECOMPUTABLE, None)
    if (recipe is None or base._version != recipe.version or not x_seq.is_contiguous()
            or x_seq.numel() != base.numel() or x_seq.storage_offset() != base.storage_offset()):
        return None
    return recipe


def spike_with_derivative(h: torch.Tensor, v_th: float, sg: torch.Tensor) -> torch.Tensor:
    """``H(h - v_th)`` whose derivative with respect to ``h`` is ``sg`` (straight through: the bracket is 0)."""
    return (h >= v_th).to(h).detach() + (h - h.detach()) * sg
