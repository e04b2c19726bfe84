"""Spiking neurons on SpikingJelly 0.0.0.0.14: the leaky integrate-and-fire neuron of Rathi et al. with a leak
knob, and the paper's piecewise-linear surrogate gradient.

Dynamics of :class:`LeakyLIFNode` (soft reset, no input decay)::

    h[t] = leak * v[t-1] + I[t]            charge  (leak = 1: integrate-and-fire)
    s[t] = H(h[t] - v_th)                  fire    (surrogate gradient in backward)
    v[t] = h[t] - v_th * s[t]              soft reset by the threshold

In SpikingJelly's terms this is ``LIFNode(tau=1/(1-leak), decay_input=False, v_reset=None)``, which is what lets
``backend='cupy'`` run SpikingJelly's CuPy LIF kernel (its ``decay`` is ``1 - leak``) and the IF kernel at leak 1.

Unlike SpikingJelly's LIF/IF, whose ``eval()`` path is a hard step with no gradient, this neuron always takes the
surrogate path when gradients are wanted (so attacks on an ``eval()`` model get input gradients), and a
no-autograd path under ``torch.no_grad()``.

The dynamics are written once, as the methods :meth:`LeakyLIFNode.charge` and :meth:`LeakyLIFNode.reset_after_spike`
(the spike is ``H(h - v_th)``): single-step, the multistep torch loop and its backward (autograd through them) all
run them, so a variant overrides one method (:class:`HardResetLIFNode`). A subclass may instead override SpikingJelly's
own step hooks (``neuronal_charge`` / ``neuronal_fire`` / ``neuronal_reset``): then single-step, multistep and
``store_v_seq`` all run SpikingJelly's step loop through them (decided per class, :meth:`LeakyLIFNode.overrides_step_hooks`),
so every path sees one neuron. The C++ kernel (CPU) and SpikingJelly's CuPy kernels are opt-in fast paths, taken
only by a class that keeps the default dynamics, and tested against this reference. How the spikes are
differentiated is a :class:`BackwardRule` the neuron may be given (``node.backward_rule``, set by the attacks'
gradient modes); without one, surrogate BPTT with ``surrogate_function``.

One file per job: :mod:`.lif` (the neuron, its variant, the ``NEURONS`` registry, helpers over networks),
:mod:`.surrogates`, :mod:`.rules` (backward rules, recomputable currents), :mod:`.fused` (the fused BPTT node and its
memory tricks), :mod:`.cupy_backend` (SpikingJelly's CuPy kernels, patched per kernel). A neuron variant goes in
:mod:`.lif` (or the user's own file) plus one :func:`register_neuron` line.
"""

from .cupy_backend import cupy_available
from .lif import (NEURONS, STEP_HOOKS, HardResetLIFNode, LeakyLIFNode, build_neuron, neuron_name, register_neuron, set_leak,
                  spiking_neurons, supports_backward_rules)
from .rules import RECOMPUTABLE, BackwardRule, RecomputableCurrent
from .surrogates import PiecewiseLinear, build_surrogate, surrogate_derivative, surrogate_spec

__all__ = [
    "BackwardRule", "HardResetLIFNode", "LeakyLIFNode", "NEURONS", "PiecewiseLinear", "RECOMPUTABLE",
    "RecomputableCurrent", "STEP_HOOKS", "build_neuron", "build_surrogate", "cupy_available", "neuron_name",
    "register_neuron", "set_leak", "spiking_neurons", "supports_backward_rules", "surrogate_derivative",
    "surrogate_spec",
]
