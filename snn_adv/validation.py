"""Argument checks shared by every module.

Each check raises ``ValueError`` (or ``TypeError``) whose message names the argument, the value received and
what is allowed, so that a wrong setting fails at once instead of producing a silently wrong number.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Iterable, Optional, Sequence, Union

import torch

__all__ = [
    "MAX_SEED",
    "check_choice",
    "check_fits_in_memory",
    "check_fraction",
    "check_images",
    "check_labels",
    "check_leak",
    "check_levels",
    "check_positive",
    "check_positive_int",
    "check_seed",
]

#: largest seed accepted: torch generators take 64-bit seeds, and derived streams add offsets to it
MAX_SEED = 2**63 - 1


def _fail(name: str, value, allowed: str) -> ValueError:
    return ValueError(f"argument '{name}' = {value!r}: {allowed}")


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, requiring an integer >= 1 (timesteps, steps, restarts, EOT draws)."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (isinstance(value, float) and value.is_integer()):
        raise _fail(name, value, "must be an integer >= 1")
    if int(value) < 1:
        raise _fail(name, value, "must be an integer >= 1")
    return int(value)


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, requiring a finite number > 0 (step sizes, surrogate widths)."""
    value_f = _as_float(name, value)
    if not value_f > 0:
        raise _fail(name, value, "must be a finite number > 0")
    return value_f


def check_fraction(name: str, value, *, low: float = 0.0, high: float = 1.0) -> float:
    """Return ``value`` as a float in the closed interval [low, high] (eps in [0, 1] image units, percentiles)."""
    value_f = _as_float(name, value)
    if not low <= value_f <= high:
        raise _fail(name, value, f"must lie in [{low:g}, {high:g}]")
    return value_f


def check_leak(value, name: str = "leak") -> float:
    """Leak factor of ``u[t] = leak*u[t-1] + I[t]``: 0 < leak <= 1 (1 is an IF neuron)."""
    value_f = _as_float(name, value)
    if not 0.0 < value_f <= 1.0:
        raise _fail(name, value, "must satisfy 0 < leak <= 1 (1 is an integrate-and-fire neuron)")
    return value_f


def check_levels(value: Optional[int], name: str = "levels") -> Optional[int]:
    """Number of input quantisation levels: None (no quantisation) or an integer >= 2."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise _fail(name, value, "must be None (no quantisation) or an integer >= 2")
    return value


def check_choice(name: str, value, allowed: Iterable[str]) -> str:
    """Require ``value`` to be one of ``allowed`` (dataset, architecture, attack or gradient-mode names)."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise _fail(name, value, f"must be one of {', '.join(repr(a) for a in allowed)}")
    return value


def check_images(
    images: torch.Tensor,
    *,
    channels: Optional[int] = None,
    size: Optional[Sequence[int]] = None,
    device: Optional[torch.device] = None,
    name: str = "images",
) -> None:
    """Require a float tensor [N, C, H, W] of finite values in [0, 1] with the model's channels, size and device."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"argument '{name}' must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        hint = (" (a [T, N, C, H, W] sequence? classifiers encode time themselves: pass the images)"
                if images.dim() == 5 else "")
        raise _fail(name, tuple(images.shape), f"must have rank 4, shape [N, C, H, W]{hint}")
    if not images.is_floating_point():
        raise TypeError(f"argument '{name}' must be a floating-point tensor, got dtype {images.dtype}")
    if device is not None and images.device != device:
        raise ValueError(f"argument '{name}' is on device {images.device}, the model on {device}: move one of them "
                         f"(images.to({str(device)!r}) or model.to({str(images.device)!r}))")
    if channels is not None and images.shape[1] != channels:
        raise _fail(name, tuple(images.shape), f"must have {channels} channel(s) in dim 1 for this model")
    if size is not None and tuple(images.shape[2:]) != tuple(size):
        raise _fail(name, tuple(images.shape), f"must have spatial size {tuple(size)} for this model")
    if images.numel() == 0:
        return
    with torch.no_grad():
        finite = torch.isfinite(images).all()
        low, high = (v.item() for v in torch.aminmax(images.detach().double()))
    if not bool(finite):
        raise _fail(name, "tensor with NaN/Inf", "must be finite")
    if low < 0.0 or high > 1.0:  # repr of the values: 1.0000001 must not read as 1
        raise _fail(name, f"range [{low!r}, {high!r}]", "must lie in [0, 1] (unnormalised images)")


def check_labels(labels: torch.Tensor, num_classes: int, batch: int, name: str = "labels") -> torch.Tensor:
    """Require integer class labels of shape [batch] with values in [0, num_classes); return them as int64 (what
    ``cross_entropy`` takes), so int8/16/32 and uint8 labels work too."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"argument '{name}' must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"argument '{name}' must hold integer class indices, got dtype {labels.dtype}")
    if tuple(labels.shape) != (batch,):
        raise _fail(name, tuple(labels.shape), f"must have shape ({batch},) to match the images")
    if labels.numel() and (labels.min().item() < 0 or labels.max().item() >= num_classes):
        raise _fail(
            name, f"range [{labels.min().item()}, {labels.max().item()}]", f"must lie in [0, {num_classes - 1}]"
        )
    return labels.long()


def check_seed(name: str, value, allow_none: bool = True) -> Optional[int]:
    """A seed: an integer in [0, :data:`MAX_SEED`] (or None when ``allow_none``); larger ones overflow torch's
    generators (``manual_seed``) or the streams derived from them."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise _fail(name, value, ("must be None or " if allow_none else "must be ") + "an integer in [0, 2**63 - 1]")
    return value


@functools.lru_cache(maxsize=None)
def _memory_of(device: torch.device) -> int:
    """Total memory in bytes of ``device`` (a CUDA device's, or the machine's RAM otherwise); read once per device."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(name: str, value, shape: Sequence[int], dtype: torch.dtype,
                         device: Union[str, torch.device] = "cpu", what: str = "a tensor") -> None:
    """Refuse ``value`` of argument ``name`` when ``what`` of ``shape`` and ``dtype``, which it makes the code allocate,
    is larger than the whole memory of ``device`` (a lower bound of the need: fail here, not in the allocator)."""
    device = torch.device(device)
    need = math.prod(int(d) for d in shape) * torch.empty((), dtype=dtype).element_size()
    have = _memory_of(device)
    if need > have:
        raise _fail(name, value, f"{what} {list(shape)} alone needs {need / 2**30:.3g} GiB, more than the "
                                 f"{have / 2**30:.3g} GiB of {device.type} memory; lower it or the batch size")


def _as_float(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, value, "must be a real number")
    value_f = float(value)
    if not math.isfinite(value_f):
        raise _fail(name, value, "must be finite")
    return value_f
