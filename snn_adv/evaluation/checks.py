r"""Self-checks of an evaluation (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; AutoAttack's flags).

Each check is a paired test on the same images (:func:`snn_adv.evaluation.compare`), one-sided in the *suspicious*
direction: it fails (``passed=False``) only when that direction is significant at ``level``, and it reports the
difference, its interval and the p-value in ``values``. Suspicious, i.e. signs of gradient masking:

- ``accuracy_falls_with_eps``: accuracy at a larger eps significantly above that at a smaller one (Bonferroni over
  the pairs of neighbouring eps);
- ``large_eps_reaches_zero``: at a very large eps the accuracy significantly above a small bound (one-sided test
  against the bound, not a fixed tolerance);
- ``more_steps_do_not_help`` / ``more_restarts_do_not_help``: more effort significantly lowers the accuracy;
- ``whitebox_not_weaker_than_transfer[<source>]``: the whitebox attack significantly weaker than transfer from
  that source (a separately trained model, the ANN twin);
- ``not_weaker_than_<reference>`` (:func:`check_not_weaker`): an attack of at least the reference's effort (PGD
  after FGSM, EOT, a worst case over it) leaves significantly more accuracy;
- ``gradient_free_not_stronger``: Square significantly stronger than the gradient attack;
- ``minimal_norm_not_more_robust[<attack>]``: a minimal-norm attack (FAB, DeepFool, CW) significantly weaker than
  PGD, each counted as successful only within the budget (L2 attacks: the L2 ball ``eps*sqrt(d)`` that contains the
  L-inf ball, so a sound L2 attack can only do better than PGD there).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..attacks import PGD
from ..attacks.base import GradientMaskingWarning
from ..attacks.budget import within_budget
from ..neurons import spiking_neurons
from ..stats import Comparison
from ..validation import check_fraction, check_positive_int
from .engine import Data, evaluate
from .result import EvaluationResult, compare, compare_to_bound

__all__ = [
    "Check",
    "GradientMaskingWarning",
    "MINIMAL_NORM_ATTACKS",
    "check_gradient_free",
    "check_large_eps",
    "check_minimal_norm",
    "check_monotone_in_eps",
    "check_more_effort",
    "check_not_weaker",
    "check_whitebox_vs_transfer",
    "sanity_checks",
    "seed_spread",
    "warn_failures",
]


@dataclasses.dataclass
class Check:
    """One self-check: ``passed`` is True, False (the suspicious direction is significant) or None (reported only
    or skipped); ``values`` holds the accuracies, the difference, its interval and the p-value."""

    name: str
    passed: Optional[bool]
    detail: str
    values: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Check":
        return cls(data["name"], data["passed"], data["detail"], dict(data.get("values", {})))

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL`` or ``info`` (every report words a verdict through this)."""
        return {True: "PASS", False: "FAIL", None: "info"}[self.passed]

    def report_line(self) -> str:
        """The check as a markdown list item of a report."""
        return f"- {self}"

    def __str__(self) -> str:
        """The one wording of a check (a failure is a sign of gradient masking, not a proof)."""
        warning = " (possible gradient masking)" if self.passed is False else ""
        return f"{self.verdict}{warning}: {self.name}: {self.detail}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _paired_check(name: str, suspicious: Comparison, level: float, what: str, **accuracies: float) -> Check:
    """A check failing when ``suspicious`` (a one-sided comparison, positive = suspicious) is significant."""
    failed = suspicious.significant(level)
    detail = f"{what}: {suspicious}" + (" -- significant, possible gradient masking" if failed else "")
    values = {**accuracies, "comparison": suspicious.to_dict(), "level": level}
    return Check(name, not failed, detail, values)


