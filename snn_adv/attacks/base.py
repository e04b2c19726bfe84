r"""Shared machinery of the L-infinity attacks: argument checks, the (EOT-averaged) input gradient under a gradient
mode, projection onto the eps-ball and [0, 1], seeding, and restoring the model's train/eval modes and the
parameters' ``requires_grad`` (frozen while the attack runs).

Attacks follow torchattacks' calling convention: ``attack(images, labels) -> adversarial images``, where the model
maps images in [0, 1] to logits (any :class:`~snn_adv.classifier.ImageClassifier`, ANN or SNN, or any such module).
Untargeted attacks ascend the cross-entropy of ``labels``; targeted ones (``targeted=True``) descend the
cross-entropy of ``labels`` read as target classes.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..classifier import check_classifier
from ..module_state import frozen_parameters, preserved_modes
from ..neurons import spiking_neurons
from ..validation import check_fraction, check_images, check_labels, check_positive_int, check_seed
from .gradients import GradientMode, Surrogate, gradient_mode, resolve_gradient_mode

__all__ = ["Attack", "GradientMaskingWarning", "NoInputGradientError", "VANISHING_RATIO", "project"]

#: An attack's first input gradient of a call is *vanishing* when the median over the batch of
#: ``eps * |d loss_n / dx|_1 / |loss_n|`` falls below this: by first order, a whole step of eps along the gradient
#: then changes each sample's loss by less than 1/10 000 of itself, so no step can move a decision. The ratio is
#: free of softmax saturation (a confident sample's loss and gradient shrink together). Measured: the tests'
#: converted Fashion-MNIST SNN (T = 16) 0.004 (its margin analogue: the CIFAR-10 SNN-BP 0.021, the tiny SNN-BP
#: 0.007); untrained deep nets of 8 silent LIF layers 1e-9 (ours) and 1e-12 (stock LIFNode under ``adapt``).
VANISHING_RATIO = 1e-4


class GradientMaskingWarning(UserWarning):
    """A self-check failed: robustness numbers may come from masked or vanishing gradients, not from the model."""


def project(adversarial: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Closest point of ``{z : |z - images|_inf <= eps} ∩ [0, 1]^d`` to ``adversarial`` (coordinate-wise clip)."""
    return torch.min(torch.max(adversarial, images - eps), images + eps).clamp_(0.0, 1.0)


class NoInputGradientError(RuntimeError):
    """An attack received no input gradient: it would return the clean images (or only its random start)."""

    def __init__(self, model: nn.Module, what: str):
        stock = sorted({type(m).__name__ for m in spiking_neurons(model)
                        if type(m).__module__.startswith("spikingjelly") and not m.training})
        cause = (f"likely cause: stock SpikingJelly neurons ({', '.join(stock)}) in eval() take a hard step with no "
                 "surrogate gradient; fix: wrap the network with snn_adv.adapt(network) (or build a "
                 "SpikingClassifier with snn_adv's neurons)" if stock else
                 "likely causes: a non-differentiable layer (rounding, argmax, a Poisson encoder without "
                 "straight-through), torch.no_grad() or detach() inside the model, or spiking neurons with no "
                 "surrogate gradient; fix the model or give it a differentiable approximation (BPDA)")
        super().__init__(f"no input gradient from model {type(model).__name__}: {what}; {cause}")


