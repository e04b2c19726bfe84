r"""Intervals and paired tests for accuracies measured on the same images over several Poisson seeds.

An evaluation gives, per image ``i`` and scoring seed ``s``, an outcome ``c[i, s]`` in {0, 1}. The unit of
sampling is the image (the seeds only average out the model's own noise), so every method here works on the
per-image mean over seeds ``m_i = mean_s c[i, s]`` and resamples images:

- :func:`mean_interval`: the percentile bootstrap over images of ``mean_i m_i`` for any per-image values (seeded,
  so the same data always give the same interval).
- :func:`accuracy_interval`: exact Clopper-Pearson interval when every ``m_i`` is 0 or 1 (one seed, or seeds that
  agree on every image: the data are then n Bernoulli trials), else :func:`mean_interval`.
- :func:`paired_difference`: paired comparison of two per-image values on the same images, ``d_i = x_i - y_i``.
  The interval of ``mean_i d_i`` is the paired percentile bootstrap over images. The p-value is the sign-flip
  (randomisation) test of ``H0: d_i is symmetric about 0``: exact McNemar when every ``d_i`` is in {-1, 0, 1} (then
  flipping signs is the binomial test on the discordant images), Monte Carlo with a seeded generator otherwise.
  The sign-flip test needs no normal approximation, is exact at the small n of these studies and respects the
  pairing. :func:`compare` applies it to two accuracies of evaluation results.
- :func:`compare_to_bound`: one-sided test of ``H0: accuracy <= bound`` (exact binomial for binary ``m_i``, else a
  bootstrap p-value), for "large eps reaches about 0".
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Tuple

import numpy as np
from scipy import stats as _scipy_stats

if TYPE_CHECKING:  # pragma: no cover
    from .evaluation import EvaluationResult

__all__ = ["Comparison", "accuracy_interval", "compare", "compare_to_bound", "mean_interval", "paired_difference",
           "paired_outcomes"]

#: bootstrap / Monte Carlo resamples: the Monte Carlo error of a 95 % bound is about 0.002 at n = 100 images.
RESAMPLES = 10_000
ALTERNATIVES = ("two-sided", "greater", "less")


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


def paired_outcomes(a: "EvaluationResult", kind_a: str, b: "EvaluationResult", kind_b: str) -> Tuple[np.ndarray, np.ndarray]:
    """Per-image accuracies (mean over seeds) of ``a`` and ``b`` on the same images, in the same order.

    :raises ValueError: when the two results were not computed on the same image indices and labels.
    """
    if a.index.shape != b.index.shape or not np.array_equal(a.index, b.index):
        raise ValueError("arguments 'a' and 'b': results on different images (their 'index' arrays differ); a paired "
                         "test needs the same images in both")
    if not np.array_equal(a.label, b.label):
        raise ValueError("arguments 'a' and 'b': the same image indices carry different labels (different data sets)")
    return a.per_image(kind_a), b.per_image(kind_b)


def _sign_flip_p_value(differences: np.ndarray, alternative: str, seed: int) -> Tuple[float, str]:
    """p-value of ``H0: the d_i are symmetric about 0`` against ``alternative`` for the mean of ``differences``."""
    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return 1.0, "exact McNemar" if _is_binary(np.abs(differences)) else "sign-flip test"
    if _is_binary(np.abs(nonzero)):  # d_i in {-1, +1}: the sign-flip distribution is Binomial(n_discordant, 1/2)
        wins = int((nonzero > 0).sum())
        return float(_scipy_stats.binomtest(wins, len(nonzero), 0.5, alternative=alternative).pvalue), "exact McNemar"
    rng = np.random.default_rng(seed)
    observed = nonzero.mean()
    signs = rng.choice(np.array([-1.0, 1.0]), size=(RESAMPLES, len(nonzero)))
    null = (signs * np.abs(nonzero)).mean(1)
    tol = 1e-12
    if alternative == "greater":
        extreme = null >= observed - tol
    elif alternative == "less":
        extreme = null <= observed + tol
    else:
        extreme = np.abs(null) >= abs(observed) - tol
    # (count + 1) / (resamples + 1): a valid Monte Carlo p-value, never 0
    return float((extreme.sum() + 1) / (RESAMPLES + 1)), "sign-flip test (Monte Carlo)"


def paired_difference(x: np.ndarray, y: np.ndarray, level: float = 0.95, alternative: str = "two-sided",
                      seed: int = 0) -> Comparison:
    """Paired test of ``mean_i (x_i - y_i)`` on the same images (``x[i]`` and ``y[i]`` belong to image ``i``).

    Interval: the paired percentile bootstrap over images; p-value: the sign-flip test of ``H0: x_i - y_i is
    symmetric about 0`` against ``alternative`` (``'greater'``: ``x > y``), exact McNemar when every difference is
    in {-1, 0, 1} (see the module docstring). Pairs in which ``x_i`` or ``y_i`` is NaN (a value undefined for that
    image) are dropped; ``n`` of the result counts the pairs used. ``seed`` seeds the bootstrap and the Monte Carlo
    test.

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
    low, high = _percentile_interval(_bootstrap_means(differences, seed), level)
    p_value, method = _sign_flip_p_value(differences, alternative, seed)
    return Comparison(float(differences.mean()), low, high, p_value, method, len(differences), alternative)


def compare(
    a: "EvaluationResult",
    b: "EvaluationResult",
    kind_a: str = "adversarial",
    kind_b: str = "adversarial",
    level: float = 0.95,
    alternative: str = "two-sided",
    seed: int = 0,
) -> Comparison:
    """Paired test of ``accuracy(a, kind_a) - accuracy(b, kind_b)`` on the same images: :func:`paired_difference`
    of their per-image accuracies (:func:`paired_outcomes`).

    E.g. whitebox vs blackbox: ``compare(whitebox, blackbox)``; clean vs adversarial of one result:
    ``compare(r, r, 'clean', 'adversarial')``. ``seed`` seeds the bootstrap and the Monte Carlo test.
    """
    level, alternative = _check_level(level), _check_alternative(alternative)
    return paired_difference(*paired_outcomes(a, kind_a, b, kind_b), level, alternative, seed)


def compare_to_bound(result: "EvaluationResult", kind: str, bound: float, level: float = 0.95, seed: int = 0) -> Comparison:
    """One-sided test of ``H0: accuracy <= bound`` against ``accuracy > bound``; ``difference = accuracy - bound``.

    Exact binomial test when the per-image outcomes are binary; else the bootstrap p-value (fraction of bootstrap
    means at or below ``bound``, shifted to the null).
    """
    level = _check_level(level)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0.0 <= bound < 1.0:
        raise ValueError(f"argument 'bound' = {bound!r}: must lie in [0, 1)")
    per_image = result.per_image(kind)
    mean = float(per_image.mean())
    low, high = accuracy_interval(per_image, level, seed)
    if _is_binary(per_image):
        p_value = _scipy_stats.binomtest(int(per_image.sum()), len(per_image), bound, alternative="greater").pvalue
        method = "exact binomial"
    else:
        means = _bootstrap_means(per_image, seed)
        p_value = (np.sum(means - mean + bound >= mean) + 1) / (RESAMPLES + 1)
        method = "bootstrap"
    return Comparison(mean - bound, low - bound, high - bound, float(p_value), method, len(per_image), "greater")
