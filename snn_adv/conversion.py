"""ANN -> SNN conversion (SNN-conv) and the start of hybrid training (SNN-BP).

Threshold balancing (Sengupta et al. 2019, "Going deeper in spiking neural networks"), the default: the SNN is the
ANN's twin with IF neurons (leak 1, soft reset) and the ANN's weights; the thresholds are set one neuron layer
at a time, input side first. For layer ``l``, Poisson spike trains of the calibration images are run through the
network whose layers ``< l`` already spike with their balanced thresholds, and::

    v_th[l] = max over (images, t, neurons) of I_l[t]        (or a percentile of I_l[t], to ignore outliers)

where ``I_l[t]`` is layer ``l``'s input current. With soft reset the firing rate of an IF neuron is
``~ clip(mean_t I_l[t] / v_th[l], 0, 1)``, the ANN's ReLU scaled by ``1/v_th[l]``, so every layer's rates stay in
range and the network predicts what the ANN predicts, more closely as T grows.

``method='spikingjelly'`` uses SpikingJelly's ``ann2snn`` instead: its ``VoltageHook`` records each ReLU's
activation scale ``lambda_l`` (max or percentile) on the *ANN*; with unit spikes that is ``v_th[l] =
lambda_l / lambda_{l-1}`` (``lambda_0 = 1``: the Poisson input spikes are +-1), the data-based normalisation of
Diehl et al. 2015 / Rueckauer et al. 2017. It needs a chain of layers (VGG), not residual blocks.

SNN-BP (Rathi et al., ICLR 2020): :func:`hybrid_init` scales the converted thresholds (0.7), sets the leak (0.99)
and a smaller T; :func:`snn_adv.training.train` then runs surrogate-gradient BPTT.
"""
from __future__ import annotations

import copy
import itertools
from typing import Iterable, List, Optional

import torch
import torch.nn as nn

from .classifier import AnnClassifier, SpikingClassifier
from .compat import insert_voltage_hooks
from .encoding import Encoder, PoissonEncoder
from .models import fold_batchnorm, set_thresholds, snn_from_ann
from .module_state import reset_states
from .progress import describe, log, progress as progress_bar
from .neurons import LeakyLIFNode
from .schema import FLAG, LEAK, POSITIVE_INT, Value
from .validation import check_choice, check_fraction, check_leak, check_positive, check_positive_int

__all__ = ["CONVERT_FIELDS", "HYBRID_FIELDS", "METHODS", "convert", "hybrid_init"]

METHODS = ("threshold-balancing", "spikingjelly")
#: the arguments of :func:`convert` a config's ``models.snn_conv`` recipe may set, and of :func:`hybrid_init` its
#: ``models.snn_bp`` recipe (a test holds them to the signatures)
CONVERT_FIELDS = {"timesteps": POSITIVE_INT, "method": Value("str", choices=METHODS),
                 "percentile": Value("number", minimum=1e-9, maximum=100)}
HYBRID_FIELDS = {"timesteps": POSITIVE_INT, "threshold_scale": Value("number", minimum=1e-9), "leak": LEAK,
                 "learnable_thresholds": FLAG}
_SAMPLES_PER_BATCH = 1 << 21  # currents kept from the first batch for a percentile (that fraction of each batch)


class _StopForward(Exception):
    """Raised by the recording hook: nothing above the layer being balanced needs to run."""


class _CurrentStatistic:
    """Maximum of the recorded currents, or their percentile over the whole calibration run, estimated from a
    seeded random sample of every batch (the same fraction of each, so batching and time chunks do not matter)."""

    def __init__(self, percentile: float, seed: int):
        self.percentile = percentile
        self.maxima: List[float] = []
        self.samples: List[torch.Tensor] = []
        self.fraction: Optional[float] = None
        self.generator = torch.Generator().manual_seed(seed)

    def update(self, current: torch.Tensor) -> None:
        flat = current.detach().flatten().float()
        if self.percentile >= 100.0:
            self.maxima.append(flat.max().item())
            return
        if self.fraction is None:
            self.fraction = min(1.0, _SAMPLES_PER_BATCH / flat.numel())
        count = max(1, round(flat.numel() * self.fraction))
        if count < flat.numel():
            flat = flat[torch.randint(flat.numel(), (count,), generator=self.generator).to(flat.device)]
        self.samples.append(flat.cpu())

    def value(self) -> float:
        if not self.maxima and not self.samples:
            raise ValueError("argument 'calibration_loader' yielded no batches")
        if self.percentile >= 100.0:
            return max(self.maxima)
        values = torch.cat(self.samples)
        return values.kthvalue(max(1, int(round(self.percentile / 100.0 * values.numel())))).values.item()


