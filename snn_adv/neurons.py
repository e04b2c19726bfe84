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
"""
from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import numpy as np
import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron, surrogate

from ._lif_cpu import lif_kernel
from .validation import check_leak, check_positive

__all__ = [
    "BackwardRule", "HardResetLIFNode", "LeakyLIFNode", "NEURONS", "PiecewiseLinear", "RECOMPUTABLE",
    "RecomputableCurrent", "STEP_HOOKS", "build_neuron", "build_surrogate", "cupy_available", "neuron_name",
    "register_neuron", "set_leak", "spiking_neurons", "supports_backward_rules", "surrogate_derivative",
    "surrogate_spec",
]

#: SpikingJelly's per-step hooks of a neuron: a class overriding one runs its step loop on every path
STEP_HOOKS = ("neuronal_charge", "neuronal_fire", "neuronal_reset", "single_step_forward")


# --------------------------------------------------------------------------------------------------------------
# Surrogate gradient
# --------------------------------------------------------------------------------------------------------------
def _piecewise_linear_derivative(x: torch.Tensor, gamma: float, width: float) -> torch.Tensor:
    """``gamma/width * max(0, 1 - |x|/width)``."""
    return (1.0 - x.abs() / width).clamp_(min=0.0).mul_(gamma / width)


class _PiecewiseLinearSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: float, width: float) -> torch.Tensor:
        if x.requires_grad:
            ctx.save_for_backward(x)
            ctx.gamma, ctx.width = gamma, width
        return surrogate.heaviside(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output * _piecewise_linear_derivative(x, ctx.gamma, ctx.width), None, None


class PiecewiseLinear(surrogate.SurrogateFunctionBase):
    r"""The paper's linear surrogate (Bellec et al. 2018, used by Rathi et al. and Sharmin et al.).

    Forward: Heaviside ``s = H(x)`` with ``x = u - v_th``. Backward::

        ds/dx = gamma / width * max(0, 1 - |x| / width)

    With ``width = v_th`` this is exactly the paper's ``ds/du = gamma * max(0, 1 - |u/v_th - 1|) / v_th``
    (its code applies ``gamma*max(0, 1-|z|)`` to ``z = u/v_th - 1``, and ``dz/du = 1/v_th``); the default
    ``width = 1`` matches it for unit thresholds. The area under ``ds/dx`` is ``gamma``. ``alpha`` (SpikingJelly's
    name for the surrogate's parameter) is ``gamma``.
    """

    def __init__(self, gamma: float = 0.3, width: float = 1.0, spiking: bool = True):
        super().__init__(check_positive("gamma", gamma), spiking)
        self.width = check_positive("width", width)

    @property
    def gamma(self) -> float:
        return self.alpha

    def extra_repr(self) -> str:
        return f"gamma={self.alpha}, width={self.width}, spiking={self.spiking}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spiking:
            return _PiecewiseLinearSpike.apply(x, self.alpha, self.width)
        return self.primitive(x)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth function whose derivative the surrogate is (0 below -width, gamma above width)."""
        w, g = self.width, self.alpha
        left = g * (x + w).clamp(min=0.0) ** 2 / (2 * w * w)
        right = g / 2 + g / w * (x - x * x / (2 * w))
        return torch.where(x < 0, torch.where(x < -w, torch.zeros_like(x), left), torch.where(x > w, torch.full_like(x, g), right))

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """Closed-form ``ds/dx`` (used by the fused neuron's backward)."""
        return _piecewise_linear_derivative(x, self.alpha, self.width)

    def cuda_codes(self, y: str, x: str, dtype: str) -> str:
        """CUDA source for SpikingJelly's CuPy kernels: ``y = ds/dx`` at ``x`` (fp32 ``float`` or fp16 ``half2``)."""
        scale, inv_width = self.alpha / self.width, 1.0 / self.width
        if dtype == "float":
            return f"{y} = {scale}f * fmaxf(0.0f, 1.0f - fabsf({x}) * {inv_width}f);"
        if dtype == "half2":
            return (
                f"{y} = __hmul2(__float2half2_rn({scale}f), __hmax2(__float2half2_rn(0.0f), "
                f"__hsub2(__float2half2_rn(1.0f), __hmul2(__habs2({x}), __float2half2_rn({inv_width}f)))));"
            )
        raise NotImplementedError(dtype)


def surrogate_derivative(surrogate_function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``ds/dx`` of any surrogate at ``x``: its closed form when it has one, else autograd through its forward.

    The autograd route works for every SpikingJelly surrogate and for user-written ones (any module whose
    forward is a Heaviside step with a custom backward).
    """
    derivative = getattr(surrogate_function, "derivative", None)
    if derivative is not None:
        return derivative(x)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(surrogate_function(x), x, torch.ones_like(x))
    return grad


# --------------------------------------------------------------------------------------------------------------
# Backward rules: how the spikes are differentiated (the forward never changes)
# --------------------------------------------------------------------------------------------------------------
#: ``derivative(node, x_seq, h_seq) -> sg_seq``: the factor ``ds/dh`` at every step and membrane (like ``h_seq``).
Derivative = Callable[["LeakyLIFNode", torch.Tensor, torch.Tensor], torch.Tensor]


def surrogate_spec(function: Callable) -> Dict[str, Any]:
    """The JSON record :func:`build_surrogate` rebuilds ``function`` from: ours or a class of SpikingJelly's
    ``surrogate`` module (its ``alpha`` and ``spiking``); ValueError for any other (it could not be rebuilt)."""
    cls = type(function)
    if cls is PiecewiseLinear:
        return {"name": "PiecewiseLinear", "gamma": function.gamma, "width": function.width, "spiking": function.spiking}
    if getattr(surrogate, cls.__name__, None) is cls and hasattr(function, "alpha"):
        return {"name": cls.__name__, "alpha": function.alpha, "spiking": function.spiking}
    raise ValueError(f"surrogate {cls.__qualname__} cannot be recorded: use PiecewiseLinear or a class of "
                     "spikingjelly.activation_based.surrogate")


def build_surrogate(spec: Mapping[str, Any]) -> Callable:
    """A surrogate from ``{"name": ..., **kwargs}``: ``PiecewiseLinear`` (ours) or any class of SpikingJelly's
    ``surrogate`` module (``ATan``, ``Sigmoid``, ``Erf``...)."""
    spec = dict(spec)
    name = spec.pop("name")
    if name == "PiecewiseLinear":
        return PiecewiseLinear(**spec)
    cls = getattr(surrogate, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"argument 'surrogate' = {name!r}: must be 'PiecewiseLinear' or a class of spikingjelly's "
                         "surrogate module")
    return cls(**spec)


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


def _recomputable(x_seq: torch.Tensor) -> Optional[RecomputableCurrent]:
    """The recipe of ``x_seq`` when it is, unchanged, a whole contiguous view of a tagged layer output; else None."""
    base = x_seq if x_seq._base is None else x_seq._base
    recipe = getattr(base, RECOMPUTABLE, None)
    if (recipe is None or base._version != recipe.version or not x_seq.is_contiguous()
            or x_seq.numel() != base.numel() or x_seq.storage_offset() != base.storage_offset()):
        return None
    return recipe


def _spike_with_derivative(h: torch.Tensor, v_th: float, sg: torch.Tensor) -> torch.Tensor:
    """``H(h - v_th)`` whose derivative with respect to ``h`` is ``sg`` (straight through: the bracket is 0)."""
    return (h >= v_th).to(h).detach() + (h - h.detach()) * sg


# --------------------------------------------------------------------------------------------------------------
# Fused multistep LIF (torch backend): one autograd node over all T that saves only the input current.
# On CPU with the default dynamics, surrogate and rule, the C++ kernel of ``_lif_cpu`` (one pass over memory each
# way; checked against the reference by the tests); otherwise the reference: the node's own charge/fire/reset in
# a torch loop, differentiated by autograd step by step (any surrogate, any rule, any variant, CPU or GPU).
# --------------------------------------------------------------------------------------------------------------
def _cpu_kernel(x_seq: torch.Tensor):
    """The compiled CPU kernel when it applies to ``x_seq`` (a CPU float32/float64 tensor), else None."""
    if x_seq.device.type != "cpu" or x_seq.dtype not in (torch.float32, torch.float64):
        return None
    return lif_kernel()


def _reference_count(tensor: torch.Tensor) -> int:
    """Python references to ``tensor`` as seen from the frame that calls this (CPython's count)."""
    return sys.getrefcount(tensor)


class _EngineReferenceProbe(torch.autograd.Function):
    """Two outputs like :class:`_MultiStepLIF`; its backward records how many Python references an incoming
    gradient (or, when it is a view, the buffer it views) has when only the autograd engine holds it: a CPython and
    torch detail, so measured once per process, not assumed."""

    counts: Dict[str, int] = {}

    @staticmethod
    def forward(ctx, x):
        return x * 1, x.new_zeros(())

    @staticmethod
    def backward(ctx, grad, grad_other):
        kind = "view" if grad._base is not None else "tensor"
        _EngineReferenceProbe.counts[kind] = _reference_count(grad if grad._base is None else grad._base)
        return grad


def _engine_references(kind: str) -> int:
    """References of a gradient (``kind='tensor'``), or of the buffer a gradient views (``'view'``), that nobody
    but the autograd engine holds."""
    if not _EngineReferenceProbe.counts:
        x = torch.zeros(2, 3, requires_grad=True)
        with torch.enable_grad():
            (_EngineReferenceProbe.apply(x)[0] * 2).sum().backward()  # a gradient of its own
            (_EngineReferenceProbe.apply(x)[0].flatten() * 2).sum().backward()  # a view of the flattened one's
    return _EngineReferenceProbe.counts[kind]


def _may_overwrite(grad: torch.Tensor, references: int, like: torch.Tensor) -> bool:
    """Whether the incoming gradient ``grad`` (with ``references`` counted at the top of a backward) is scratch the
    backward may write its own result over: held by the engine alone (no user hook or ``grad_outputs`` keeps it or
    the buffer it views), a whole dense buffer of ``like``'s dtype and size, and no graph is being built of the
    backward."""
    if references > _engine_references("tensor") or torch.is_grad_enabled() or grad.requires_grad:
        return False
    if grad._base is not None and _reference_count(grad._base) > _engine_references("view"):
        return False
    return (grad.dtype == like.dtype and grad.numel() == like.numel() and grad.is_contiguous()
            and grad.storage_offset() == 0 and grad.untyped_storage().nbytes() == grad.numel() * grad.element_size())


class _MultiStepLIF(torch.autograd.Function):
    """BPTT over T steps of ``node``'s dynamics. Saves the input ``I`` (or, where its layer tagged it
    :class:`RecomputableCurrent`, what recomputes it) and ``v[-1]`` (plus ``sg`` under a rule); the backward
    recomputes the membranes and differentiates each step (or, on the kernel, the closed form)::

        dL/dh[t] = dL/ds[t] * sg[t] + dL/dv[t] * dv[t]/dh[t],   dL/dv[t-1] = dL/dh[t] * dh[t]/dv[t-1]
        dL/dI[t] = dL/dh[t] * dh[t]/dI[t],                      dL/dleak = sum_t dL/dh[t] * dh[t]/dleak
    """

    @staticmethod
    def forward(ctx, x_seq, v_init, leak, node: "LeakyLIFNode"):
        leak_value, rule = float(leak), node.backward_rule
        sg_fn = node.surrogate_function
        spike_seq, v_last, h_seq = node.run_dynamics(x_seq, v_init, leak_value, store_h=rule is not None)
        # the kernel's closed-form backward: for the default dynamics, surrogate and rule (else the reference)
        ctx.kernel = (_cpu_kernel(x_seq) if rule is None and node.has_default_dynamics()
                      and type(sg_fn) is PiecewiseLinear and sg_fn.spiking else None)
        ctx.surrogate_args = (sg_fn.alpha, sg_fn.width) if ctx.kernel is not None else None
        if ctx.kernel is not None:
            _engine_references("tensor")  # probe now, outside any backward
        sg_seq = rule.derivative(node, x_seq, h_seq) if rule is not None else None
        recipe = _recomputable(x_seq)
        ctx.recompute, ctx.input_shape = (None, None) if recipe is None else (recipe.recompute, x_seq.shape)
        ctx.save_for_backward(v_init, sg_seq, *((x_seq,) if recipe is None else recipe.tensors))
        ctx.leak, ctx.leak_is_tensor, ctx.node, ctx.rule = leak_value, isinstance(leak, torch.Tensor), node, rule
        return spike_seq, v_last

    @staticmethod
    def backward(ctx, grad_spike_seq, grad_v_last):
        references = _reference_count(grad_spike_seq)  # first: before this frame makes references of its own
        v_init, sg_seq, *kept = ctx.saved_tensors
        x_seq = kept[0] if ctx.recompute is None else ctx.recompute(*kept).view(ctx.input_shape)
        node, T = ctx.node, x_seq.shape[0]
        if grad_spike_seq is None:
            grad_spike_seq, references = torch.zeros_like(x_seq), 0
        grad_v = grad_v_last if grad_v_last is not None else torch.zeros_like(x_seq[0])
        if ctx.kernel is not None:
            # the outgoing gradient over the incoming one where nobody else holds it: one [T, ...] buffer less at
            # the peak of BPTT, and no fresh pages to fault in
            in_place = _may_overwrite(grad_spike_seq, references, x_seq)
            grad_v = grad_v.to(x_seq.dtype).reshape(-1).clone()  # updated in place to dL/dv[-1]
            grad_x_seq, grad_leak = ctx.kernel.lif_backward(
                grad_spike_seq.contiguous().view(T, -1), x_seq.contiguous().view(T, -1),
                v_init.to(x_seq.dtype).reshape(-1).contiguous(), grad_v, ctx.leak, node.v_threshold,
                *ctx.surrogate_args, node.detach_reset, ctx.leak_is_tensor, in_place,
            )
            return (grad_x_seq.view(x_seq.shape), grad_v.view(x_seq.shape[1:]),
                    grad_leak if ctx.leak_is_tensor else None, None)
        grad_x_seq, grad_v, grad_leak = node.differentiate_dynamics(
            x_seq, v_init, ctx.leak, ctx.rule, sg_seq, grad_spike_seq, grad_v, ctx.leak_is_tensor)
        return grad_x_seq, grad_v, grad_leak, None


# --------------------------------------------------------------------------------------------------------------
# CuPy backend: SpikingJelly's kernels, with the smallest fix for numpy >= 1.24.
# --------------------------------------------------------------------------------------------------------------
_cupy_patched = False


def _patch_spikingjelly_numpy_int() -> None:
    """SpikingJelly 0.0.0.0.14's ``auto_cuda.base.check_ctypes`` compares dtypes with ``np.int`` (removed in
    numpy 1.24; upstream issues #583, #595). Give that one module a numpy view that still has ``int``, leaving
    the global numpy untouched."""
    global _cupy_patched
    if _cupy_patched:
        return
    from spikingjelly.activation_based.auto_cuda import base as ac_base

    if not hasattr(ac_base.np, "int"):
        numpy_with_int = types.ModuleType("numpy_with_int")
        numpy_with_int.__dict__.update(np.__dict__)
        numpy_with_int.int = int
        ac_base.np = numpy_with_int
    _cupy_patched = True


def cupy_available() -> bool:
    """True when the CuPy backend can run here (CuPy importable and a CUDA device present)."""
    return neuron.cupy is not None and torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------------------
# The neuron
# --------------------------------------------------------------------------------------------------------------
class LeakyLIFNode(neuron.LIFNode):
    r"""Leaky integrate-and-fire neuron with soft reset: ``u[t] = leak*u[t-1] + I[t]``, spike when
    ``u[t] >= v_threshold``, then ``u[t] -= v_threshold``. ``leak = 1`` is SpikingJelly's ``IFNode(v_reset=None)``.

    :param leak: leak factor in (0, 1]; settable later (``node.leak = 0.9``) for leak sweeps.
    :param v_threshold: firing threshold.
    :param surrogate_function: surrogate for ``ds/du`` in backward (default :class:`PiecewiseLinear` with
        ``width = v_threshold``, kept equal to the threshold when it changes: the paper's gradient); any
        SpikingJelly surrogate works, and on ``backend='cupy'`` it must provide ``cuda_codes``.
    :param detach_reset: cut the gradient through the reset term.
    :param step_mode: ``'m'`` (input ``[T, N, ...]``) or ``'s'`` (input ``[N, ...]``, one step per call).
    :param backend: ``'torch'`` (fused BPTT, one autograd node over T: on CPU a compiled C++ kernel, see
        :mod:`snn_adv._lif_cpu`; elsewhere a torch loop) or ``'cupy'`` (SpikingJelly's CUDA kernels, multistep).
    :param learnable_leak: make the leak a trainable parameter of this layer, clamped to [``min_leak``, 1].
    """

    min_leak = 1e-3

    def __init__(
        self,
        leak: float = 0.99,
        v_threshold: float = 1.0,
        surrogate_function: Optional[Callable] = None,
        detach_reset: bool = False,
        step_mode: str = "m",
        backend: str = "torch",
        learnable_leak: bool = False,
        store_v_seq: bool = False,
    ):
        leak = check_leak(leak)
        v_threshold = check_positive("v_threshold", v_threshold)
        super().__init__(
            tau=_tau_of(leak),
            decay_input=False,
            v_threshold=v_threshold,
            v_reset=None,
            surrogate_function=surrogate_function if surrogate_function is not None else PiecewiseLinear(width=v_threshold),
            detach_reset=detach_reset,
            step_mode=step_mode,
            backend=backend,
            store_v_seq=store_v_seq,
        )
        #: The default surrogate's width follows ``v_threshold`` (set at conversion, scaled by SNN-BP), which makes
        #: it exactly the paper's ``ds/du = gamma*max(0, 1-|u/v_th-1|)/v_th``; False for a user-given surrogate.
        self.surrogate_follows_threshold = surrogate_function is None
        self.learnable_leak = learnable_leak
        if learnable_leak:
            self.leak_param = nn.Parameter(torch.tensor(leak))
        else:
            self._leak = leak
        #: When set (by :mod:`snn_adv.attacks`' gradient modes), how the multistep spikes are differentiated
        #: instead of surrogate BPTT with ``surrogate_function`` (same spikes, another backward).
        self.backward_rule: Optional[BackwardRule] = None

    # ---------------------------------------------------------------- threshold
    @property
    def v_threshold(self) -> float:
        return self._v_threshold

    @v_threshold.setter
    def v_threshold(self, value: float) -> None:
        self._v_threshold = float(check_positive("v_threshold", value))
        if getattr(self, "surrogate_follows_threshold", False) and isinstance(self.surrogate_function, PiecewiseLinear):
            self.surrogate_function.width = self._v_threshold

    # ---------------------------------------------------------------- leak
    @property
    def leak(self) -> Union[float, torch.Tensor]:
        """The leak factor (a float, or a tensor clamped to [min_leak, 1] when learnable)."""
        if self.learnable_leak:
            return self.leak_param.clamp(self.min_leak, 1.0)
        return self._leak

    @leak.setter
    def leak(self, value: float) -> None:
        value = check_leak(value)
        if self.learnable_leak:
            with torch.no_grad():
                self.leak_param.fill_(value)
        else:
            self._leak = value
        self.tau = _tau_of(value)

    def settings(self) -> Dict[str, Any]:
        """This neuron's constructor keywords beyond ``leak``, ``v_threshold``, ``backend``, ``step_mode`` and
        ``learnable_leak`` (kept per layer elsewhere), as JSON, with its :data:`NEURONS` name: what a checkpoint records to rebuild it
        (:func:`build_neuron`). A variant with more keywords extends it (:class:`HardResetLIFNode`)."""
        return {"name": neuron_name(type(self)), "detach_reset": bool(self.detach_reset),
                "surrogate": None if self.surrogate_follows_threshold else surrogate_spec(self.surrogate_function)}

    def extra_repr(self) -> str:
        return (
            f"leak={float(self.leak):.4g}, v_threshold={self.v_threshold}, detach_reset={self.detach_reset}, "
            f"step_mode={self.step_mode}, backend={self.backend}, learnable_leak={self.learnable_leak}"
        )

    # ---------------------------------------------------------------- dynamics (written once)
    # Every path runs these: single-step, the multistep torch loop and its backward (autograd through them), the
    # inspection loop of ``store_v_seq``. The C++ and CuPy kernels implement the default ones and are used only
    # while a node has them (:meth:`has_default_dynamics`); the tests check both against this reference.
    # A neuron variant overrides these methods and nothing else (see :class:`HardResetLIFNode`).
    def charge(self, v: torch.Tensor, x: torch.Tensor, leak: Union[float, torch.Tensor]) -> torch.Tensor:
        """Pre-reset membrane ``h[t] = leak * v[t-1] + I[t]``."""
        return leak * v + x

    def reset_after_spike(self, h: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        """Membrane after the step: soft reset ``v[t] = h[t] - v_th * s[t]``."""
        return h - self.v_threshold * spike

    @classmethod
    def overrides_step_hooks(cls) -> bool:
        """Whether the class overrides one of SpikingJelly's per-step hooks (``neuronal_charge``, ``neuronal_fire``,
        ``neuronal_reset``, ``single_step_forward``): then every path runs them, step by step (SpikingJelly's
        contract), and none of :meth:`charge` / :meth:`reset_after_spike`'s fast paths is taken."""
        return any(getattr(cls, hook) is not getattr(LeakyLIFNode, hook) for hook in STEP_HOOKS)

    @classmethod
    def has_default_dynamics(cls) -> bool:
        """Whether the class runs :class:`LeakyLIFNode`'s own dynamics (what the fused kernels compute); decided per
        class, from which methods it overrides."""
        return (cls.charge is LeakyLIFNode.charge and cls.reset_after_spike is LeakyLIFNode.reset_after_spike
                and not cls.overrides_step_hooks())

    def run_dynamics(self, x_seq: torch.Tensor, v: torch.Tensor, leak: float, store_h: bool, store_v: bool = False):
        """The forward over T without autograd: (spikes, v[T-1], h [T, ...] if ``store_h``); with ``store_v`` the
        third item is instead ``v[t-1]`` for every step (the membranes the backward starts each step from)."""
        with torch.no_grad():
            kernel = _cpu_kernel(x_seq) if self.has_default_dynamics() and not store_v else None
            if kernel is not None:
                v_flat = v.to(x_seq.dtype).reshape(-1).clone()  # the kernel updates it in place to v[T-1]
                spike_seq, h_seq = kernel.lif_forward(x_seq.contiguous().view(x_seq.shape[0], -1), v_flat, leak,
                                                      self.v_threshold, store_h)
                return spike_seq.view(x_seq.shape), v_flat.view(x_seq.shape[1:]), h_seq.view(x_seq.shape) if store_h else None
            spike_seq = torch.empty_like(x_seq)
            stored = torch.empty_like(x_seq) if store_h or store_v else None
            v = v.to(x_seq.dtype).expand_as(x_seq[0])
            for t in range(x_seq.shape[0]):
                if store_v:
                    stored[t] = v
                h = self.charge(v, x_seq[t], leak)
                if store_h:
                    stored[t] = h
                spike_seq[t] = h >= self.v_threshold
                v = self.reset_after_spike(h, spike_seq[t])
        return spike_seq, v, stored

    def differentiate_dynamics(self, x_seq: torch.Tensor, v_init: torch.Tensor, leak: float, rule: Optional[BackwardRule],
                               sg_seq: Optional[torch.Tensor], grad_spike_seq: torch.Tensor, grad_v: torch.Tensor,
                               leak_grad: bool):
        """The reference backward: autograd through :meth:`charge`, the spike and :meth:`reset_after_spike`, step by
        step from ``T-1`` down (or all steps at once when the rule is not temporal), with the spike's derivative
        from ``surrogate_function`` or, under ``rule``, ``sg_seq``. Returns (dL/dI, dL/dv[-1], dL/dleak or None)."""
        temporal = rule is None or rule.temporal
        _, _, v_prev_seq = self.run_dynamics(x_seq, v_init, leak, store_h=False, store_v=True)
        leak_var = torch.tensor(leak, dtype=x_seq.dtype, device=x_seq.device, requires_grad=True) if leak_grad else leak

        def step(x, v_prev, sg, grad_s, grad_v_next):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                h = self.charge(v_prev, x, leak_var)
                spike = (self.surrogate_function(h - self.v_threshold) if sg is None
                         else _spike_with_derivative(h, self.v_threshold, sg))
                v = self.reset_after_spike(h, spike.detach() if self.detach_reset else spike)
                inputs = [x] + ([v_prev] if v_prev.requires_grad else []) + ([leak_var] if leak_grad else [])
                grads = torch.autograd.grad([spike, v], inputs, [grad_s, grad_v_next], allow_unused=True)
            grads = [torch.zeros_like(x) if g is None else g for g in grads]
            return grads[0], (grads[1] if v_prev.requires_grad else None), (grads[-1] if leak_grad else None)

        if not temporal:  # v[t-1] detached: every step at once
            grad_x_seq, _, grad_leak = step(x_seq, v_prev_seq, sg_seq, grad_spike_seq, torch.zeros_like(x_seq))
            grad_v = None
        else:
            grad_x_seq, grad_leak = torch.empty_like(x_seq), (x_seq.new_zeros(()) if leak_grad else None)
            for t in range(x_seq.shape[0] - 1, -1, -1):
                v_prev = v_prev_seq[t].detach().requires_grad_(True)
                grad_x_seq[t], grad_v, grad_leak_t = step(
                    x_seq[t], v_prev, None if sg_seq is None else sg_seq[t], grad_spike_seq[t], grad_v)
                if leak_grad:
                    grad_leak = grad_leak + grad_leak_t
        if rule is not None and rule.time_average:
            grad_x_seq = grad_x_seq.mean(0, keepdim=True).expand_as(grad_x_seq)
        return grad_x_seq, grad_v, grad_leak

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.charge(self.v, x, self.leak)

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        self.v = self.reset_after_spike(self.v, spike.detach() if self.detach_reset else spike)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        # BaseNode's charge-fire-reset with the surrogate, in train and eval alike (LIFNode's eval path is a
        # hard step with no gradient).
        return neuron.BaseNode.single_step_forward(self, x)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        self.v_float_to_tensor(x_seq[0])
        needs_grad = torch.is_grad_enabled() and (
            x_seq.requires_grad or (isinstance(self.v, torch.Tensor) and self.v.requires_grad) or self.learnable_leak
        )
        under_rule = needs_grad and self.backward_rule is not None  # a rule needs the fused autograd node below
        if under_rule and self.overrides_step_hooks():
            raise NotImplementedError(
                f"{type(self).__name__} overrides SpikingJelly's step hooks ({', '.join(STEP_HOOKS)}): a gradient "
                "mode's backward rule differentiates charge/reset_after_spike; override those instead, or use 'bptt'")
        if (self.store_v_seq and not under_rule) or self.overrides_step_hooks():
            # SpikingJelly's reference loop (single_step_forward per step, through the step hooks; records v[t]
            # under store_v_seq for inspection); slower, differentiated by autograd.
            return neuron.BaseNode.multi_step_forward(self, x_seq)
        if self.backend == "cupy" and not under_rule:
            spike_seq, v_seq = self._cupy_forward(x_seq)
            self.v = v_seq[-1].clone()
            return spike_seq
        if needs_grad:
            spike_seq, self.v = _MultiStepLIF.apply(x_seq, self.v, self.leak, self)
        else:  # inference: no autograd state, nothing stored
            spike_seq, self.v, _ = self.run_dynamics(x_seq, self.v, float(self.leak), store_h=False)
        return spike_seq

    def _cupy_forward(self, x_seq: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """SpikingJelly's CuPy kernels: the IF kernel at leak 1, else the LIF kernel with ``decay = 1 - leak``."""
        if not cupy_available():
            raise RuntimeError("backend='cupy' needs CuPy and a CUDA device; use backend='torch' here")
        if self.learnable_leak:
            raise NotImplementedError("learnable_leak runs on backend='torch'; the CuPy LIF kernel takes a fixed leak")
        if not self.has_default_dynamics():
            raise NotImplementedError(f"{type(self).__name__} runs on backend='torch'; the CuPy kernels compute LeakyLIFNode's dynamics")
        if not x_seq.is_cuda:
            raise ValueError("backend='cupy' needs CUDA tensors; move the model and data with .cuda()")
        _patch_spikingjelly_numpy_int()
        from spikingjelly.activation_based.auto_cuda import neuron_kernel as ac

        dtype = {torch.float: "float", torch.half: "half2"}.get(x_seq.dtype)
        if dtype is None:
            raise TypeError(f"backend='cupy' runs float32 or float16, got {x_seq.dtype}")
        leak = float(self.leak)
        sg_codes = self.surrogate_function.cuda_codes
        kind = "if" if leak == 1.0 else "lif"
        key = (kind, dtype, self.detach_reset, repr(self.surrogate_function))
        if getattr(self, "_cupy_key", None) != key:
            if kind == "if":
                self.forward_kernel = ac.IFNodeFPTTKernel(hard_reset=False, dtype=dtype)
                self.backward_kernel = ac.IFNodeBPTTKernel(
                    surrogate_function=sg_codes, hard_reset=False, detach_reset=self.detach_reset, dtype=dtype
                )
            else:
                self.forward_kernel = ac.LIFNodeFPTTKernel(decay_input=False, hard_reset=False, dtype=dtype)
                self.backward_kernel = ac.LIFNodeBPTTKernel(
                    decay_input=False, surrogate_function=sg_codes, hard_reset=False,
                    detach_reset=self.detach_reset, dtype=dtype,
                )
            self._cupy_key = key
        x_flat, v_flat = x_seq.flatten(1), self.v.flatten(0)
        if kind == "if":
            spike_seq, v_seq = ac.IFNodeATGF.apply(
                x_flat, v_flat, self.v_threshold, None, self.forward_kernel, self.backward_kernel
            )
        else:
            spike_seq, v_seq = ac.LIFNodeATGF.apply(
                x_flat, v_flat, self.v_threshold, None, 1.0 - leak, self.forward_kernel, self.backward_kernel
            )
        return spike_seq.reshape(x_seq.shape), v_seq.reshape(x_seq.shape)


class HardResetLIFNode(LeakyLIFNode):
    """A neuron variant in one place: :class:`LeakyLIFNode` with a hard reset to ``v_reset`` after a spike::

        v[t] = h[t] * (1 - s[t]) + v_reset * s[t]

    Only :meth:`reset_after_spike` differs; every path (single-step, multistep, BPTT and the gradient modes) follows
    from it. It runs the reference torch path (the fused kernels compute the soft reset).
    """

    def __init__(self, *args, v_reset: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.hard_reset_value = float(v_reset)

    def reset_after_spike(self, h: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return h * (1.0 - spike) + self.hard_reset_value * spike

    def settings(self) -> Dict[str, Any]:
        return {**super().settings(), "v_reset": self.hard_reset_value}


# --------------------------------------------------------------------------------------------------------------
# Registry: the neuron classes a checkpoint can name and rebuild
# --------------------------------------------------------------------------------------------------------------
#: name -> neuron class (a :class:`LeakyLIFNode` subclass); add yours with :func:`register_neuron`
NEURONS: Dict[str, Type[LeakyLIFNode]] = {"lif": LeakyLIFNode, "hard_reset_lif": HardResetLIFNode}


def register_neuron(name: str, cls: Type[LeakyLIFNode]) -> Type[LeakyLIFNode]:
    """Record a neuron variant under ``name``, so that checkpoints of networks made of it rebuild it (its
    :meth:`~LeakyLIFNode.settings` must give every constructor keyword it adds)."""
    if not (isinstance(cls, type) and issubclass(cls, LeakyLIFNode)):
        raise TypeError(f"register_neuron: {cls!r} is not a subclass of snn_adv.neurons.LeakyLIFNode")
    if NEURONS.get(name, cls) is not cls:
        raise ValueError(f"register_neuron: name {name!r} is taken by {NEURONS[name].__qualname__}")
    NEURONS[name] = cls
    return cls


def neuron_name(cls: type) -> Optional[str]:
    """The :data:`NEURONS` name of ``cls`` (None: not registered)."""
    return next((name for name, registered in NEURONS.items() if registered is cls), None)


def build_neuron(spec: Mapping[str, Any], **kwargs: Any) -> LeakyLIFNode:
    """The neuron of a :meth:`~LeakyLIFNode.settings` record; ``kwargs``: ``leak``, ``v_threshold``, ``backend``,
    ``step_mode``."""
    spec = dict(spec)
    name = spec.pop("name")
    if name not in NEURONS:
        raise ValueError(f"neuron {name!r} is not registered (known: {sorted(NEURONS)}); register its class with "
                         "snn_adv.neurons.register_neuron before loading")
    surrogate_record = spec.pop("surrogate", None)
    return NEURONS[name](surrogate_function=None if surrogate_record is None else build_surrogate(surrogate_record),
                         **spec, **kwargs)


def supports_backward_rules(node: nn.Module) -> bool:
    """Whether a gradient mode's backward rule (rate, HART, PDSG, ASSG) applies to ``node``: one of our neurons whose
    dynamics are :meth:`~LeakyLIFNode.charge` / :meth:`~LeakyLIFNode.reset_after_spike`."""
    return isinstance(node, LeakyLIFNode) and not node.overrides_step_hooks()


def _tau_of(leak: float) -> float:
    """SpikingJelly's ``tau`` for ``decay_input=False``: ``leak = 1 - 1/tau``; ``tau = inf`` at leak 1."""
    return math.inf if leak == 1.0 else 1.0 / (1.0 - leak)


# --------------------------------------------------------------------------------------------------------------
# Helpers over whole networks
# --------------------------------------------------------------------------------------------------------------
def spiking_neurons(net: nn.Module):
    """All SpikingJelly neurons (``BaseNode`` subclasses, ours included) in ``net``, in module order."""
    return [m for m in net.modules() if isinstance(m, neuron.BaseNode)]


def set_leak(net: nn.Module, leak: float) -> None:
    """Set the leak factor of every :class:`LeakyLIFNode` in ``net``."""
    leak = check_leak(leak)
    for node in net.modules():
        if isinstance(node, LeakyLIFNode):
            node.leak = leak