def check_monotone_in_eps(results_by_eps: Mapping[float, EvaluationResult], level: float = 0.95) -> Check:
    """Adversarial accuracy must not rise significantly between neighbouring eps (Bonferroni over the pairs)."""
    points = sorted(results_by_eps.items())
    if len(points) < 2:
        return Check("accuracy_falls_with_eps", None, "needs at least two eps", {})
    comparisons = [(e0, e1, compare(r1, r0, alternative="greater")) for (e0, r0), (e1, r1) in zip(points, points[1:])]
    pairs = len(comparisons)
    worst = min(comparisons, key=lambda c: c[2].p_value)
    corrected = min(1.0, worst[2].p_value * pairs)
    failed = corrected < 1.0 - level
    e0, e1, comparison = worst
    detail = (f"largest rise eps {e0:.4g} -> {e1:.4g}: {comparison} (Bonferroni p = {corrected:.3g} over {pairs} pairs)"
              + (" -- significant, possible gradient masking" if failed else ""))
    return Check("accuracy_falls_with_eps", not failed, detail, {
        "accuracy_by_eps": {str(e): r.adversarial_accuracy for e, r in points},
        "comparisons": [{"eps": [a, b], **c.to_dict()} for a, b, c in comparisons],
        "p_value_corrected": corrected, "level": level})


def check_large_eps(result: EvaluationResult, eps: float, bound: float = 0.05, level: float = 0.95) -> Check:
    """At a very large eps the accuracy must not be significantly above ``bound`` (one-sided test)."""
    comparison = compare_to_bound(result, "adversarial", bound, level)
    return _paired_check("large_eps_reaches_zero", comparison, level,
                         f"accuracy {_pct(result.adversarial_accuracy)} at eps={eps:.4g} vs bound {_pct(bound)}",
                         accuracy=result.adversarial_accuracy, eps=eps, bound=bound)


def check_more_effort(base: EvaluationResult, more: EvaluationResult, what: str, level: float = 0.95) -> Check:
    """More steps or restarts (``what``) must not lower the accuracy significantly: the base attack converged."""
    comparison = compare(base, more, alternative="greater")
    return _paired_check(f"more_{what}_do_not_help", comparison, level,
                         f"accuracy {_pct(base.adversarial_accuracy)} -> {_pct(more.adversarial_accuracy)} with more {what}",
                         accuracy=base.adversarial_accuracy, accuracy_more=more.adversarial_accuracy)


def check_not_weaker(attack: EvaluationResult, reference: EvaluationResult, name: str, what: str,
                     level: float = 0.95) -> Check:
    """An attack that is at least the ``reference``'s effort (PGD after FGSM, EOT, a worst case over it) must not
    leave significantly more accuracy: a one-sided paired test of ``accuracy(attack) > accuracy(reference)``.
    ``name`` names the check, ``what`` describes the pair in its detail."""
    return _paired_check(name, compare(attack, reference, alternative="greater"), level, what,
                         attack=attack.adversarial_accuracy, reference=reference.adversarial_accuracy)


def check_whitebox_vs_transfer(whitebox: EvaluationResult, transfer: EvaluationResult, source: str = "source",
                               level: float = 0.95) -> Check:
    """The whitebox attack must not be significantly weaker than transfer from ``source``."""
    comparison = compare(whitebox, transfer, alternative="greater")
    return _paired_check(f"whitebox_not_weaker_than_transfer[{source}]", comparison, level,
                         f"whitebox {_pct(whitebox.adversarial_accuracy)}, transfer from {source} "
                         f"{_pct(transfer.adversarial_accuracy)}",
                         whitebox=whitebox.adversarial_accuracy, transfer=transfer.adversarial_accuracy)


def check_gradient_free(gradient: EvaluationResult, gradient_free: EvaluationResult, level: float = 0.95) -> Check:
    """A gradient-free attack (Square) must not be significantly stronger than the gradient attack."""
    comparison = compare(gradient, gradient_free, alternative="greater")
    return _paired_check("gradient_free_not_stronger", comparison, level,
                         f"gradient attack {_pct(gradient.adversarial_accuracy)}, gradient-free "
                         f"{_pct(gradient_free.adversarial_accuracy)}",
                         gradient=gradient.adversarial_accuracy, gradient_free=gradient_free.adversarial_accuracy)


