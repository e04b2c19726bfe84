"""The neuron: :class:`LeakyLIFNode` (dynamics written once, SpikingJelly's step hooks honoured, fast paths opt-in),
the variant :class:`HardResetLIFNode`, the registry of neuron classes a checkpoint can rebuild (:data:`NEURONS`), and
helpers over whole networks."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron

from ..compat import node_backend_kwargs
from ..validation import check_leak, check_positive
from .cupy_backend import cupy_available, run_cupy_kernels, spikingjelly_cupy_kernels
from .fused import MultiStepLIF, cpu_kernel
from .rules import BackwardRule, spike_with_derivative
from .surrogates import PiecewiseLinear, build_surrogate, surrogate_spec

__all__ = ["HardResetLIFNode", "LeakyLIFNode", "NEURONS", "STEP_HOOKS", "build_neuron", "neuron_name", "register_neuron",
           "set_leak", "spiking_neurons", "supports_backward_rules"]

#: SpikingJelly's per-step hooks of a neuron: a class overriding one runs its step loop on every path
STEP_HOOKS = ("neuronal_charge", "neuronal_fire", "neuronal_reset", "single_step_forward")


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
    :param learnable_threshold: make the threshold a trainable parameter of this layer (Ozdenizci and Legenstein's
        robust conversion finetunes thresholds with the weights), floored at ``min_threshold``; its BPTT gradient is
        the surrogate's: ``dL/dv_th = sum_t [(1 - s[t]) dL/dv[t] - dL/dh[t]]`` (from ``ds/dv_th = -ds/dh`` and the
        reset's ``-v_th s``), the surrogate's width following the threshold's value.
    """

    min_leak = 1e-3
    min_threshold = 1e-3

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
        learnable_threshold: bool = False,
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
            store_v_seq=store_v_seq,
            **node_backend_kwargs(backend),
        )
        self.backend = backend
        #: The default surrogate's width follows ``v_threshold`` (set at conversion, scaled by SNN-BP), which makes
        #: it exactly the paper's ``ds/du = gamma*max(0, 1-|u/v_th-1|)/v_th``; False for a user-given surrogate.
        self.surrogate_follows_threshold = surrogate_function is None
        object.__setattr__(self, "_own_surrogate", self.surrogate_function)  # not a second registered submodule
        self.learnable_leak = learnable_leak
        if learnable_leak:
            self.leak_param = nn.Parameter(torch.tensor(leak))
        else:
            self._leak = leak
        self.learnable_threshold = False
        if learnable_threshold:
            self.make_threshold_learnable()
        #: When set (by :mod:`snn_adv.attacks`' gradient modes), how the multistep spikes are differentiated
        #: instead of surrogate BPTT with ``surrogate_function`` (same spikes, another backward).
        self.backward_rule: Optional[BackwardRule] = None

    # ---------------------------------------------------------------- threshold
    @property
    def v_threshold(self) -> float:
        """The threshold's value (a float also when learnable: the parameter floored at ``min_threshold``)."""
        if getattr(self, "learnable_threshold", False):
            return max(float(self.threshold_param.detach()), self.min_threshold)
        return self._v_threshold

    @v_threshold.setter
    def v_threshold(self, value: float) -> None:
        value = float(check_positive("v_threshold", value))
        if getattr(self, "learnable_threshold", False):
            with torch.no_grad():
                self.threshold_param.fill_(value)
        else:
            self._v_threshold = value
        self._follow_threshold(value)

    @property
    def threshold(self) -> Union[float, torch.Tensor]:
        """The threshold the differentiable dynamics use: when learnable, the parameter floored out of place (a
        trained value below the floor stays in the parameter and its gradient is 0), else the float."""
        return self.threshold_param.clamp(min=self.min_threshold) if self.learnable_threshold else self._v_threshold

    def make_threshold_learnable(self, like: Optional[torch.Tensor] = None) -> None:
        """Turn this layer's threshold into a trainable parameter holding its current value, with the device and
        dtype of ``like`` (e.g. a weight of the network) when given."""
        if not self.learnable_threshold:
            value = torch.tensor(self._v_threshold)
            self.threshold_param = nn.Parameter(value if like is None else value.to(like))
            self.learnable_threshold = True

    def _follow_threshold(self, value: float) -> None:
        """The default surrogate's width follows the threshold; an attacker's surrogate installed in its place
        (:class:`~snn_adv.attacks.gradients.BPTT`) is left as given."""
        if (getattr(self, "surrogate_follows_threshold", False)
                and self.surrogate_function is self.__dict__.get("_own_surrogate")):
            self.surrogate_function.width = value

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
        ``learnable_leak`` / ``learnable_threshold`` (kept per layer elsewhere), as JSON, with its :data:`NEURONS` name: what a checkpoint records to rebuild it
        (:func:`build_neuron`). A variant with more keywords extends it (:class:`HardResetLIFNode`)."""
        return {"name": neuron_name(type(self)), "detach_reset": bool(self.detach_reset),
                "surrogate": None if self.surrogate_follows_threshold else surrogate_spec(self.surrogate_function)}

    def extra_repr(self) -> str:
        return (
            f"leak={float(self.leak):.4g}, v_threshold={self.v_threshold}, detach_reset={self.detach_reset}, "
            f"step_mode={self.step_mode}, backend={self.backend}, learnable_leak={self.learnable_leak}, "
            f"learnable_threshold={self.learnable_threshold}"
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
        return h - self.threshold * spike

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
        threshold = self.v_threshold  # once (a trained threshold's value is a device read)
        with torch.no_grad():
            kernel = cpu_kernel(x_seq) if self.has_default_dynamics() and not store_v else None
            if kernel is not None:
                v_flat = v.to(x_seq.dtype).reshape(-1).clone()  # the kernel updates it in place to v[T-1]
                spike_seq, h_seq = kernel.lif_forward(x_seq.contiguous().view(x_seq.shape[0], -1), v_flat, leak,
                                                      threshold, store_h)
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
                spike_seq[t] = h >= threshold
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
        threshold = self.v_threshold

        def step(x, v_prev, sg, grad_s, grad_v_next):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                h = self.charge(v_prev, x, leak_var)
                spike = (self.surrogate_function(h - threshold) if sg is None
                         else spike_with_derivative(h, threshold, sg))
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

    def neuronal_fire(self) -> torch.Tensor:
        return self.surrogate_function(self.v - self.threshold)

    def v_float_to_tensor(self, x: torch.Tensor) -> None:
        if isinstance(self.v, float):
            self.v = torch.full_like(x.data, self.v)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        # SpikingJelly's contract, written out (its LIFNode's eval path is a hard step with no gradient; 2.x's
        # BaseNode runs a fused forward that skips the hooks): charge, fire with the surrogate, reset
        self._follow_learnable_threshold()
        self.v_float_to_tensor(x)
        self.neuronal_charge(x)
        spike = self.neuronal_fire()
        self.neuronal_reset(spike)
        return spike

    def step_loop(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The reference multistep forward: :meth:`single_step_forward` per step (``v[t]`` kept as ``v_seq`` under
        ``store_v_seq``), differentiated by autograd."""
        spikes, v_seq = [], []
        for x in x_seq:
            spikes.append(self.single_step_forward(x))
            if self.store_v_seq:
                v_seq.append(self.v)
        if self.store_v_seq:
            self.v_seq = torch.stack(v_seq)
        return torch.stack(spikes)

    def _follow_learnable_threshold(self) -> None:
        """Before a forward: the default surrogate's width follows the trained threshold's value."""
        if self.learnable_threshold:
            self._follow_threshold(self.v_threshold)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        self._follow_learnable_threshold()
        self.v_float_to_tensor(x_seq[0])
        threshold_grad = self.learnable_threshold and self.threshold_param.requires_grad
        needs_grad = torch.is_grad_enabled() and (
            x_seq.requires_grad or (isinstance(self.v, torch.Tensor) and self.v.requires_grad) or self.learnable_leak
            or threshold_grad
        )
        under_rule = needs_grad and self.backward_rule is not None  # a rule needs the fused autograd node below
        if under_rule and threshold_grad:
            raise NotImplementedError("a trainable threshold is trained by BPTT; a gradient mode's backward rule "
                                      "(an attack's) runs on frozen parameters")
        if needs_grad and threshold_grad and not self.has_default_dynamics():
            return self.step_loop(x_seq)  # autograd through the variant's own charge/reset differentiates it
        if under_rule and self.overrides_step_hooks():
            raise NotImplementedError(
                f"{type(self).__name__} overrides SpikingJelly's step hooks ({', '.join(STEP_HOOKS)}): a gradient "
                "mode's backward rule differentiates charge/reset_after_spike; override those instead, or use 'bptt'")
        if (self.store_v_seq and not under_rule) or self.overrides_step_hooks():
            # SpikingJelly's reference loop (single_step_forward per step, through the step hooks; records v[t]
            # under store_v_seq for inspection); slower, differentiated by autograd.
            return self.step_loop(x_seq)
        if self.backend == "cupy" and not under_rule and not (needs_grad and threshold_grad):  # trained: torch path
            spike_seq, v_seq = self._cupy_forward(x_seq)
            self.v = v_seq[-1].clone()
            return spike_seq
        if needs_grad:
            spike_seq, self.v = MultiStepLIF.apply(x_seq, self.v, self.leak,
                                                   self.threshold if threshold_grad else None, self)
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
        dtype = {torch.float: "float", torch.half: "half2"}.get(x_seq.dtype)
        if dtype is None:
            raise TypeError(f"backend='cupy' runs float32 or float16, got {x_seq.dtype}")
        leak = float(self.leak)
        kind = "if" if leak == 1.0 else "lif"
        key = (kind, dtype, self.detach_reset, repr(self.surrogate_function))
        if getattr(self, "_cupy_key", None) != key:
            self.forward_kernel, self.backward_kernel = spikingjelly_cupy_kernels(
                kind, dtype, self.surrogate_function.cuda_codes, self.detach_reset)
            self._cupy_key = key
        spike_seq, v_seq = run_cupy_kernels(kind, x_seq.flatten(1), self.v.flatten(0), self.v_threshold, leak,
                                            self.forward_kernel, self.backward_kernel)
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


def spiking_neurons(net: nn.Module):
    """All SpikingJelly neurons (``BaseNode`` subclasses, ours included) in ``net``, in module order."""
    return [m for m in net.modules() if isinstance(m, neuron.BaseNode)]


def set_leak(net: nn.Module, leak: float) -> None:
    """Set the leak factor of every :class:`LeakyLIFNode` in ``net``."""
    leak = check_leak(leak)
    for node in net.modules():
        if isinstance(node, LeakyLIFNode):
            node.leak = leak
