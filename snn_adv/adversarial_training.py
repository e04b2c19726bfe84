r"""Adversarial training for every kind of classifier (:func:`snn_adv.training.train`'s ``adversarial=``).

Each training batch is replaced (or joined) by adversarial examples crafted on the model being trained, with the
package's own attacks: the same BPTT (or other gradient mode) and EOT over Poisson draws as an evaluation, so an
SNN is trained against the attack that will judge it. The methods, with their papers' CIFAR-10 defaults at
``eps = 8/255``:

``pgd``     Madry et al. (ICLR 2018): minimise ``CE(f(x'), y)``, ``x'`` = PGD from a uniform random start,
            7 steps of 2/255.
``fast``    Wong et al. (ICLR 2020, "fast is better than free"): the same loss, ``x'`` = one FGSM step of
            ``1.25 eps`` from a uniform random start, projected.
``trades``  Zhang et al. (ICML 2019): minimise ``CE(f(x), y) + beta KL(p(x) || p(x'))``, ``x'`` maximising the KL
            term by 10 steps of 2/255 from ``x + 0.001 N(0, 1)``, ``beta = 6``.
``trades-rfgsm``  Ozdenizci and Legenstein's robust conversion (TMLR 2024; their code's defaults, at their training
            ``eps = 2/255``): the TRADES loss with ``beta = 2``, ``x'`` by R+FGSM on the KL term (Tramer et al. 2018):
            a random sign step of ``alpha = eps / 2``, then one gradient-sign step of ``eps - alpha``, projected.
            With :func:`~snn_adv.conversion.hybrid_init`'s ``learnable_thresholds`` it finetunes a converted SNN's
            thresholds and weights together, as they do.

Examples are crafted with the model in ``eval()`` and its parameters frozen (every attack of the package does
that), then the loss is taken in ``train()``. The attack's random stream is drawn from torch's global generator,
which the training checkpoint saves, so a resumed run crafts what an uninterrupted one crafts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attacks import PGD
from .attacks.base import project
from .attacks.gradients import GRADIENT_MODES, resolve_gradient_mode
from .module_state import preserved_modes
from .schema import FRACTION, POSITIVE_INT, Section, Value
from .validation import check_choice, check_fraction, check_positive, check_positive_int

__all__ = ["ADVERSARIAL_METHODS", "ADVERSARIAL_SECTION", "AdversarialTraining", "TRADES_METHODS"]

#: method -> its paper's defaults (alpha, steps; beta for TRADES)
ADVERSARIAL_METHODS: Dict[str, Dict[str, Any]] = {
    "pgd": {"alpha": 2 / 255, "steps": 7},
    "fast": {"alpha_over_eps": 1.25, "steps": 1},
    "trades": {"alpha": 2 / 255, "steps": 10, "beta": 6.0},
    "trades-rfgsm": {"alpha_over_eps": 0.5, "steps": 1, "beta": 2.0},
}
#: the methods with the TRADES loss (clean cross-entropy plus beta KL towards the adversarial prediction)
TRADES_METHODS = ("trades", "trades-rfgsm")

#: a config's ``adversarial`` key of a model recipe: :class:`AdversarialTraining`'s fields
ADVERSARIAL_SECTION = Section({"method": Value("str", choices=tuple(ADVERSARIAL_METHODS)), "eps": FRACTION,
                               "alpha": Value("number", minimum=1e-12), "steps": POSITIVE_INT,
                               "beta": Value("number", minimum=1e-12), "eot": POSITIVE_INT,
                               "grad_mode": Value("str", choices=tuple(GRADIENT_MODES))}, required=("method",))


class _TradesPGD(PGD):
    """PGD ascending ``KL(p_clean || p(x'))`` (``labels`` are ignored: the clean probabilities are set per batch),
    from ``x + 0.001 N(0, 1)`` as in TRADES' reference code."""

    name = "trades-pgd"
    clean_probabilities: Optional[torch.Tensor] = None

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, 1), self.clean_probabilities, reduction="none").sum(1)

    def run(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=self.generator, dtype=images.dtype).to(images.device)
        adversarial = project(images + 0.001 * noise, images, self.eps)
        for _ in range(self.steps):
            adversarial = project(adversarial + self.alpha * self.input_gradient(adversarial, labels).sign(),
                                  images, self.eps)
        return adversarial


class _RandomFGSMKL(_TradesPGD):
    """R+FGSM on the KL term (Tramer et al. 2018, as Ozdenizci and Legenstein train): ``x0 = clip(x + alpha
    sign(N(0, 1)))``, then ``x' = proj(x0 + (eps - alpha) sign(grad KL(p_clean || p(x0))))``."""

    name = "trades-rfgsm"

    def run(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=self.generator, dtype=images.dtype).to(images.device)
        start = (images + self.alpha * noise.sign()).clamp(0, 1)
        return project(start + (self.eps - self.alpha) * self.input_gradient(start, labels).sign(), images, self.eps)


