r"""Intervals and paired tests for accuracies measured on the same images over several Poisson seeds.

An evaluation gives, per image ``i`` and scoring seed ``s``, an outcome ``c[i, s]`` in {0, 1}. The unit of
sampling is the image (the seeds only average out the model's own noise), so every method here works on the
per-image mean over seeds ``m_i = mean_s c[i, s]`` and resamples images:

- :func:`mean_interval`: the percentile bootstrap over images of ``mean_i m_i`` for any per-image values (seeded,
  so the same data always give the same interval).
- :func:`accuracy_interval`: exact Clopper-Pearson interval when every ``m_i`` is 0 or 1 (one seed, or seeds that
  agree on every image: the data are then n Bernoulli trials), else :func:`mean_interval`.
- :func:`paired_difference`: paired comparison of two per-image values on the same images, ``d_i = x_i - y_i``.
  The p-value is the sign-flip (randomisation) test of ``H0: d_i is symmetric about 0``, and the interval of
  ``mean_i d_i`` is the inversion of that same test, so the two cannot disagree: the interval excludes 0 exactly
  when ``p < 1 - level``.

  * Every ``d_i`` in {-1, 0, 1} (binary outcomes): flipping signs is the exact McNemar test, ``b ~ Binomial(m, 1/2)``
    for the ``b`` images with ``d_i = +1`` among the ``m`` discordant ones. The difference is
    ``Delta = q (2 pi - 1)`` with ``q = P(d_i != 0)`` and ``pi = P(d_i = +1 | d_i != 0)``; the interval holds
    every ``Delta`` for which the exact binomial test of ``pi = (1 + Delta / q) / 2`` (each tail at
    ``(1 - level) / 2``: the Clopper-Pearson interval of ``pi``) is not rejected for some ``q`` in the
    Clopper-Pearson interval of ``m / n`` at level ``1 - (1 - level) / 5`` (the nuisance ``q``, Berger-Boos; coverage
    at least ``level - (1 - level) / 5`` by Bonferroni). At ``Delta = 0``, ``pi = 1/2`` for every ``q``, and the
    two-sided binomial p-value there is twice the smaller tail: 0 lies outside exactly when ``p < 1 - level``.
  * Otherwise the Monte Carlo sign-flip test of ``H0(theta): d_i - theta is symmetric about 0`` with one seeded
    draw of signs for every ``theta``; the interval is the set of shifts ``theta`` it does not reject, its ends
    found by bisection between a rejected and a not rejected shift (0 is one of the two whenever it lies between
    the estimate and the end, which makes the agreement hold by construction). With many tied ``|d_i|`` the
    p-value jumps at ``theta = 0`` (tied sign patterns stop being tied once shifted), so an end can sit at 0.

  The sign-flip test needs no normal approximation, is exact at the small n of these studies and respects the
  pairing. One-sided alternatives give one-sided intervals (the other end: the limit of the difference).
  :func:`snn_adv.evaluation.compare` applies it to two accuracies of evaluation results.
- :func:`bound_test` (:func:`snn_adv.evaluation.compare_to_bound` on a result): one-sided test of ``H0: accuracy <= bound`` (exact binomial for binary ``m_i``, else a
  bootstrap p-value) with the one-sided interval that inverts it, for "large eps reaches about 0".
- :func:`holm`: Holm's step-down adjustment of the p-values of a family of comparisons (a verdict drawn from a
  family uses the adjusted ones).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, Tuple

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Comparison", "accuracy_interval", "bound_test", "holm", "mean_interval", "paired_difference"]

#: bootstrap / Monte Carlo resamples: the Monte Carlo error of a 95 % bound is about 0.002 at n = 100 images.
RESAMPLES = 10_000
ALTERNATIVES = ("two-sided", "greater", "less")
#: the bisection of an inverted interval stops when its bracket is this narrow (relative to the data's spread)
BISECTION_TOLERANCE = 1e-10
#: two statistics closer than this count as equal (a null draw as extreme as the observed one)
TIE = 1e-12


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired difference ``a - b`` (of accuracies: fractions) with its interval, p-value and method; ``n`` pairs.

    ``alternative``: ``'two-sided'`` (``a != b``), ``'greater'`` (``a > b``) or ``'less'`` (``a < b``);
    ``significant(level)`` says whether the p-value rejects ``a == b`` in favour of it at ``level``.
    """

    difference: float
    low: float
    high: float
    p_value: float
    method: str
    n: int
    alternative: str = "two-sided"

    def significant(self, level: float = 0.95) -> bool:
        return self.p_value < 1.0 - level

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (f"{100 * self.difference:+.1f} pts [{100 * self.low:+.1f}, {100 * self.high:+.1f}], "
                f"p = {self.p_value:.3g} ({self.method}, n = {self.n})")


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"argument 'level' = {level!r}: must lie in (0, 1), e.g. 0.95")
    return float(level)


