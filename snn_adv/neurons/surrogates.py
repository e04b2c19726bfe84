"""Surrogate gradients: the paper's piecewise-linear surrogate, the derivative of any surrogate, and the JSON record
a checkpoint rebuilds a surrogate from."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

import torch
from spikingjelly.activation_based import surrogate

from ..validation import check_positive

__all__ = ["PiecewiseLinear", "build_surrogate", "surrogate_derivative", "surrogate_spec"]


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
        super().__init__(alpha=check_positive("gamma", gamma), spiking=spiking)  # keywords: every SpikingJelly
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
