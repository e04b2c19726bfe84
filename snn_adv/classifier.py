"""Classifiers with one input contract: images [N, C, H, W] in [0, 1] -> logits [N, K].

This is torchattacks' model contract, so every attack, evaluation and checkpoint takes "a classifier" and never
asks which kind it is::

    images in [0,1] -> (x - mean) / std -> [encode to T steps -> multistep body -> mean over T]  (SNN)
                                        -> body                                                  (ANN)
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import base

from .encoding import Encoder, PoissonEncoder
from .module_state import reset_states
from .neurons import LeakyLIFNode, set_leak, spiking_neurons
from .validation import check_choice, check_fits_in_memory, check_images, check_positive_int

__all__ = ["ImageClassifier", "AnnClassifier", "SpikingClassifier", "LEAN_ABOVE_TIMESTEPS", "LEAN_TIME_CHUNK",
           "check_classifier"]

#: above this many timesteps a :class:`SpikingClassifier` runs lean by default. Chosen from the CPU measurements
#: (VGG5, batch 32, whole-process peak of one BPTT step: 0.83 GiB + about 28 MiB per timestep by default, so the
#: 2.5 GB target is crossed near T = 54): the largest power of two below that crossing, leaving room for larger
#: batches, and above every T of the 2-core presets (<= 24), whose speed and numbers it leaves as they were.
LEAN_ABOVE_TIMESTEPS = 32
#: the timesteps per chunk of a lean forward when ``time_chunk`` is unset (measured at T = 100, batch 32: 1664 MiB
#: with currents recomputed, against 3361 MiB unchunked: the first layer's backward transients shrink tenfold)
LEAN_TIME_CHUNK = 10


class ImageClassifier(nn.Module):
    """Shared first step of every classifier: input checks and per-channel normalisation.

    :param mean, std: per-channel normalisation (the paper uses 0.5 and 0.5, so the model sees [-1, 1]).
    :param in_channels, input_size: when given, inputs of another shape are refused with a clear error.
    :param arch: how the body was built (factory name and arguments, dataset...), kept for checkpoints.
    """

    kind: str = "classifier"

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        in_channels: Optional[int] = None,
        input_size: Optional[Sequence[int]] = None,
        arch: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError(f"argument 'std' = {list(std)}: every entry must be > 0")
        if mean_t.shape != std_t.shape:
            raise ValueError(f"arguments 'mean' and 'std' must have one value per channel, got {list(mean)} and {list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)
        self.in_channels = in_channels if in_channels is not None else (mean_t.shape[1] if mean_t.shape[1] > 1 else None)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.arch: Dict[str, Any] = dict(arch or {})

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Check the images, cast them to the model's dtype (float64, float16, bfloat16 images on a float32 model;
        the gradient flows back in the images' dtype) and map them from [0, 1] to ``(x - mean) / std``."""
        check_images(images, channels=self.in_channels, size=self.input_size, device=self.mean.device)
        return (images.to(self.mean.dtype) - self.mean) / self.std

    def _infer_in_channels(self, body: nn.Module) -> None:
        """Without a channel count (a one-value normalisation), take it from the body's first convolution."""
        if self.in_channels is None:
            first_conv = next((m for m in body.modules() if isinstance(m, nn.Conv2d)), None)
            self.in_channels = first_conv.in_channels if first_conv is not None else None


class AnnClassifier(ImageClassifier):
    """A conventional network under the same [0, 1] input contract as :class:`SpikingClassifier`."""

    kind = "ann"

    def __init__(self, body: nn.Module, mean: Sequence[float], std: Sequence[float], **kwargs):
        super().__init__(mean, std, **kwargs)
        self.body = body
        self._infer_in_channels(body)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(images))


