"""The spiking twin of an ANN body: the same graph in SpikingJelly multistep layers, every ReLU a
:class:`~snn_adv.neurons.LeakyLIFNode`, the ANN's weights shared (the same ``Parameter`` objects).

Layer map (torch's layers and their subclasses, SpikingJelly's single-step layers included; stateless layers act
on each timestep of ``[T, N, ...]``)::

    nn.Conv2d  -> Conv2d            nn.Linear  -> Linear           nn.AvgPool2d -> AvgPool2d (saves no input)
    (Conv2d, Linear: SpikingJelly's, saving no input for the input gradient and 1-byte spikes for the weights')
    nn.Flatten -> layer.Flatten     nn.Dropout -> layer.Dropout    (one mask for all T, as Rathi et al.; 2d too)
    nn.ReLU    -> LeakyLIFNode      nn.AdaptiveAvgPool2d -> layer.AdaptiveAvgPool2d
    BatchNorm right after Conv/Linear -> folded into it       nn.Identity, containers -> kept, children mapped

Max pooling, other activations (GELU, SiLU, ...), other normalisations and softmax are refused, with what to do.
The output layer stays a (non-spiking) linear layer: the classifier reads its mean current over T.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import layer
from torch.nn.modules.utils import _pair

from ..neurons import RECOMPUTABLE, LeakyLIFNode, RecomputableCurrent, spiking_neurons
from ..validation import check_leak, check_positive
from .folding import batchnorm_pairs, folded_layer

__all__ = ["AvgPool2d", "Conv2d", "Linear", "compact_spikes", "get_thresholds", "memory_saving_pools", "recompute_currents",
           "set_thresholds", "spiking_twin", "unpack_spikes"]

NeuronFactory = Callable[[], nn.Module]


class _AvgPool2dSavingNothing(torch.autograd.Function):
    """``F.avg_pool2d`` whose backward keeps only the input's shape: the gradient of an average pool does not depend
    on the input's values, yet torch's autograd saves the whole input (for a spiking network, every layer's spikes
    over all T: about 30 % of BPTT memory in VGG5)."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        ctx.input_meta = (x.shape, x.dtype, x.device)
        ctx.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def backward(ctx, grad_out):
        shape, dtype, device = ctx.input_meta
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = ctx.args
        shape_only = torch.empty(shape, dtype=dtype, device=device)  # read for its size only (never touched)
        grad_in = torch.ops.aten.avg_pool2d_backward(
            grad_out, shape_only, _pair(kernel_size), _pair(stride if stride is not None else kernel_size),
            _pair(padding), ceil_mode, count_include_pad, divisor_override)
        return grad_in, None, None, None, None, None, None


class AvgPool2d(layer.AvgPool2d):
    """SpikingJelly's multistep ``AvgPool2d`` with a backward that saves no activations (same values, same
    gradients; see :class:`_AvgPool2dSavingNothing`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override)
        if self.step_mode == "s" or x.dim() != 5:
            return _AvgPool2dSavingNothing.apply(x, *args)
        y = _AvgPool2dSavingNothing.apply(x.flatten(0, 1), *args)
        return y.view(x.shape[0], x.shape[1], *y.shape[1:])


#: the scales :func:`compact_spikes` tries: spikes and spike counts (1); averages of spikes over up to 64 inputs,
#: as after 2x2 (or 4x4, 8x8) average pooling (64, a power of two, so that ``k / 64`` is exact)
_SPIKE_SCALES = (1.0, 64.0)


def compact_spikes(x: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """``(packed, scale)`` with ``packed.to(x.dtype) / scale`` equal to ``x`` bit for bit: ``int8`` when that is
    exact (spikes 0/1, signed encoder spikes, spike counts, 2x2-pooled spikes, dropout-scaled spikes), else
    ``(x, 1.0)``. What a layer fed by spikes keeps for its backward (1 byte instead of 4 per value)."""
    if x.is_floating_point():
        for scale in _SPIKE_SCALES:
            scaled = x * scale if scale != 1.0 else x
            if scaled.numel() and not bool(scaled.abs().max() <= 127):  # out of int8's range, or NaN
                continue
            packed = scaled.to(torch.int8)  # truncates: the check below catches any fraction
            if torch.equal(unpack_spikes(packed, scale, x.dtype), x):
                return packed, scale
    return x, 1.0


def unpack_spikes(packed: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`compact_spikes`."""
    if packed.dtype == dtype:
        return packed
    values = packed.to(dtype)
    return values if scale == 1.0 else values.div_(scale)


