"""The fused multistep LIF (torch backend, the memory tricks): one autograd node over all T that saves only the input
current (or what recomputes it). On CPU with the default dynamics, surrogate and rule, the C++ kernel of
:mod:`snn_adv._lif_cpu` (one pass over memory each way; checked against the reference by the tests), whose backward
may write over the incoming gradient where only the autograd engine holds it; otherwise the reference: the node's
own charge/fire/reset in a torch loop, differentiated by autograd step by step (any surrogate, any rule, any
variant, CPU or GPU)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Dict

import torch

from .._lif_cpu import lif_kernel
from .rules import recomputable_recipe
from .surrogates import PiecewiseLinear

if TYPE_CHECKING:
    from .lif import LeakyLIFNode

__all__ = ["MultiStepLIF", "cpu_kernel"]


def cpu_kernel(x_seq: torch.Tensor):
    """The compiled CPU kernel when it applies to ``x_seq`` (a CPU float32/float64 tensor), else None."""
    if x_seq.device.type != "cpu" or x_seq.dtype not in (torch.float32, torch.float64):
        return None
    return lif_kernel()


def _reference_count(tensor: torch.Tensor) -> int:
    """Python references to ``tensor`` as seen from the frame that calls this (CPython's count)."""
    return sys.getrefcount(tensor)


class _EngineReferenceProbe(torch.autograd.Function):
    """Two outputs like :class:`MultiStepLIF`; its backward records how many Python references an incoming
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


class MultiStepLIF(torch.autograd.Function):
    """BPTT over T steps of ``node``'s dynamics. Saves the input ``I`` (or, where its layer tagged it
    :class:`RecomputableCurrent`, what recomputes it) and ``v[-1]`` (plus ``sg`` under a rule); the backward
    recomputes the membranes and differentiates each step (or, on the kernel, the closed form)::

        dL/dh[t] = dL/ds[t] * sg[t] + dL/dv[t] * dv[t]/dh[t],   dL/dv[t-1] = dL/dh[t] * dh[t]/dv[t-1]
        dL/dI[t] = dL/dh[t] * dh[t]/dI[t],                      dL/dleak = sum_t dL/dh[t] * dh[t]/dleak

    With a trainable ``threshold`` (the default dynamics only: ``h = leak v + I``, ``v = h - v_th s``, so
    ``dL/dh[t] = dL/dI[t]`` and ``ds/dv_th = -ds/dh``), from the gradients already computed and the spikes::

        dL/dv_th = sum_t [(1 - s[t]) dL/dv[t] - dL/dh[t]],   dL/dv[t] = leak dL/dh[t+1] (t < T-1), dL/dv[-1] given

    (the surrogate's part ``-sg dL/ds_total = dL/dv (1 - ...) - dL/dh`` plus the reset's ``-s dL/dv``; the same with
    ``detach_reset``).
    """

    @staticmethod
    def forward(ctx, x_seq, v_init, leak, threshold, node: "LeakyLIFNode"):
        leak_value, rule = float(leak), node.backward_rule
        sg_fn = node.surrogate_function
        spike_seq, v_last, h_seq = node.run_dynamics(x_seq, v_init, leak_value, store_h=rule is not None)
        # the kernel's closed-form backward: for the default dynamics, surrogate and rule (else the reference)
        ctx.kernel = (cpu_kernel(x_seq) if rule is None and node.has_default_dynamics()
                      and type(sg_fn) is PiecewiseLinear and sg_fn.spiking else None)
        ctx.surrogate_args = (sg_fn.alpha, sg_fn.width) if ctx.kernel is not None else None
        if ctx.kernel is not None:
            _engine_references("tensor")  # probe now, outside any backward
        sg_seq = rule.derivative(node, x_seq, h_seq) if rule is not None else None
        recipe = recomputable_recipe(x_seq)
        ctx.recompute, ctx.input_shape = (None, None) if recipe is None else (recipe.recompute, x_seq.shape)
        ctx.save_for_backward(v_init, sg_seq, *((x_seq,) if recipe is None else recipe.tensors))
        ctx.leak, ctx.leak_is_tensor, ctx.node, ctx.rule = leak_value, isinstance(leak, torch.Tensor), node, rule
        ctx.threshold_dtype = None if threshold is None else threshold.dtype
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
        grad_v_last = grad_v  # before the kernel's in-place update: dL/dv[-1] from above, for the threshold's gradient
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
            grad_x_seq, grad_v = grad_x_seq.view(x_seq.shape), grad_v.view(x_seq.shape[1:])
            grad_leak = grad_leak if ctx.leak_is_tensor else None
        else:
            grad_x_seq, grad_v, grad_leak = node.differentiate_dynamics(
                x_seq, v_init, ctx.leak, ctx.rule, sg_seq, grad_spike_seq, grad_v, ctx.leak_is_tensor)
        grad_threshold = None
        if ctx.needs_input_grad[3]:  # the spikes again (one more forward), then dot products: no [T, ...] temporaries
            silent = node.run_dynamics(x_seq, v_init, ctx.leak, store_h=False)[0].neg_().add_(1)  # 1 - s
            accumulate = torch.float64 if x_seq.dtype == torch.float64 else torch.float32  # not in bfloat16

            def flat(tensor: torch.Tensor) -> torch.Tensor:
                return tensor.reshape(-1).to(accumulate)

            grad_threshold = (ctx.leak * torch.dot(flat(silent[:-1]), flat(grad_x_seq[1:]))
                              + torch.dot(flat(silent[-1]), flat(grad_v_last)) - grad_x_seq.sum(dtype=accumulate))
            grad_threshold = grad_threshold.to(ctx.threshold_dtype)
        return grad_x_seq, grad_v, grad_leak, grad_threshold, None