class SpikingClassifier(ImageClassifier):
    r"""A spiking network as a classifier of images in [0, 1].

    ``logits = (1/T) * sum_t body(encoder(normalise(x)))[t]``: the output layer is a non-spiking integrator, so the
    logits are its accumulated membrane potential divided by T (the paper's readout). With
    ``readout='spikes'`` the output currents drive IF neurons and the logits are their firing rates instead
    (beware: its gradient vanishes when every output neuron is silent).

    Every forward resets all neuron state first (:func:`~snn_adv.module_state.reset_states`), so calls never leak
    into each other.
    ``timesteps``, ``encoder``, ``time_chunk``, ``lean`` and the leak (:meth:`set_leak`) can be changed on a built
    model.

    **Lean at long T, by default.** Above :data:`LEAN_ABOVE_TIMESTEPS` timesteps (``lean=None``, the default) a
    forward runs as :func:`snn_adv.models.recompute_currents` would (each neuron fed by a spiking Conv2d/Linear layer
    recomputes its input current in the backward: bit for bit the same gradients) and, unless ``time_chunk`` is set,
    :data:`LEAN_TIME_CHUNK` timesteps at a time (the same computation up to float rounding). Measured on CPU (VGG5,
    batch 32, one BPTT step at T = 100, whole process): 3688 MiB with ``lean=False``, 1776 MiB lean (the
    benchmark, ``experiments/results/cpu_benchmark/``). ``lean=True`` /
    ``False`` force either way; at T <= :data:`LEAN_ABOVE_TIMESTEPS` nothing changes (recomputing costs 1.34x /
    1.58x of T ANN steps at T = 8 / 16 against 0.98x / 1.10x).

    :param body: a SpikingJelly network in multistep mode mapping ``[T, N, C, H, W]`` to ``[T, N, K]``.
    :param encoder: e.g. :class:`~snn_adv.encoding.PoissonEncoder` or :class:`~snn_adv.encoding.DirectEncoder`.
    """

    kind = "snn"
    readouts = ("membrane", "spikes")

    def __init__(
        self,
        body: nn.Module,
        encoder: Optional[Encoder] = None,
        timesteps: int = 8,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        readout: str = "membrane",
        time_chunk: Optional[int] = None,
        lean: Optional[bool] = None,
        **kwargs,
    ):
        super().__init__(mean, std, **kwargs)
        self.body = body
        self._infer_in_channels(body)
        self.encoder = encoder if encoder is not None else PoissonEncoder()
        self.timesteps = timesteps
        self.time_chunk = time_chunk
        self.lean = lean
        self.readout = check_choice("readout", readout, self.readouts)
        self.output_neuron = LeakyLIFNode(leak=1.0) if readout == "spikes" else None

    @property
    def timesteps(self) -> int:
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value: int) -> None:
        self._timesteps = check_positive_int("timesteps", value)

    @property
    def time_chunk(self) -> Optional[int]:
        """Run the body this many timesteps at a time, neuron state carried between chunks (None: all T at once).
        Same spikes, same logits; memory grows with the chunk instead of T (the paper's T = 2000 SNN-conv)."""
        return self._time_chunk

    @time_chunk.setter
    def time_chunk(self, value: Optional[int]) -> None:
        self._time_chunk = None if value is None else check_positive_int("time_chunk", value)

    @property
    def lean(self) -> Optional[bool]:
        """Recompute currents and chunk time in the forward (True), never (False), or above
        :data:`LEAN_ABOVE_TIMESTEPS` timesteps (None, the default); see the class docstring."""
        return self._lean

    @lean.setter
    def lean(self, value: Optional[bool]) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"argument 'lean' = {value!r}: must be True, False or None (above "
                            f"{LEAN_ABOVE_TIMESTEPS} timesteps)")
        self._lean = value

    @property
    def runs_lean(self) -> bool:
        """Whether the next forward runs lean (``lean``, or by default ``timesteps > LEAN_ABOVE_TIMESTEPS``)."""
        return self.timesteps > LEAN_ABOVE_TIMESTEPS if self.lean is None else self.lean

    @property
    def leak(self) -> Optional[float]:
        """The common leak of the body's neurons (None if they differ or there are none)."""
        leaks = {float(n.leak) for n in self.body.modules() if isinstance(n, LeakyLIFNode)}
        return leaks.pop() if len(leaks) == 1 else None

    def set_leak(self, leak: float) -> "SpikingClassifier":
        """Set the leak factor of every :class:`LeakyLIFNode` in the body."""
        set_leak(self.body, leak)
        return self

    def neurons(self):
        """The body's spiking neurons, input side first."""
        return spiking_neurons(self.body)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images)
        self._check_multistep()
        check_fits_in_memory("timesteps", self.timesteps, (self.timesteps, *x.shape), x.dtype, x.device,
                             what="the encoded input [T, N, C, H, W] =")
        reset_states(self)
        spikes = self.encoder(x, self.timesteps)
        lean = self.runs_lean
        chunk = self.time_chunk or (LEAN_TIME_CHUNK if lean else self.timesteps)
        total = 0.0
        with _recomputing_currents(self.body, lean):
            for start in range(0, self.timesteps, chunk):
                out_seq = self.body(spikes[start:start + chunk])
                if self.output_neuron is not None:
                    out_seq = self.output_neuron(out_seq)
                total = total + out_seq.sum(0)
        _detach_state(self)  # the final state keeps no graph (copies, checkpoints, no memory held)
        return total / self.timesteps


    def _check_multistep(self) -> None:
        """Refuse a body with single-step SpikingJelly modules: they would read the [T, N, ...] sequence as one step
        (a raw shape error, or for neurons silently wrong dynamics)."""
        single = [name for name, m in self.body.named_modules() if isinstance(m, base.StepModule) and m.step_mode == "s"]
        if single:
            raise ValueError(f"argument 'body' has single-step SpikingJelly modules ({', '.join(single[:3])}"
                             f"{', ...' if len(single) > 3 else ''}) but receives [T, N, C, H, W] sequences: call "
                             "spikingjelly.activation_based.functional.set_step_mode(body, 'm') first")