def _layer_output(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], conv_args) -> torch.Tensor:
    return F.linear(x, weight, bias) if conv_args is None else F.conv2d(x, weight, bias, *conv_args)


def _recompute_output(packed: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, scale: float,
                      dtype: torch.dtype, conv_args) -> torch.Tensor:
    """A layer's output again from its compact input (what a neuron's backward calls instead of keeping it)."""
    with torch.no_grad():
        return _layer_output(unpack_spikes(packed, scale, dtype), weight, bias, conv_args)


class _SavingCompactInput(torch.autograd.Function):
    """``F.conv2d`` / ``F.linear`` whose backward keeps the input only for the weight gradient, and then as
    :func:`compact_spikes` (``packed``, given): the input gradient needs the weight alone, yet torch's convolution
    saves its input always (in float32), and its linear whenever the weight needs a gradient. Same values and
    gradients (the same ATen backward kernels run)."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv_args, packed, scale):
        ctx.input_meta, ctx.conv_args, ctx.scale = (x.shape, x.dtype), conv_args, scale
        ctx.save_for_backward(weight, packed if weight.requires_grad else None)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return _layer_output(x, weight, bias, conv_args)

    @staticmethod
    def backward(ctx, grad_out):
        weight, packed = ctx.saved_tensors
        shape, dtype = ctx.input_meta
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # in the forward's arithmetic (bfloat16 under autocast, whose casts a custom backward does not replay),
        # each gradient returned in its input's dtype
        compute = grad_out.dtype
        x = unpack_spikes(packed, ctx.scale, compute) if packed is not None else None
        weight_c = weight.to(compute)
        if ctx.conv_args is None:  # linear on [..., in]: the matmuls of torch's own backward
            grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
            grad_x = grad_2d.mm(weight_c).view(shape) if need_x else None
            grad_w = grad_2d.t().mm(x.reshape(-1, shape[-1])) if need_w else None
            grad_b = grad_2d.sum(0) if need_b else None
        else:
            stride, padding, dilation, groups = ctx.conv_args
            x_or_shape = x if x is not None else grad_out.new_empty(1).expand(shape)  # sizes only without need_w
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x_or_shape, weight_c, ctx.bias_sizes, _pair(stride), _pair(padding), _pair(dilation), False,
                [0, 0], groups, [need_x, need_w, need_b])
        return (None if grad_x is None else grad_x.to(dtype), None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(weight.dtype), None, None, None)


def _saving_compact_input(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          conv_args) -> torch.Tensor:
    """The layer's output through :class:`_SavingCompactInput`; with ``module.recompute_output`` (and autograd
    recording, no autocast, a contiguous input) tagged :class:`~snn_adv.neurons.RecomputableCurrent`, so that a
    neuron right after it keeps the 1-byte input instead of this output for its backward."""
    tag = (getattr(module, "recompute_output", False) and torch.is_grad_enabled() and x.is_contiguous()
           and not torch.is_autocast_enabled(x.device.type))
    packed, scale = compact_spikes(x) if tag or (weight.requires_grad and torch.is_grad_enabled()) else (None, 1.0)
    y = _SavingCompactInput.apply(x, weight, bias, conv_args, packed, scale)
    if tag and y.requires_grad:
        recompute = functools.partial(_recompute_output, scale=scale, dtype=x.dtype, conv_args=conv_args)
        setattr(y, RECOMPUTABLE, RecomputableCurrent((packed, weight, bias), recompute, y._version))
    return y


class Conv2d(layer.Conv2d):
    """SpikingJelly's ``Conv2d`` that keeps no input for the input gradient and a 1-byte copy of spikes for the
    weight gradient (see :class:`_SavingCompactInput`); same values and gradients. With ``recompute_output``
    (:func:`recompute_currents`) the neuron after it recomputes its input current instead of keeping it."""

    recompute_output = False

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return _saving_compact_input(self, x, weight, bias, (self.stride, self.padding, self.dilation, self.groups))


class Linear(layer.Linear):
    """SpikingJelly's ``Linear`` that keeps a 1-byte copy of spikes for the weight gradient and no input otherwise
    (see :class:`_SavingCompactInput`); same values and gradients; ``recompute_output`` as :class:`Conv2d`'s."""

    recompute_output = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _saving_compact_input(self, x, self.weight, self.bias, None)