def check_minimal_norm(pgd: EvaluationResult, minimal: EvaluationResult, name: str, level: float = 0.95) -> Check:
    """A minimal-norm attack (within budget) must not report significantly more robustness than PGD."""
    comparison = compare(minimal, pgd, alternative="greater")
    return _paired_check(f"minimal_norm_not_more_robust[{name}]", comparison, level,
                         f"{name} {_pct(minimal.adversarial_accuracy)}, PGD {_pct(pgd.adversarial_accuracy)}",
                         minimal_norm=minimal.adversarial_accuracy, pgd=pgd.adversarial_accuracy)


def seed_spread(result: EvaluationResult, level: float = 0.95) -> Check:
    """Accuracy per scoring seed and the interval over images and seeds (reported, not judged)."""
    by_seed = result.accuracy_by_seed()
    low, high = result.confidence_interval("adversarial", level)
    values = list(by_seed.values())
    return Check("poisson_seed_spread", None,
                 f"adversarial accuracy {_pct(result.adversarial_accuracy)} [{_pct(low)}, {_pct(high)}] over "
                 f"{len(values)} seeds (per seed {_pct(min(values))} .. {_pct(max(values))})",
                 {"by_seed": {str(k): v for k, v in by_seed.items()}, "low": low, "high": high, "level": level})


def warn_failures(checks: Iterable[Check]) -> List[Check]:
    """Warn (:class:`GradientMaskingWarning`) about every failed check; return the failed ones."""
    failed = [c for c in checks if c.passed is False]
    for check in failed:
        warnings.warn(f"possible gradient masking: {check.name}: {check.detail}", GradientMaskingWarning, stacklevel=2)
    return failed


#: minimal-norm torchattacks run by :func:`sanity_checks`: class name -> (norm, default arguments)
MINIMAL_NORM_ATTACKS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "FAB": ("Linf", {"steps": 10, "n_restarts": 1}),
    "DeepFool": ("L2", {"steps": 50, "overshoot": 0.02}),
    "CW": ("L2", {"c": 1.0, "kappa": 0.0, "steps": 50, "lr": 0.01}),
}


def _num_classes(model: nn.Module, images: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(images[:1]).shape[1])


def _minimal_norm_attack(name: str, model: nn.Module, eps: float, images: torch.Tensor, seed: int):
    """torchattacks' ``name`` on ``model`` counted within the L-inf ball ``eps`` (L2 attacks: the L2 ball
    ``eps * sqrt(d)`` that contains it)."""
    import torchattacks

    norm, kwargs = MINIMAL_NORM_ATTACKS[name]
    cls = getattr(torchattacks, name)
    if name == "FAB":
        kwargs = dict(kwargs, norm=norm, eps=eps, n_classes=_num_classes(model, images), seed=seed)
    radius = eps if norm == "Linf" else eps * math.sqrt(images[0].numel())
    return within_budget(cls(model, **kwargs), radius, norm)


