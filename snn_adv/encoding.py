"""Input encoders: analog images (normalised to [-1, 1]) to spike trains [T, N, ...].

SpikingJelly's own ``encoding.PoissonEncoder`` emits unsigned spikes ``rand < x`` with no gradient and no seed of
its own; the paper needs signed spikes, optional pre-quantisation, a straight-through gradient and a private seeded
stream, so we write it here.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn as nn

from .module_state import preserved_modes
from .validation import check_fraction, check_levels, check_positive_int

__all__ = ["PoissonEncoder", "DirectEncoder", "quantize", "Encoder", "fixed_noise", "fixed_noise_seed", "is_stochastic",
           "stochastic_encoders"]


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Round ``|x|`` (in [0, 1]) to ``levels`` uniform levels {0, 1/(q-1), ..., 1}, keeping the sign of ``x``."""
    return torch.sign(x) * torch.round(x.abs() * (levels - 1)) / (levels - 1)


class _StraightThrough(torch.autograd.Function):
    """Forward: the sampled spike train. Backward: ``dL/dx = sum_t dL/ds_t`` (the encoder as identity)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):
        return grad_spikes.sum(0), None


class Encoder(nn.Module):
    """Base class: ``encoder(x, timesteps) -> [T, *x.shape]`` for normalised input ``x`` in [-1, 1].

    ``stochastic``: whether two forwards of the same input may differ (then the encoder has ``manual_seed``).
    """

    stochastic = False

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> Dict:
        """The encoder's settings, for checkpoints and result provenance."""
        raise NotImplementedError


