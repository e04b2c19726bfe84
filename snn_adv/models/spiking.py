"""The spiking twin of an ANN body: the same graph in SpikingJelly multistep layers, every ReLU a
:class:`~snn_adv.neurons.LeakyLIFNode`, the ANN's weights shared (the same ``Parameter`` objects).

Layer map (stateless layers act on each timestep of ``[T, N, ...]``)::

    nn.Conv2d  -> Conv2d            nn.Linear  -> Linear           nn.AvgPool2d -> AvgPool2d (saves no input)
    (Conv2d, Linear: SpikingJelly's, saving no input for the input gradient and 1-byte spikes for the weights')
    nn.Flatten -> layer.Flatten     nn.Dropout -> layer.Dropout    (one mask for all T, as Rathi et al.)
    nn.ReLU    -> LeakyLIFNode      nn.Identity, containers (Sequential, BasicBlock...) -> kept, children mapped

The output layer stays a (non-spiking) linear layer: the classifier reads its mean current over T.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import layer
from torch.nn.modules.utils import _pair

from ..neurons import LeakyLIFNode, spiking_neurons
from ..validation import check_leak, check_positive

__all__ = ["AvgPool2d", "Conv2d", "Linear", "compact_spikes", "spiking_twin", "set_thresholds", "get_thresholds"]

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


def compact_spikes(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``int8`` when that is exact (spikes 0/1, signed encoder spikes, spike counts), else ``x`` itself:
    what a layer fed by spikes keeps for its weight gradient (1 byte instead of 4 per value)."""
    if x.is_floating_point():
        packed = x.to(torch.int8)
        if torch.equal(packed.to(x.dtype), x):
            return packed
    return x


class _SavingCompactInput(torch.autograd.Function):
    """``F.conv2d`` / ``F.linear`` whose backward keeps the input only for the weight gradient, and then as
    :func:`compact_spikes`: the input gradient needs the weight alone, yet torch's convolution saves its input
    always (in float32), and its linear whenever the weight needs a gradient. Same values and gradients (the same
    ATen backward kernels run)."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv_args):
        ctx.input_meta, ctx.conv_args = (x.shape, x.dtype), conv_args
        ctx.save_for_backward(weight, compact_spikes(x) if weight.requires_grad else None)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return F.linear(x, weight, bias) if conv_args is None else F.conv2d(x, weight, bias, *conv_args)

    @staticmethod
    def backward(ctx, grad_out):
        weight, packed = ctx.saved_tensors
        shape, dtype = ctx.input_meta
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x = packed.to(dtype) if packed is not None else None
        if ctx.conv_args is None:  # linear on [..., in]: the matmuls of torch's own backward
            grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
            grad_x = grad_2d.mm(weight).view(shape) if need_x else None
            grad_w = grad_2d.t().mm(x.reshape(-1, shape[-1])) if need_w else None
            grad_b = grad_2d.sum(0) if need_b else None
            return grad_x, grad_w, grad_b, None
        stride, padding, dilation, groups = ctx.conv_args
        x_or_shape = x if x is not None else grad_out.new_empty(1).expand(shape)  # sizes only without need_w
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x_or_shape, weight, ctx.bias_sizes, _pair(stride), _pair(padding), _pair(dilation), False,
            [0, 0], groups, [need_x, need_w, need_b])
        return grad_x, grad_w, grad_b, None


class Conv2d(layer.Conv2d):
    """SpikingJelly's ``Conv2d`` that keeps no input for the input gradient and a 1-byte copy of spikes for the
    weight gradient (see :class:`_SavingCompactInput`); same values and gradients."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        return _SavingCompactInput.apply(x, weight, bias, (self.stride, self.padding, self.dilation, self.groups))


class Linear(layer.Linear):
    """SpikingJelly's ``Linear`` that keeps a 1-byte copy of spikes for the weight gradient and no input otherwise
    (see :class:`_SavingCompactInput`); same values and gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SavingCompactInput.apply(x, self.weight, self.bias, None)


def _share(new: nn.Module, old: nn.Module) -> nn.Module:
    """Make ``new`` use ``old``'s parameters (weight sharing, not a copy)."""
    for name, param in old.named_parameters(recurse=False):
        setattr(new, name, param)
    return new


def _twin_leaf(module: nn.Module, make_neuron: NeuronFactory) -> Optional[nn.Module]:
    """The multistep counterpart of one ANN layer, or None if ``module`` is a container to recurse into."""
    if isinstance(module, nn.ReLU):
        return make_neuron()
    if type(module) is nn.Conv2d:
        m = module
        new = Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                           m.bias is not None, m.padding_mode, step_mode="m")
        return _share(new, m)
    if type(module) is nn.Linear:
        return _share(Linear(module.in_features, module.out_features, module.bias is not None, step_mode="m"), module)
    if type(module) is nn.AvgPool2d:
        m = module
        return AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override, step_mode="m")
    if type(module) is nn.Flatten:
        return layer.Flatten(module.start_dim, module.end_dim, step_mode="m")
    if type(module) is nn.Dropout:
        return layer.Dropout(module.p, step_mode="m")
    if isinstance(module, nn.Identity):
        return module
    if any(True for _ in module.parameters(recurse=False)) or not any(True for _ in module.children()):
        raise TypeError(
            f"spiking_twin: no spiking counterpart for layer {type(module).__name__}; supported: Conv2d, Linear, "
            "AvgPool2d, Flatten, Dropout, ReLU, Identity and containers of them (write activations as nn.ReLU modules)"
        )
    return None


def _twin(module: nn.Module, make_neuron: NeuronFactory) -> nn.Module:
    leaf = _twin_leaf(module, make_neuron)
    if leaf is not None:
        return leaf
    # A container: same class and attributes (its forward composes its children), children mapped; the
    # registries (parameters, buffers, hooks) are copied so the twin and the ANN stay separate modules.
    twin = module.__class__.__new__(module.__class__)
    twin.__dict__.update({key: value.copy() if isinstance(value, dict) else value for key, value in module.__dict__.items()})
    twin._modules = {name: _twin(child, make_neuron) for name, child in module._modules.items()}
    return twin


def spiking_twin(
    body: nn.Module,
    leak: float = 1.0,
    thresholds: Optional[Sequence[float]] = None,
    backend: str = "torch",
    neuron_factory: Optional[NeuronFactory] = None,
) -> nn.Module:
    """The multistep spiking version of an ANN body, sharing its weights (pass ``copy.deepcopy(body)`` for an
    independent one).

    :param leak: leak of every neuron (1: IF neurons, as after conversion; 0.99: LIF, as after SNN-BP).
    :param thresholds: one per ReLU, input side first (default 1.0); see :func:`set_thresholds`.
    :param backend: the neurons' backend, ``'torch'`` or ``'cupy'``.
    :param neuron_factory: build each neuron yourself instead (e.g. another SpikingJelly neuron).
    """
    leak = check_leak(leak)
    make_neuron = neuron_factory or (lambda: LeakyLIFNode(leak=leak, backend=backend, step_mode="m"))
    twin = _twin(body, make_neuron)
    if thresholds is not None:
        set_thresholds(twin, thresholds)
    return twin


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