@dataclasses.dataclass(frozen=True)
class AdversarialTraining:
    """One adversarial-training recipe; :meth:`from_spec` reads a config's ``adversarial`` section.

    :ivar method: ``'pgd'``, ``'fast'``, ``'trades'`` or ``'trades-rfgsm'`` (:data:`ADVERSARIAL_METHODS`).
    :ivar eps: L-infinity radius in [0, 1] image units.
    :ivar alpha: step size (default: the method's).
    :ivar steps: attack iterations (default: the method's).
    :ivar beta: TRADES' weight of the KL term.
    :ivar eot: Poisson draws the crafting gradient is averaged over (SNNs).
    :ivar grad_mode: the crafting gradient through spiking neurons (``bptt``, ``rate``, ``hart``, ...).
    """

    method: str
    eps: float = 8 / 255
    alpha: Optional[float] = None
    steps: Optional[int] = None
    beta: Optional[float] = None
    eot: int = 1
    grad_mode: str = "bptt"

    def __post_init__(self):
        check_choice("adversarial.method", self.method, ADVERSARIAL_METHODS)
        defaults = ADVERSARIAL_METHODS[self.method]
        check_fraction("adversarial.eps", self.eps)
        alpha = self.alpha if self.alpha is not None else defaults.get("alpha",
                                                                        defaults.get("alpha_over_eps", 0) * self.eps)
        object.__setattr__(self, "alpha", check_positive("adversarial.alpha", alpha))
        object.__setattr__(self, "steps", check_positive_int("adversarial.steps", self.steps or defaults["steps"]))
        if self.method in TRADES_METHODS:
            object.__setattr__(self, "beta", check_positive("adversarial.beta", self.beta if self.beta is not None
                                                            else defaults["beta"]))
        elif self.beta is not None:
            raise ValueError(f"argument 'adversarial.beta' = {self.beta!r}: only TRADES has a beta")
        if self.method == "trades-rfgsm" and (self.steps != 1 or not self.alpha < self.eps):
            raise ValueError(f"argument 'adversarial' of method 'trades-rfgsm' (R+FGSM): one step (steps = 1, got "
                             f"{self.steps}) after a random step alpha < eps (got alpha {self.alpha:.4g}, eps {self.eps:.4g})")
        check_positive_int("adversarial.eot", self.eot)
        resolve_gradient_mode(self.grad_mode)  # a wrong mode is refused here, not at the first batch

    @classmethod
    def from_spec(cls, spec: Optional[Mapping[str, Any]]) -> Optional["AdversarialTraining"]:
        """``None`` for ``None``; else the recipe of a mapping of this class's fields (unknown keys refused)."""
        if spec is None or isinstance(spec, cls):
            return spec
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ValueError(f"argument 'adversarial': unknown key(s) {unknown}; allowed: {sorted(fields)}")
        return cls(**spec)

    def settings(self) -> Dict[str, Any]:
        """Every value the training depends on (resolved defaults included): the resume check compares them."""
        return dataclasses.asdict(self)

    def craft(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial examples of a batch on ``model`` (in eval mode for the attack; its modes come back)."""
        seed = int(torch.randint(0, 2**62, (1,)))  # from the global stream the training checkpoint saves
        kwargs = dict(eps=self.eps, alpha=self.alpha, steps=self.steps, eot=self.eot, grad_mode=self.grad_mode,
                      seed=seed)
        if self.method not in TRADES_METHODS:
            return PGD(model, random_start=True, **kwargs)(images, labels)
        attack = (_TradesPGD if self.method == "trades" else _RandomFGSMKL)(model, random_start=False, **kwargs)
        with torch.no_grad(), preserved_modes(model, training=False):
            attack.clean_probabilities = F.softmax(model(images), 1)
        return attack(images, labels)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             adversarial: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(sum over the batch of the method's loss, the logits its accuracy is counted on)`` with ``model`` in
        its training mode: the adversarial logits for PGD / fast, the clean ones for TRADES."""
        if self.method not in TRADES_METHODS:
            logits = model(adversarial)
            return F.cross_entropy(logits, labels, reduction="sum"), logits
        logits = model(images)
        robust = F.kl_div(F.log_softmax(model(adversarial), 1), F.softmax(logits, 1), reduction="sum")
        return F.cross_entropy(logits, labels, reduction="sum") + self.beta * robust, logits