def recompute_currents(net: nn.Module, enabled: bool = True) -> nn.Module:
    """Let every neuron fed directly by one of ``net``'s :class:`Conv2d` / :class:`Linear` layers recompute its
    input current in the backward from that layer's 1-byte input instead of keeping it (``enabled``; False
    restores the default). Same values and gradients, bit for bit; BPTT memory falls by the float32 currents of
    those layers (at T = 100 most of it) for one more forward of each such layer per backward. Returns ``net``."""
    for module in net.modules():
        if isinstance(module, (Conv2d, Linear)):
            module.recompute_output = bool(enabled)
    return net


def _share(new: nn.Module, old: nn.Module) -> nn.Module:
    """Make ``new`` use ``old``'s parameters (weight sharing, not a copy)."""
    for name, param in old.named_parameters(recurse=False):
        setattr(new, name, param)
    return new


#: Layers without a sound spiking counterpart, and what to write instead.
_REFUSED = (
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
     "max pooling has no rate-coded spiking counterpart (the max of spike trains is not the max of their rates): "
     "use nn.AvgPool2d and retrain the ANN"),
    ((nn.Softmax, nn.LogSoftmax), "a classifier body must return logits: remove it (the loss applies its own softmax)"),
    ((nn.modules.batchnorm._BatchNorm,),
     "only a BatchNorm right after a Conv or Linear layer is folded into it: move it there, or fold it yourself"),
    ((nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm),
     "a normalisation over the features of each timestep has no spiking counterpart: use BatchNorm after a "
     "Conv/Linear layer (folded on conversion) or no normalisation"),
)


def _refusal(module: nn.Module) -> str:
    """Why ``module`` has no spiking counterpart and what to do instead."""
    for classes, advice in _REFUSED:
        if isinstance(module, classes):
            return advice
    if type(module).__module__ == nn.ReLU.__module__:  # torch.nn.modules.activation: GELU, SiLU, Tanh, ...
        return ("an integrate-and-fire neuron's rate is a ReLU of its input current: use nn.ReLU (as a module, "
                "not F.relu in forward) and retrain the ANN")
    return ("supported: Conv2d, Linear, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Dropout2d, ReLU, Identity, "
            "BatchNorm right after Conv2d/Linear (folded), their subclasses (SpikingJelly's single-step layers) and "
            "containers of them")


def _twin_leaf(module: nn.Module, make_neuron: NeuronFactory, path: str) -> Optional[nn.Module]:
    """The multistep counterpart of one ANN layer (torch's layers and their subclasses, SpikingJelly's
    single-step layers among them), or None if ``module`` is a container to recurse into. ``path``: its name in
    the body, for errors."""
    m = module
    if isinstance(m, nn.ReLU):
        return make_neuron()
    if isinstance(m, nn.Conv2d):
        new = Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                     m.bias is not None, m.padding_mode, step_mode="m")
        return _share(new, m)
    if isinstance(m, nn.Linear):
        return _share(Linear(m.in_features, m.out_features, m.bias is not None, step_mode="m"), m)
    if isinstance(m, nn.AvgPool2d):
        return AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override, step_mode="m")
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return layer.AdaptiveAvgPool2d(m.output_size, step_mode="m")
    if isinstance(m, nn.Flatten):
        return layer.Flatten(m.start_dim, m.end_dim, step_mode="m")
    if isinstance(m, (nn.Dropout2d, layer.Dropout2d)):  # one mask for all T, as Rathi et al.
        return layer.Dropout2d(m.p, step_mode="m")
    if isinstance(m, (nn.Dropout, layer.Dropout)):
        return layer.Dropout(m.p, step_mode="m")
    if isinstance(m, nn.Identity):
        return m
    if any(True for _ in m.parameters(recurse=False)) or not any(True for _ in m.children()):
        where = f" ('{path}')" if path else ""
        raise TypeError(f"spiking_twin: layer {type(m).__name__}{where} has no spiking counterpart; {_refusal(m)}")
    return None


