"""Every difference between the SpikingJelly versions snn-adv runs on, in one place.

- ``0.0.0.0.14``: the version the design rests on; its CuPy multistep kernels are the GPU path (the ``cuda12`` /
  ``cuda13`` extras install it with CuPy). Its neurons take a ``backend`` argument and validate it.
- ``2.x`` (PyPI since 2026-10, Python >= 3.11; what new users install): no CuPy (Triton / native CUDA kernels of its
  own), ``BaseNode`` takes no ``backend``, runs its own fused single-step forward instead of the step hooks, its
  surrogates take ``(spiking, **params)``, and ``ann2snn.Converter.set_voltagehook`` is gone (the rate-coding
  recipe inserts the hooks).

Modules ask this one what the installed version does; none branches on the version itself.
"""
from __future__ import annotations

from importlib import metadata
from typing import Any, Dict

import torch.nn as nn
from spikingjelly.activation_based import neuron

from .validation import check_choice

__all__ = ["NEURON_BACKENDS", "SJ2", "SJ_VERSION", "STOCK_EVAL_HAS_GRADIENT", "check_backend", "cupy_module",
           "insert_voltage_hooks", "node_backend_kwargs"]

#: the installed SpikingJelly's version string
SJ_VERSION: str = metadata.version("spikingjelly")
#: SpikingJelly 2.x (no CuPy kernels, no ``backend`` argument on neurons)
SJ2: bool = int(SJ_VERSION.split(".")[0]) >= 2
#: the neuron backends snn-adv can run with this SpikingJelly
NEURON_BACKENDS = ("torch",) if SJ2 else ("torch", "cupy")
#: whether SpikingJelly's own LIFNode/IFNode give surrogate gradients in ``eval()`` (measured: 0.0.0.0.14 takes a
#: hard step without a graph there, which :func:`snn_adv.adapt` exists for; 2.x runs the surrogate path in both modes)
STOCK_EVAL_HAS_GRADIENT: bool = SJ2


def check_backend(backend: str) -> str:
    """``backend`` if this SpikingJelly can run it; on 2.x, ``'cupy'`` is refused with the way to get it."""
    if SJ2 and backend == "cupy":
        raise ValueError(f"argument 'backend' = 'cupy': SpikingJelly {SJ_VERSION} has no CuPy kernels; install "
                         "snn-adv[cuda12] or [cuda13] (SpikingJelly 0.0.0.0.14 with CuPy), or use backend='torch'")
    return check_choice("backend", backend, NEURON_BACKENDS)


def node_backend_kwargs(backend: str) -> Dict[str, Any]:
    """The ``backend`` keyword for SpikingJelly's neuron constructor where it takes one (0.0.0.0.14), else ``{}``;
    checked here on every version (:func:`check_backend`: one refusal, a ValueError, whatever is installed)."""
    check_backend(backend)
    return {} if SJ2 else {"backend": backend}


def cupy_module() -> Any:
    """SpikingJelly's CuPy module where it has one and CuPy imports, else None."""
    return getattr(neuron, "cupy", None)


def insert_voltage_hooks(traced: nn.Module, mode: str) -> nn.Module:
    """``traced`` (a ``torch.fx`` graph module) with ann2snn's ``VoltageHook`` after every ReLU, recording the
    activation scale by ``mode`` (``'max'`` or ``'99.9%'``)."""
    from spikingjelly.activation_based.ann2snn import Converter

    if hasattr(Converter, "set_voltagehook"):
        return Converter.set_voltagehook(traced, mode=mode)
    from spikingjelly.activation_based.ann2snn.recipes import RateCodingRecipe  # 2.x: the recipe inserts them

    return RateCodingRecipe(dataloader=(), mode=mode, fuse_flag=False)._set_voltagehook(traced)