class PoissonEncoder(Encoder):
    r"""The paper's rate encoder: at each timestep ``s_t = sign(x) * Bernoulli(rate * |x|)``.

    ``E[s_t] = rate * x``, so fewer timesteps mean a coarser (more discretised) view of the input.

    :param rate: maximum firing probability per step, in (0, 1].
    :param levels: if given, ``|x|`` is first rounded to this many uniform levels (input pre-quantisation).
    :param seed: seed of the encoder's private random stream; ``None`` draws from torch's global generator.
        With a seed, :meth:`manual_seed` (or rebuilding) restarts the stream: same seed, same spikes.

    Gradient: straight-through, ``dL/dx = sum_t dL/ds_t`` (the paper's SNN-crafted attack; quantisation too is
    passed through as identity).

    Under :func:`fixed_noise` every forward restarts the stream from the fixed seed (the same draw every call).
    """

    stochastic = True

    def __init__(self, rate: float = 1.0, levels: Optional[int] = None, seed: Optional[int] = None):
        super().__init__()
        self.rate = check_fraction("rate", rate)
        if self.rate == 0.0:
            raise ValueError("argument 'rate' = 0.0: must lie in (0, 1]")
        self.levels = check_levels(levels)
        self.seed = seed
        self.fixed_seed: Optional[int] = None  # set by fixed_noise(): every forward uses this seed's draw
        self._generators: Dict[torch.device, torch.Generator] = {}

    def extra_repr(self) -> str:
        return f"rate={self.rate}, levels={self.levels}, seed={self.seed}"

    def settings(self) -> Dict:
        return {"name": "poisson", "rate": self.rate, "levels": self.levels, "seed": self.seed}

    def manual_seed(self, seed: Optional[int]) -> "PoissonEncoder":
        """Restart the private random stream from ``seed`` (``None``: use torch's global generator)."""
        self.seed = seed
        self._generators.clear()
        return self

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.fixed_seed is not None:
            return torch.Generator(device=device).manual_seed(self.fixed_seed)
        if self.seed is None:
            return None
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[device] = generator
        return generator

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        timesteps = check_positive_int("timesteps", timesteps)
        magnitude = x.detach().abs()
        if self.levels is not None:
            magnitude = quantize(magnitude, self.levels)
        probability = magnitude.mul_(self.rate) if self.levels is not None else magnitude * self.rate
        uniform = torch.rand((timesteps, *x.shape), generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        spikes = (uniform < probability).to(x.dtype).mul_(torch.sign(x.detach()))
        return _StraightThrough.apply(x, spikes) if x.requires_grad else spikes


class DirectEncoder(Encoder):
    """Analog input repeated at every timestep (direct / constant-current coding), for comparison.

    The result is a broadcast view ``[T, *x.shape]`` (no copy); its gradient is ``sum_t dL/dx_t``.
    """

    def settings(self) -> Dict:
        return {"name": "direct"}

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        timesteps = check_positive_int("timesteps", timesteps)
        return x.unsqueeze(0).expand(timesteps, *x.shape)


def build_encoder(settings: Dict) -> Encoder:
    """Rebuild an encoder from its :meth:`Encoder.settings` (checkpoints, configs)."""
    settings = dict(settings)
    name = settings.pop("name")
    if name == "poisson":
        return PoissonEncoder(**settings)
    if name == "direct":
        return DirectEncoder()
    raise ValueError(f"argument 'encoder' = {name!r}: must be 'poisson' or 'direct'")


# --------------------------------------------------------------------------------------------------------------
# Stochastic models
# --------------------------------------------------------------------------------------------------------------
def _stock_poisson_types() -> tuple:
    from spikingjelly.activation_based import encoding as sj_encoding

    return (sj_encoding.PoissonEncoder,)


def stochastic_encoders(model: nn.Module) -> List[nn.Module]:
    """Our stochastic encoders inside ``model`` (each with ``manual_seed``), in module order."""
    return [m for m in model.modules() if getattr(m, "stochastic", False) is True and hasattr(m, "manual_seed")]


def is_stochastic(model: nn.Module, images: Optional[torch.Tensor] = None) -> bool:
    """Whether ``model``'s forward is random: it holds a Poisson encoder (ours or SpikingJelly's) that is not under
    :func:`fixed_noise`, or, tried, two forwards of the same images differ (a noise defence, another framework's
    encoder such as snnTorch's ``spikegen.rate``). The images tried are ``images``, else two random ones of the
    model's declared input shape (``in_channels``, ``input_size``; a model that declares none is not tried); the
    forwards run in ``eval()`` without gradients, and torch's RNG and the modules' modes are restored. A random
    model needs EOT attacks and AutoAttack's ``version='rand'``."""
    stock = _stock_poisson_types()
    if any(isinstance(m, stock) for m in model.modules()) or any(
            m.fixed_seed is None for m in stochastic_encoders(model)):
        return True
    images = images if images is not None else _probe_images(model)
    if images is None:
        return False
    with torch.no_grad(), torch.random.fork_rng(devices=[images.device] if images.is_cuda else []), \
            preserved_modes(model, training=False):
        return not torch.equal(model(images), model(images))


def _probe_images(model: nn.Module) -> Optional[torch.Tensor]:
    """Two seeded random images in [0, 1] of ``model``'s declared input shape, on its device (None if undeclared)."""
    channels, size = getattr(model, "in_channels", None), getattr(model, "input_size", None)
    if channels is None or size is None:
        return None
    parameter = next(iter(model.parameters()), None)
    images = torch.rand(2, channels, *size, generator=torch.Generator().manual_seed(0))
    return images if parameter is None else images.to(parameter.device)


def fixed_noise_seed(model: nn.Module) -> Optional[int]:
    """The seed of the fixed draw when ``model`` (or this encoder) is under :func:`fixed_noise`, else None."""
    seeds = [m.fixed_seed for m in stochastic_encoders(model) if getattr(m, "fixed_seed", None) is not None]
    return seeds[0] if seeds else None


@contextlib.contextmanager
def fixed_noise(model: nn.Module, seed: int = 0) -> Iterator[nn.Module]:
    """Inside the block every forward of ``model`` uses the same Poisson draw (that of ``seed``): the model is a
    deterministic function, as decision-based and deterministic tools (foolbox's BoundaryAttack, DeepFool) assume.

    The draw is per call shape: inputs of the same batch shape get the same spikes for the same pixel values.
    :func:`snn_adv.evaluation.evaluate` labels results computed inside the block ``noise = "fixed draw (seed k)"``:
    they hold for that one draw, not for the random model. Yields ``model``; the previous behaviour is restored.

    :raises ValueError: when ``model`` holds a stochastic encoder that cannot be seeded (SpikingJelly's own
        ``PoissonEncoder``): use :class:`PoissonEncoder`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"argument 'seed' = {seed!r}: must be an integer >= 0")
    stock = [type(m).__name__ for m in model.modules() if isinstance(m, _stock_poisson_types())]
    if stock:
        raise ValueError(f"argument 'model': holds {stock[0]} from spikingjelly, whose draws cannot be fixed; "
                         "use snn_adv.PoissonEncoder (seeded) instead")
    encoders = stochastic_encoders(model)
    previous = [e.fixed_seed for e in encoders]
    for encoder in encoders:
        encoder.fixed_seed = seed
    try:
        yield model
    finally:
        for encoder, value in zip(encoders, previous):
            encoder.fixed_seed = value