def _batches(loader: Iterable, max_batches: Optional[int]):
    return itertools.islice(loader, max_batches) if max_batches is not None else loader


def _balance_thresholds(snn: SpikingClassifier, loader: Iterable, percentile: float, max_batches: Optional[int],
                        seed: int, time_chunk: Optional[int], progress: bool) -> List[float]:
    device = snn.mean.device
    nodes = snn.neurons()
    thresholds = []
    bar = progress_bar(nodes, "threshold balancing", unit="layer", enabled=None if progress else False)
    for index, node in enumerate(bar):
        statistic = _CurrentStatistic(percentile, seed + index)

        def record(module: nn.Module, inputs):
            statistic.update(inputs[0])
            raise _StopForward

        handle = node.register_forward_pre_hook(record)
        if isinstance(snn.encoder, PoissonEncoder):
            snn.encoder.manual_seed(seed)  # the same input spikes for every layer
        try:
            with torch.no_grad():
                for images, _ in _batches(loader, max_batches):
                    x = snn.normalize(images.to(device))
                    reset_states(snn)
                    chunk = snn.timesteps if time_chunk is None else time_chunk
                    for start in range(0, snn.timesteps, chunk):
                        try:
                            snn.body(snn.encoder(x, min(chunk, snn.timesteps - start)))
                        except _StopForward:
                            pass  # layers below ran for this chunk and keep their state for the next one
        finally:
            handle.remove()
        node.v_threshold = check_positive(f"balanced threshold of neuron layer {index}", statistic.value())
        thresholds.append(node.v_threshold)
    return thresholds


def _spikingjelly_thresholds(ann: AnnClassifier, loader: Iterable, percentile: float, max_batches: Optional[int]) -> List[float]:
    from spikingjelly.activation_based.ann2snn.modules import VoltageHook

    body = fold_batchnorm(ann.body)
    if any(not isinstance(m, (nn.Sequential, nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.ReLU, nn.Identity))
           for m in body.modules()):
        raise ValueError("argument 'method' = 'spikingjelly': needs a plain chain of layers (e.g. VGG); for residual "
                         "networks use method='threshold-balancing'")
    mode = "max" if percentile >= 100.0 else f"{percentile}%"
    traced = insert_voltage_hooks(torch.fx.symbolic_trace(body).eval(), mode)
    with torch.no_grad():
        for images, _ in _batches(loader, max_batches):
            traced(ann.normalize(images.to(ann.mean.device)))
    scales = [float(m.scale) for m in traced.modules() if isinstance(m, VoltageHook)]
    return [scale / previous for scale, previous in zip(scales, [1.0] + scales[:-1])]