class Attack:
    """Base class of the L-infinity attacks.

    :param model: maps images [N, C, H, W] in [0, 1] to logits [N, K].
    :param eps: L-infinity radius in [0, 1] image units.
    :param grad_mode: gradient rule through spiking neurons: ``'bptt'`` (default), ``'rate'``, ``'hart'``,
        ``'assg'``, ``'pdsg'`` or a :class:`~snn_adv.attacks.gradients.GradientMode`.
    :param surrogate: the attacker's surrogate for ``'bptt'``/``'hart'`` (default: the model's own).
    :param eot: average the input gradient over this many forward/backward passes (independent Poisson draws).
    :param targeted: read ``labels`` as target classes and minimise their loss.
    :param seed: seed of the attack's own random stream (random starts); ``None``: a fresh nondeterministic seed.
    """

    name = "attack"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        *,
        grad_mode: Union[str, GradientMode] = "bptt",
        surrogate: Optional[Surrogate] = None,
        eot: int = 1,
        targeted: bool = False,
        seed: Optional[int] = None,
    ):
        self.model = check_classifier(model)
        self.eps = check_fraction("eps", eps)
        self.grad_mode = resolve_gradient_mode(grad_mode, surrogate)
        self.eot = check_positive_int("eot", eot)
        if not isinstance(targeted, bool):
            raise TypeError(f"argument 'targeted' = {targeted!r}: must be True or False")
        self.targeted = targeted
        self._at_start = True  # the next input gradient is the first of a call (see input_gradient)
        #: median of ``eps * |grad loss_n|_1 / |loss_n|`` over the batch at the call's first gradient (None: no
        #: gradient taken, e.g. a gradient-free attack); below :data:`VANISHING_RATIO` the call warns
        self.first_gradient_ratio: Optional[float] = None
        self.manual_seed(seed)

    # ---------------------------------------------------------------- seeding and settings
    def manual_seed(self, seed: Optional[int]) -> "Attack":
        """Restart the attack's random stream (random starts) from ``seed``."""
        self.seed = check_seed("seed", seed)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        return self

    def settings(self) -> Dict:
        """Everything that defines the attack, for result files."""
        return {
            "name": self.name,
            "eps": self.eps,
            "grad_mode": self.grad_mode.settings(),
            "eot": self.eot,
            "targeted": self.targeted,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items() if k != 'name')})"

    # ---------------------------------------------------------------- pieces for subclasses
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample objective to *ascend*: cross-entropy (untargeted) or its negative (targeted)."""
        loss = F.cross_entropy(logits, labels, reduction="none")
        return -loss if self.targeted else loss

    def input_gradient(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        r"""``(1/eot) * sum_k d/dx sum_n loss_n(model(x))`` over ``eot`` independent forward passes.

        The loss is summed over the batch, so each sample's gradient does not depend on the batch size.
        Must run inside :meth:`__call__` (gradient mode installed, model in eval mode).

        :raises NoInputGradientError: when the logits do not depend on the input in autograd's graph, or the
            first gradient of a call is exactly zero for the whole batch: the attack would silently return the
            clean images (or its random start). A zero gradient later on is a flat region the attack reached.
        """
        return self.objective_gradient(images, labels, self.loss)[0]

    def objective_gradient(self, images: torch.Tensor, labels: torch.Tensor,
                           objective) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""EOT averages over ``eot`` forward passes of the per-sample ``objective(logits, labels)`` (to ascend):
        ``(gradient, objective, logits)``, each the mean over the passes; the gradient is that of
        ``sum_n objective_n``. Guards as :meth:`input_gradient`."""
        total = torch.zeros_like(images)
        values = logits_sum = None
        self.grad_mode.before_gradient()
        for _ in range(self.eot):
            x = images.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.model(x)
                if not logits.requires_grad:
                    raise NoInputGradientError(self.model, "the logits are not connected to the input in autograd")
                value = objective(logits, labels)
                (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
            if grad is None:
                raise NoInputGradientError(self.model, "the logits are not connected to the input in autograd")
            total += grad
            values = value.detach() if values is None else values + value.detach()
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        if self._at_start:
            if not total.any():
                raise NoInputGradientError(self.model, "the input gradient is exactly zero for every sample of the batch")
            ratio = self.eps * total.flatten(1).abs().sum(1) / values.abs().clamp_min(1e-12)
            self.first_gradient_ratio = float(ratio.median())
        self._at_start = False
        return total / self.eot, values / self.eot, logits_sum / self.eot

    def random_uniform(self, like: torch.Tensor, low: float, high: float) -> torch.Tensor:
        """Uniform noise in [low, high) shaped like ``like``, from the attack's own seeded stream."""
        noise = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        return (low + (high - low) * noise).to(like.device)

    # ---------------------------------------------------------------- calling
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of ``images`` (inside the eps-ball around them and inside [0, 1])."""
        check_images(images)
        images = images.detach()
        with preserved_modes(self.model, training=False), frozen_parameters(self.model), \
                gradient_mode(self.model, self.grad_mode):
            with torch.no_grad():
                num_classes = self.model(images[:1]).shape[1]
            labels = check_labels(labels, num_classes, images.shape[0])
            self._at_start, self.first_gradient_ratio = True, None
            adversarial = self.forward(images, labels.to(images.device))
        if self.first_gradient_ratio is not None and self.first_gradient_ratio < VANISHING_RATIO:
            warnings.warn(GradientMaskingWarning(
                f"{type(self).__name__} on {type(self.model).__name__}: vanishing input gradient (median eps*|grad "
                f"loss|_1/|loss| = {self.first_gradient_ratio:.2g} < {VANISHING_RATIO:g}): no step can move a decision, "
                "so the adversarial accuracy is no robustness figure (silent neurons? a surrogate too narrow?)"),
                stacklevel=2)
        return project(adversarial.detach(), images, self.eps)