@contextlib.contextmanager
def _recomputing_currents(body: nn.Module, enabled: bool) -> Iterator[None]:
    """:func:`snn_adv.models.recompute_currents` for one forward (when ``enabled``), the layers' own setting restored
    after it (the layers read it in the forward; the backward follows what the forward recorded)."""
    layers = [m for m in body.modules() if hasattr(m, "recompute_output")] if enabled else []
    own = [m.recompute_output for m in layers]
    for module in layers:
        module.recompute_output = True
    try:
        yield
    finally:
        for module, setting in zip(layers, own):
            module.recompute_output = setting


def _detach_state(net: nn.Module) -> None:
    """Replace every neuron state tensor by a detached one (SpikingJelly's ``detach_net`` detaches in place, which
    fails on the views our fused neurons return)."""
    for module in net.modules():
        if isinstance(module, base.MemoryModule):
            for key, value in module._memories.items():
                if isinstance(value, torch.Tensor):
                    module._memories[key] = value.detach()


def check_classifier(model, name: str = "model") -> nn.Module:
    """Require a module mapping images [N, C, H, W] in [0, 1] to logits; a bare multistep SpikingJelly network (the
    body of a classifier, which takes [T, N, ...] sequences) is refused with the fix."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"argument '{name}' must be a torch.nn.Module (a classifier), got {type(model).__name__}")
    if isinstance(model, ImageClassifier):
        return model
    multistep = [n for n, m in model.named_modules() if isinstance(m, base.StepModule) and m.step_mode == "m"]
    if multistep:
        raise TypeError(f"argument '{name}' is a bare multistep SpikingJelly network ({type(model).__name__}, e.g. "
                        f"module {multistep[0] or '(root)'!r}), which takes [T, N, ...] sequences; attacks and evaluation "
                        "take a classifier of images [N, C, H, W] in [0, 1]: wrap it, "
                        "SpikingClassifier(body, timesteps=T, mean=..., std=...)")
    return model