def _twin(module: nn.Module, make_neuron: NeuronFactory, folded: Dict[int, nn.Module], path: str = "") -> nn.Module:
    module = folded.get(id(module), module)
    leaf = _twin_leaf(module, make_neuron, path)
    if leaf is not None:
        return leaf
    # A container: same class and attributes (its forward composes its children), children mapped; the
    # registries (parameters, buffers, hooks) are copied so the twin and the ANN stay separate modules.
    twin = module.__class__.__new__(module.__class__)
    twin.__dict__.update({key: value.copy() if isinstance(value, dict) else value for key, value in module.__dict__.items()})
    twin._modules = {name: _twin(child, make_neuron, folded, f"{path}.{name}" if path else name)
                     for name, child in module._modules.items()}
    return twin


def spiking_twin(
    body: nn.Module,
    leak: float = 1.0,
    thresholds: Optional[Sequence[float]] = None,
    backend: str = "torch",
    neuron_factory: Optional[NeuronFactory] = None,
) -> nn.Module:
    """The multistep spiking version of an ANN body, sharing its weights (pass ``copy.deepcopy(body)`` for an
    independent one). Every BatchNorm right after a convolution or linear layer is folded into it (eval-mode
    statistics, :mod:`snn_adv.models.folding`): those layers get new, folded weights; ``body`` is not changed.

    :param leak: leak of every neuron (1: IF neurons, as after conversion; 0.99: LIF, as after SNN-BP).
    :param thresholds: one per ReLU, input side first (default 1.0); see :func:`set_thresholds`.
    :param backend: the neurons' backend, ``'torch'`` or ``'cupy'``.
    :param neuron_factory: build each neuron yourself instead (e.g. another SpikingJelly neuron).
    :raises TypeError: for a layer without a sound spiking counterpart (max pooling, GELU, ...), naming it and
        what to use instead.
    """
    leak = check_leak(leak)
    make_neuron = neuron_factory or (lambda: LeakyLIFNode(leak=leak, backend=backend, step_mode="m"))
    folded: Dict[int, nn.Module] = {}
    for layer_name, batchnorm_name in batchnorm_pairs(body):
        source = body.get_submodule(layer_name)
        folded[id(source)] = folded_layer(source, body.get_submodule(batchnorm_name))
        folded[id(body.get_submodule(batchnorm_name))] = nn.Identity()
    twin = _twin(body, make_neuron, folded)
    if thresholds is not None:
        set_thresholds(twin, thresholds)
    return twin


def memory_saving_pools(net: nn.Module) -> nn.Module:
    """Swap, in place, every average pool of a hand-built spiking network (SpikingJelly's ``layer.AvgPool2d`` or
    torch's) for :class:`AvgPool2d`: same settings and step mode, same values and gradients, no saved
    activations. Returns ``net``."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.AvgPool2d) and type(child) is not AvgPool2d:
            c = child
            setattr(net, name, AvgPool2d(c.kernel_size, c.stride, c.padding, c.ceil_mode, c.count_include_pad,
                                         c.divisor_override, step_mode=getattr(c, "step_mode", "s")))
        else:
            memory_saving_pools(child)
    return net


def get_thresholds(net: nn.Module) -> list:
    """The firing thresholds of ``net``'s spiking neurons, input side first."""
    return [float(node.v_threshold) for node in spiking_neurons(net)]


def set_thresholds(net: nn.Module, thresholds: Sequence[float]) -> None:
    """Set one threshold per spiking neuron layer of ``net`` (input side first); each must be finite and > 0."""
    nodes = spiking_neurons(net)
    thresholds = list(thresholds)
    if len(thresholds) != len(nodes):
        raise ValueError(f"argument 'thresholds' has {len(thresholds)} values: this network has {len(nodes)} neuron layers")
    for i, (node, value) in enumerate(zip(nodes, thresholds)):
        node.v_threshold = check_positive(f"thresholds[{i}]", value)