def _check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"argument 'alternative' = {alternative!r}: must be one of {', '.join(ALTERNATIVES)}")
    return alternative


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def _bootstrap_means(values: np.ndarray, seed: int) -> np.ndarray:
    """Means of ``RESAMPLES`` bootstrap resamples (with replacement) of ``values`` [n]."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.empty(RESAMPLES)
    for start in range(0, RESAMPLES, 1000):  # chunks bound the memory at 1000 x n
        picks = rng.integers(0, n, size=(min(1000, RESAMPLES - start), n))
        means[start:start + len(picks)] = values[picks].mean(1)
    return means


def _percentile_interval(samples: np.ndarray, level: float) -> Tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _finite_values(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"argument {name!r}: must be a 1-D array (one value per image), got shape {values.shape}")
    if np.isinf(values).any():
        raise ValueError(f"argument {name!r}: holds an infinite value at position {int(np.isinf(values).argmax())}")
    return values


def mean_interval(values: np.ndarray, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Two-sided ``level`` percentile bootstrap interval of ``mean(values)`` (one value per image; resampling images,
    seeded by ``seed``). NaN values (undefined for that image) are dropped first.

    :raises ValueError: when no value is left, or ``values`` is not 1-D or holds an infinite value.
    """
    level = _check_level(level)
    values = _finite_values("values", values)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        raise ValueError("argument 'values': no value that is not NaN; an interval needs at least one")
    return _percentile_interval(_bootstrap_means(values, seed), level)