def convert(
    ann: AnnClassifier,
    calibration_loader: Iterable,
    timesteps: int,
    method: str = "threshold-balancing",
    percentile: float = 99.9,
    max_batches: Optional[int] = None,
    encoder: Optional[Encoder] = None,
    seed: int = 0,
    time_chunk: Optional[int] = None,
    backend: str = "torch",
    progress: bool = True,
) -> SpikingClassifier:
    """ANN -> SNN-conv: the ANN's twin with IF neurons (leak 1) and balanced thresholds (module docstring).

    :param ann: a trained :class:`AnnClassifier` (left unchanged; the SNN gets a copy of its weights). Its body may
        use torch's layers or SpikingJelly's single-step ones; a BatchNorm right after a convolution or linear
        layer is folded into it (:func:`~snn_adv.models.fold_batchnorm`); see :func:`~snn_adv.models.spiking_twin`.
    :param calibration_loader: yields ``(images in [0, 1], labels)``; a few thousand training images suffice.
    :param timesteps: T of the returned SNN, also used for calibration.
    :param method: ``'threshold-balancing'`` (Sengupta et al., spike-driven) or ``'spikingjelly'`` (ann2snn scales).
    :param percentile: 100 for the maximum current, less to ignore outliers (e.g. 99.9, the default).
    :param max_batches: use only this many calibration batches.
    :param encoder: input encoder of the SNN (default: Poisson with ``seed``).
    :param seed: seeds the calibration's Poisson draws (same seed, same thresholds).
    :param time_chunk: run calibration this many timesteps at a time (bounds memory at large T).
    """
    if not isinstance(ann, AnnClassifier):
        raise TypeError(f"argument 'ann' must be an AnnClassifier, got {type(ann).__name__}")
    timesteps = check_positive_int("timesteps", timesteps)
    check_choice("method", method, METHODS)
    percentile = check_fraction("percentile", percentile, low=0.0, high=100.0)
    if percentile == 0.0:
        raise ValueError("argument 'percentile' = 0: must lie in (0, 100]")
    if max_batches is not None:
        max_batches = check_positive_int("max_batches", max_batches)
    snn = snn_from_ann(ann, timesteps, leak=1.0, encoder=encoder or PoissonEncoder(seed=seed), backend=backend)
    snn.eval()
    if progress:
        log(f"convert {describe(ann)} to SNN-conv at T={timesteps} ({method}, percentile {percentile:g}, seed {seed})")
    if method == "spikingjelly":
        set_thresholds(snn.body, _spikingjelly_thresholds(ann, calibration_loader, percentile, max_batches))
    else:
        _balance_thresholds(snn, calibration_loader, percentile, max_batches, seed, time_chunk, progress)
    if isinstance(snn.encoder, PoissonEncoder) and encoder is None:
        snn.encoder.manual_seed(seed)
    snn.arch.setdefault("conversion", {}).update(method=method, percentile=percentile, calibration_timesteps=timesteps, seed=seed)
    return snn


def hybrid_init(
    snn: SpikingClassifier,
    timesteps: int,
    threshold_scale: float = 0.7,
    leak: float = 0.99,
    learnable_thresholds: bool = False,
) -> SpikingClassifier:
    """The starting point of SNN-BP (Rathi et al. 2020): an independent copy of a converted SNN with every
    threshold multiplied by ``threshold_scale`` (lower thresholds make up for the shorter T), the given ``leak``
    (LIF neurons) and ``timesteps``. Train it with :func:`snn_adv.training.train` (Adam, lr 1e-4).

    ``learnable_thresholds``: every :class:`~snn_adv.neurons.LeakyLIFNode`'s threshold becomes a trainable
    parameter, finetuned with the weights (Ozdenizci and Legenstein's robust conversion, TMLR 2024, with an
    adversarial recipe such as ``adversarial={"method": "trades-rfgsm", "eps": 2/255}``)."""
    if not isinstance(snn, SpikingClassifier):
        raise TypeError(f"argument 'snn' must be a SpikingClassifier, got {type(snn).__name__}")
    threshold_scale = check_positive("threshold_scale", threshold_scale)
    leak = check_leak(leak)
    hybrid = copy.deepcopy(snn)
    hybrid.timesteps = timesteps
    for node in hybrid.neurons():
        node.v_threshold = node.v_threshold * threshold_scale
    hybrid.set_leak(leak)
    if learnable_thresholds:
        nodes = hybrid.neurons()
        if not all(isinstance(node, LeakyLIFNode) for node in nodes):
            raise TypeError("learnable_thresholds needs snn_adv's LeakyLIFNode (or a subclass) in every spiking layer")
        weight = next(hybrid.parameters(), None)
        for node in nodes:
            node.make_threshold_learnable(like=weight)  # on the network's device, in its dtype
    hybrid.arch.setdefault("hybrid", {}).update(threshold_scale=threshold_scale, leak=leak, timesteps=timesteps)
    return hybrid