def sanity_checks(
    target: nn.Module,
    data: Data,
    *,
    eps: float = 8 / 255,
    sources: Optional[Mapping[str, nn.Module]] = None,
    steps: int = 7,
    grad_mode: str = "bptt",
    eps_factors: Sequence[float] = (0.5, 1.0, 2.0),
    large_eps: float = 1.0,
    large_eps_bound: float = 0.05,
    more: int = 4,
    square_queries: Optional[int] = 300,
    minimal_norm: Sequence[str] = ("FAB",),
    seed: int = 0,
    scoring_seeds: Sequence[int] = (0,),
    level: float = 0.95,
    warn: bool = True,
    progress: bool = False,
    **evaluate_kwargs,
) -> List[Check]:
    """Run the battery of self-checks on ``target`` (keep ``data`` small: it runs about a dozen attacks).

    PGD (``alpha = 2.5*eps/steps``, Madry's rule, random start, ``grad_mode`` on spiking models) at
    ``eps * eps_factors``; at ``large_eps`` with ``4*steps`` steps from the clean image; with ``more`` times the
    steps and ``more`` restarts; transferred from each of ``sources`` (name -> model, e.g. the ANN twin and a
    separately trained network); torchattacks' Square with ``square_queries`` queries and the ``minimal_norm``
    attacks of :data:`MINIMAL_NORM_ATTACKS` (skipped when torchattacks is missing). The default is FAB (L-inf, the
    same ball as PGD); DeepFool and CW are L2 attacks compared in the L2 ball that contains the L-inf ball, which
    is sound only for a converged attack: with their default steps, DeepFool left 45 % of an honest Fashion-MNIST
    ANN's images robust where PGD left 28 % (a false alarm), so they are opt-in. Every evaluation uses the same
    images, ``seed`` and ``scoring_seeds``, so all comparisons are paired. Returns the :class:`Check` list, the
    seed spread last; warns about failures when ``warn``.
    """
    eps = check_fraction("eps", eps)
    large_eps = check_fraction("large_eps", large_eps)
    steps, more = check_positive_int("steps", steps), check_positive_int("more", more)
    unknown = [name for name in minimal_norm if name not in MINIMAL_NORM_ATTACKS]
    if unknown:
        raise ValueError(f"argument 'minimal_norm' = {list(minimal_norm)!r}: unknown {unknown}; allowed: "
                         f"{', '.join(MINIMAL_NORM_ATTACKS)}")
    kwargs = dict(evaluate_kwargs, seed=seed, scoring_seeds=scoring_seeds, progress=progress)

    def run(attack, source: Optional[nn.Module] = None) -> EvaluationResult:
        return evaluate(target, data, attack, source=source, **kwargs)

    def pgd(epsilon: float, model: nn.Module = target, n_steps: int = steps, restarts: int = 1,
            random_start: bool = True) -> EvaluationResult:
        mode = grad_mode if spiking_neurons(model) else "bptt"
        attack = PGD(model, eps=epsilon, alpha=max(2.5 * epsilon / n_steps, 1e-8), steps=n_steps, restarts=restarts,
                     random_start=random_start, grad_mode=mode)
        return run(attack, source=None if model is target else model)

    by_eps = {eps * f: pgd(eps * f) for f in eps_factors}
    base = by_eps[eps] if eps in by_eps else pgd(eps)
    checks = [
        check_monotone_in_eps({**by_eps, eps: base}, level),
        # from the clean image: a large random start alone would fool the model and hide a missing gradient
        check_large_eps(pgd(large_eps, n_steps=4 * steps, random_start=False), large_eps, large_eps_bound, level),
        check_more_effort(base, pgd(eps, n_steps=more * steps), "steps", level),
        check_more_effort(base, pgd(eps, restarts=more), "restarts", level),
    ]
    for name, source in (sources or {}).items():
        checks.append(check_whitebox_vs_transfer(base, pgd(eps, model=source), name, level))
    try:
        import torchattacks
    except ImportError:  # pragma: no cover - torchattacks is an optional extra
        torchattacks = None
    if torchattacks is not None and square_queries:
        square = torchattacks.Square(target, norm="Linf", eps=eps, n_queries=square_queries, n_restarts=1, seed=seed)
        checks.append(check_gradient_free(base, run(square), level))
    else:
        checks.append(Check("gradient_free_not_stronger", None, "skipped (no square_queries or torchattacks missing)"))
    if torchattacks is not None and minimal_norm:
        images = (data[0] if isinstance(data, tuple) else next(iter(data))[0])[:1]
        images = images.to(next(target.parameters()).device)
        for name in minimal_norm:
            checks.append(check_minimal_norm(base, run(_minimal_norm_attack(name, target, eps, images, seed)), name, level))
    checks.append(seed_spread(base, level))
    if warn:
        warn_failures(checks)
    return checks
