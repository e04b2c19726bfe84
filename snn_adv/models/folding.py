"""BatchNorm folding: a BatchNorm that directly follows a convolution or linear layer is an affine map per output
channel, so in eval mode it can be absorbed into that layer's weights. With ``s = gamma / sqrt(running_var + eps)``::

    BN(W x + b) = s * (W x + b - running_mean) + beta = (s W) x + (s (b - running_mean) + beta)

A spiking network has no batch statistics (its currents are spikes times weights, timestep by timestep), so the
spiking twin of an ANN with BatchNorm is the twin of its folded ANN.

Which BatchNorm follows which layer is read from the data flow (``torch.fx`` trace, every childless module a
leaf), so BatchNorms inside residual blocks fold too; where the network cannot be traced, from the order of an
``nn.Sequential``'s children.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import torch
import torch.fx
import torch.nn as nn

__all__ = ["batchnorm_pairs", "fold_batchnorm", "folded_layer"]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _LeafTracer(torch.fx.Tracer):
    """Traces through containers only: every module without children (SpikingJelly's single-step layers
    included) is one node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return not any(True for _ in module.children())


def _pairs_from_trace(body: nn.Module) -> List[Tuple[str, str]]:
    graph = _LeafTracer().trace(body)
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(body.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(body.get_submodule(source.target), _FOLDABLE)
                and calls[source.target] == 1 and calls[node.target] == 1):
            pairs.append((source.target, node.target))
    return pairs


def _pairs_from_order(body: nn.Module, prefix: str = "") -> List[Tuple[str, str]]:
    pairs = []
    children = list(body.named_children())
    for (name, child), (next_name, next_child) in zip(children, children[1:] + [(None, None)]):
        if (isinstance(body, nn.Sequential) and isinstance(child, _FOLDABLE)
                and isinstance(next_child, nn.modules.batchnorm._BatchNorm)):
            pairs.append((prefix + name, prefix + next_name))
        pairs += _pairs_from_order(child, prefix + name + ".")
    return pairs


def batchnorm_pairs(body: nn.Module) -> List[Tuple[str, str]]:
    """``(layer name, batchnorm name)`` for every BatchNorm of ``body`` whose only input is the output of a
    convolution or linear layer used nowhere else (so folding changes nothing else)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in body.modules()):
        return []
    try:
        return _pairs_from_trace(body)
    except Exception:  # data-dependent control flow and the like: fall back to nn.Sequential order
        return _pairs_from_order(body)


def folded_layer(layer: nn.Module, batchnorm: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``layer`` (a convolution or linear layer) with ``batchnorm`` (eval mode: running statistics)
    folded into its weight and bias (module docstring)."""
    name = f"{type(batchnorm).__name__} after {type(layer).__name__}"
    if batchnorm.running_mean is None or batchnorm.running_var is None:
        raise ValueError(f"cannot fold {name}: it keeps no running statistics (track_running_stats=False)")
    out_features = layer.weight.shape[0]
    if batchnorm.num_features != out_features:
        raise ValueError(f"cannot fold {name}: {batchnorm.num_features} features after {out_features} outputs")
    with torch.no_grad():
        scale = batchnorm.running_var.add(batchnorm.eps).rsqrt()
        if batchnorm.weight is not None:
            scale = scale * batchnorm.weight
        shift = batchnorm.bias if batchnorm.bias is not None else torch.zeros_like(scale)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
        folded = copy.deepcopy(layer)
        folded.weight = nn.Parameter(layer.weight * scale.reshape(-1, *[1] * (layer.weight.dim() - 1)),
                                     requires_grad=layer.weight.requires_grad)
        folded.bias = nn.Parameter((bias - batchnorm.running_mean) * scale + shift,
                                   requires_grad=layer.weight.requires_grad)
    return folded


def fold_batchnorm(body: nn.Module) -> nn.Module:
    """A copy of ``body`` with every foldable BatchNorm (:func:`batchnorm_pairs`) folded into the layer before it
    and replaced by ``nn.Identity``: the same outputs as ``body`` in eval mode."""
    folded = copy.deepcopy(body)
    for layer_name, batchnorm_name in batchnorm_pairs(body):
        _replace(folded, layer_name, folded_layer(body.get_submodule(layer_name), body.get_submodule(batchnorm_name)))
        _replace(folded, batchnorm_name, nn.Identity())
    return folded


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