def accuracy_interval(per_image: np.ndarray, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Two-sided ``level`` interval of ``mean(per_image)`` (per-image accuracies averaged over seeds, in [0, 1]).

    Clopper-Pearson when every value is 0 or 1, else :func:`mean_interval` (the percentile bootstrap over images).
    """
    level = _check_level(level)
    per_image = np.asarray(per_image, dtype=float)
    if per_image.ndim != 1 or len(per_image) == 0:
        raise ValueError(f"argument 'per_image': must be a non-empty 1-D array, got shape {per_image.shape}")
    if _is_binary(per_image):
        interval = _scipy_stats.binomtest(int(per_image.sum()), len(per_image)).proportion_ci(level, "exact")
        return float(interval.low), float(interval.high)
    return mean_interval(per_image, level, seed)


def _mcnemar(differences: np.ndarray, level: float, alternative: str) -> Tuple[float, float, float]:
    """``(p, low, high)``: the exact McNemar test of ``differences`` in {-1, 0, 1} and the interval of the mean
    difference that inverts it (module docstring): ``q (2 pi - 1)`` over the Clopper-Pearson intervals of ``pi``
    (at ``level``; one-sided for a one-sided test) and of the discordant rate ``q`` (at ``1 - (1 - level) / 5``)."""
    wins, discordant, n = int((differences > 0).sum()), int((differences != 0).sum()), len(differences)
    beta = _scipy_stats.beta
    p_value = 1.0 if discordant == 0 else \
        float(_scipy_stats.binomtest(wins, discordant, 0.5, alternative=alternative).pvalue)
    tail = (1.0 - level) / (2 if alternative == "two-sided" else 1)
    pi_low = float(beta.ppf(tail, wins, discordant - wins + 1)) if wins > 0 and alternative != "less" else 0.0
    pi_high = float(beta.ppf(1 - tail, wins + 1, discordant - wins)) \
        if wins < discordant and alternative != "greater" else 1.0
    nuisance = (1.0 - level) / 10  # each tail of the interval of q
    q_low = float(beta.ppf(nuisance, discordant, n - discordant + 1)) if discordant > 0 else 0.0
    q_high = float(beta.ppf(1 - nuisance, discordant + 1, n - discordant)) if discordant < n else 1.0
    low = min(q * (2 * pi_low - 1) for q in (q_low, q_high))
    high = max(q * (2 * pi_high - 1) for q in (q_low, q_high))
    return p_value, low, high


class _SignFlip:
    """The Monte Carlo sign-flip test of ``H0(theta): d_i - theta symmetric about 0`` for every shift ``theta``,
    all with the same ``RESAMPLES`` draws of signs (seeded by ``seed``).

    Statistic: ``sum_i (d_i - theta) / k`` against its sign-flip null ``sum_i s_i |d_i - theta| / k``, with ``k``
    the number of nonzero ``d_i`` (a constant scale; with the nonzero ``d_i`` first, their signs drawn first, the
    test at ``theta = 0`` is the earlier test on the nonzero differences alone, draw for draw). The p-value
    ``(count + 1) / (RESAMPLES + 1)`` is a valid Monte Carlo p-value, never 0.
    """

    def __init__(self, differences: np.ndarray, alternative: str, seed: int):
        nonzero = differences != 0
        self.values = np.concatenate([differences[nonzero], differences[~nonzero]])
        self.scale = max(int(nonzero.sum()), 1)
        self.alternative = alternative
        rng = np.random.default_rng(seed)
        signs = np.array([-1.0, 1.0])
        self.signs = np.hstack([rng.choice(signs, size=(RESAMPLES, int(nonzero.sum()))),
                                rng.choice(signs, size=(RESAMPLES, int((~nonzero).sum())))])

    def p_value(self, theta: float = 0.0) -> float:
        shifted = self.values - theta
        observed = shifted.sum() / self.scale
        null = self.signs @ np.abs(shifted) / self.scale
        if self.alternative == "greater":
            extreme = null >= observed - TIE
        elif self.alternative == "less":
            extreme = null <= observed + TIE
        else:
            extreme = np.abs(null) >= abs(observed) - TIE
        return float((extreme.sum() + 1) / (RESAMPLES + 1))


def _inverted_end(accepted: Callable[[float], bool], estimate: float, far: float, limit: float) -> float:
    """One end of ``{theta: accepted(theta)}`` on the side of ``far`` from ``estimate`` (accepted): ``limit`` when
    ``far`` is accepted too, else the accepted end of a bisection bracket (accepted, rejected). 0, when it lies
    between ``estimate`` and ``far``, is tried first, so the end is beyond 0 exactly when 0 is rejected."""
    if accepted(far):
        return limit
    inside, outside = estimate, far
    if min(estimate, far) < 0.0 < max(estimate, far):
        if accepted(0.0):
            inside = 0.0
        else:
            outside = 0.0
    tolerance = BISECTION_TOLERANCE * max(1.0, abs(far - estimate))
    while abs(outside - inside) > tolerance:
        middle = (inside + outside) / 2
        if accepted(middle):
            inside = middle
        else:
            outside = middle
    return inside


def _inverted_interval(test: "_SignFlip", differences: np.ndarray, p_at_zero: float, level: float,
                       alternative: str, limits: Tuple[float, float]) -> Tuple[float, float]:
    """The shifts the sign-flip ``test`` of ``differences`` does not reject at ``level``, with ``p_at_zero`` its
    p-value at ``theta = 0`` (the reported one, computed once)."""
    accepted = lambda theta: (p_at_zero if theta == 0 else test.p_value(theta)) >= 1.0 - level  # noqa: E731
    estimate = float(differences.mean())
    # beyond every d_i all shifted differences share one sign: only the all-equal sign draws are as extreme
    spread = float(differences.max() - differences.min()) + 1.0
    low = limits[0] if alternative == "less" else \
        _inverted_end(accepted, estimate, float(differences.min()) - spread, limits[0])
    high = limits[1] if alternative == "greater" else \
        _inverted_end(accepted, estimate, float(differences.max()) + spread, limits[1])
    return low, high


def paired_difference(x: np.ndarray, y: np.ndarray, level: float = 0.95, alternative: str = "two-sided",
                      seed: int = 0, limits: Tuple[float, float] = (-math.inf, math.inf)) -> Comparison:
    """Paired test of ``mean_i (x_i - y_i)`` on the same images (``x[i]`` and ``y[i]`` belong to image ``i``).

    p-value: the sign-flip test of ``H0: x_i - y_i is symmetric about 0`` against ``alternative`` (``'greater'``:
    ``x > y``), exact McNemar when every difference is in {-1, 0, 1}; interval: the differences the same test does
    not reject (see the module docstring), two-sided for ``'two-sided'``, else one-sided, its other end ``limits``
    (the range the mean difference can take, e.g. ``(-1, 1)`` for accuracies; for binary outcomes the bound of the
    discordant rate). The interval excludes 0 exactly when ``p < 1 - level``. Pairs in which ``x_i`` or ``y_i`` is
    NaN (a value undefined for that image) are dropped;
    ``n`` of the result counts the pairs used. ``seed`` seeds the Monte Carlo test.

    :raises ValueError: when ``x`` and ``y`` differ in shape, no pair is left, or a value is infinite.
    """
    level, alternative = _check_level(level), _check_alternative(alternative)
    x, y = _finite_values("x", x), _finite_values("y", y)
    if x.shape != y.shape:
        raise ValueError(f"arguments 'x' and 'y': a paired test needs one value of each per image, got shapes "
                         f"{x.shape} and {y.shape}")
    differences = x - y
    differences = differences[~np.isnan(differences)]
    if len(differences) == 0:
        raise ValueError("arguments 'x' and 'y': no pair without NaN; a paired test needs at least one")
    if _is_binary(np.abs(differences)):
        (p_value, low, high), method = _mcnemar(differences, level, alternative), "exact McNemar"
    else:
        test = _SignFlip(differences, alternative, seed)
        p_value, method = test.p_value(), "sign-flip test (Monte Carlo)"
        low, high = _inverted_interval(test, differences, p_value, level, alternative, limits)
    return Comparison(float(differences.mean()), low, high, p_value, method, len(differences), alternative)


def bound_test(per_image: np.ndarray, bound: float, level: float = 0.95, seed: int = 0) -> Comparison:
    """One-sided test of ``H0: accuracy <= bound`` against ``accuracy > bound`` for per-image accuracies ``per_image``
    (means over seeds); ``difference = accuracy - bound``,
    with the one-sided interval ``[low, 1 - bound]`` that inverts the test (``low > 0`` exactly when ``p < 1 - level``).

    Binary per-image outcomes: the exact binomial test, and ``low`` from the one-sided Clopper-Pearson bound
    (``P(K >= k | p_low) = 1 - level``). Else the bootstrap test: ``p = (#{bootstrap means >= 2 mean - bound} + 1) /
    (RESAMPLES + 1)`` (the means shifted to the null), not rejected exactly for the bounds
    ``b >= 2 mean - M_(j)`` with ``M_(j)`` the ``j``-th largest bootstrap mean, ``j = ceil((1 - level)(RESAMPLES + 1))
    - 1``: that is ``low + bound``.
    """
    level = _check_level(level)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0.0 <= bound < 1.0:
        raise ValueError(f"argument 'bound' = {bound!r}: must lie in [0, 1)")
    per_image = np.asarray(per_image, dtype=float)
    mean, n = float(per_image.mean()), len(per_image)
    if _is_binary(per_image):
        k = int(per_image.sum())
        p_value = _scipy_stats.binomtest(k, n, bound, alternative="greater").pvalue
        low = float(_scipy_stats.beta.ppf(1 - level, k, n - k + 1)) if k > 0 else 0.0
        method = "exact binomial"
    else:
        means = _bootstrap_means(per_image, seed)
        p_value = (np.sum(means - mean + bound >= mean) + 1) / (RESAMPLES + 1)
        j = math.ceil((1 - level) * (RESAMPLES + 1)) - 1  # the p-value needs j bootstrap means at or above 2 mean - b
        low = 2 * mean - float(np.sort(means)[::-1][j - 1]) if j > 0 else -math.inf
        method = "bootstrap"
    return Comparison(mean - bound, low - bound, 1.0 - bound, float(p_value), method, n, "greater")


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family of ``m`` tests, in the order given.

    With ``p_(1) <= ... <= p_(m)`` sorted, ``adjusted_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``: rejecting
    where ``adjusted < alpha`` controls the family-wise error rate at ``alpha`` under any dependence between the
    tests. Ties keep their order (both get the same value).
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"argument 'p_values': must be a 1-D sequence of numbers in [0, 1], got {p_values!r}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order])) if m else p
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted
