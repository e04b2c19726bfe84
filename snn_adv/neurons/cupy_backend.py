"""SpikingJelly's CuPy multistep kernels for :class:`~snn_adv.neurons.LeakyLIFNode` (the IF kernel at leak 1, else the
LIF kernel with ``decay = 1 - leak``), with the smallest fix for numpy >= 1.24 scoped to the kernels built here.

SpikingJelly 0.0.0.0.14's ``auto_cuda.base.CKernel.check_ctypes`` compares dtypes with ``np.int`` (removed in numpy
1.24; upstream issues #583, #595) every time a kernel runs, forward and backward. Each kernel built here gets its own
``check_ctypes``: SpikingJelly's code, run with a numpy view that still has ``int``; SpikingJelly's module, numpy and
every other kernel in the process are left as they are.
"""
from __future__ import annotations

import functools
import types
from typing import Any, Callable, Tuple

import numpy as np
import torch

from ..compat import cupy_module

__all__ = ["cupy_available", "run_cupy_kernels", "spikingjelly_cupy_kernels", "with_numpy_int"]


def cupy_available() -> bool:
    """True when the CuPy backend can run here (CuPy importable and a CUDA device present)."""
    return cupy_module() is not None and torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _numpy_with_int() -> types.ModuleType:
    """A module with numpy's names plus ``int`` (the alias numpy 1.24 removed)."""
    view = types.ModuleType("numpy_with_int")
    view.__dict__.update(np.__dict__)
    view.int = int
    return view


def with_numpy_int(kernel: Any) -> Any:
    """Give ``kernel`` (a SpikingJelly ``auto_cuda`` kernel) a ``check_ctypes`` of its own: its class's code whose
    global ``np`` is a numpy view with ``int``; nothing changes where numpy still has ``int``."""
    check: Callable = type(kernel).check_ctypes
    if hasattr(check.__globals__["np"], "int"):
        return kernel
    scoped = types.FunctionType(check.__code__, {**check.__globals__, "np": _numpy_with_int()}, check.__name__,
                                check.__defaults__, check.__closure__)
    kernel.check_ctypes = types.MethodType(scoped, kernel)
    return kernel


def spikingjelly_cupy_kernels(kind: str, dtype: str, surrogate_codes: Callable, detach_reset: bool) -> Tuple[Any, Any]:
    """The forward and backward kernels of a soft-reset neuron without input decay: ``kind`` ``'if'`` or ``'lif'``,
    ``dtype`` ``'float'`` or ``'half2'``, ``surrogate_codes`` the surrogate's ``cuda_codes``."""
    from spikingjelly.activation_based.auto_cuda import neuron_kernel as kernels

    if kind == "if":
        forward = kernels.IFNodeFPTTKernel(hard_reset=False, dtype=dtype)
        backward = kernels.IFNodeBPTTKernel(surrogate_function=surrogate_codes, hard_reset=False,
                                            detach_reset=detach_reset, dtype=dtype)
    else:
        forward = kernels.LIFNodeFPTTKernel(decay_input=False, hard_reset=False, dtype=dtype)
        backward = kernels.LIFNodeBPTTKernel(decay_input=False, surrogate_function=surrogate_codes, hard_reset=False,
                                             detach_reset=detach_reset, dtype=dtype)
    return with_numpy_int(forward), with_numpy_int(backward)


def run_cupy_kernels(kind: str, x_flat: torch.Tensor, v_flat: torch.Tensor, v_threshold: float, leak: float,
                     forward: Any, backward: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spikes and membranes ``[T, N]`` of the kernels of :func:`spikingjelly_cupy_kernels` on currents ``x_flat``
    ``[T, N]`` from membranes ``v_flat`` ``[N]`` (autograd through SpikingJelly's ``ATGF`` functions)."""
    from spikingjelly.activation_based.auto_cuda import neuron_kernel as kernels

    if kind == "if":
        return kernels.IFNodeATGF.apply(x_flat, v_flat, v_threshold, None, forward, backward)
    return kernels.LIFNodeATGF.apply(x_flat, v_flat, v_threshold, None, 1.0 - leak, forward, backward)
