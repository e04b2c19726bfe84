"""snn_adv.stats: intervals and paired tests against closed forms, exhaustive enumeration and simulated coverage."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import optimize as scipy_optimize, stats as scipy_stats

from snn_adv.evaluation import EvaluationResult
from snn_adv.evaluation import compare, compare_to_bound
from snn_adv.stats import RESAMPLES, accuracy_interval, holm, mean_interval, paired_difference


def result(adversarial, clean=None, index=None, label=None):
    """An EvaluationResult from [N, S] 0/1 outcomes (clean defaults to all correct)."""
    adversarial = np.asarray(adversarial, dtype=bool)
    if adversarial.ndim == 1:
        adversarial = adversarial[:, None]
    n, s = adversarial.shape
    clean = np.ones_like(adversarial) if clean is None else np.asarray(clean, dtype=bool).reshape(n, s)
    index = np.arange(n) if index is None else index
    label = np.zeros(n, dtype=int) if label is None else label
    return EvaluationResult(index, label, clean, adversarial, scoring_seeds=range(s))


def test_one_seed_interval_is_clopper_pearson():
    outcomes = np.array([1] * 7 + [0] * 13)
    low, high = result(outcomes).confidence_interval("adversarial", 0.95)
    # Clopper-Pearson from the beta quantiles (k = 7 of n = 20)
    assert low == pytest.approx(scipy_stats.beta.ppf(0.025, 7, 14), abs=1e-9)
    assert high == pytest.approx(scipy_stats.beta.ppf(0.975, 8, 13), abs=1e-9)
    # at accuracy 0 the interval is not degenerate: [0, 1 - 0.025^(1/n)]
    low, high = result(np.zeros(20)).confidence_interval("adversarial")
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 20), abs=1e-9)


def test_several_seed_interval_covers_the_mean_at_its_level():
    # images with their own accuracy p_i ~ Beta(2, 2), 3 Bernoulli seeds each: the bootstrap interval of the mean
    # over images of the per-image mean must cover E[p] = 0.5 about 95 % of the time
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for _ in range(trials):
        p = rng.beta(2, 2, size=60)
        outcomes = rng.random((60, 3)) < p[:, None]
        low, high = accuracy_interval(outcomes.mean(1))
        covered += low <= 0.5 <= high
    assert 0.89 <= covered / trials <= 0.99


def test_interval_is_wider_when_images_disagree_than_seeds():
    # the same 30 % accuracy: spread over images (each image always right or wrong) vs within images (every image
    # right on 30 % of seeds) -- only the first is uncertain about the population of images
    over_images = result(np.repeat(np.array([1] * 3 + [0] * 7)[:, None], 10, 1).repeat(4, 0))
    within = result(np.tile(np.array([1] * 3 + [0] * 7), (40, 1)))
    a, b = over_images.confidence_interval(), within.confidence_interval()
    assert over_images.accuracy() == pytest.approx(within.accuracy())
    assert (a[1] - a[0]) > 3 * (b[1] - b[0])


def test_mcnemar_p_value_matches_the_binomial_sum():
    a = np.array([1] * 10 + [1] * 9 + [0] * 2 + [0] * 9)  # 9 images correct only under a, 2 only under b
    b = np.array([1] * 10 + [0] * 9 + [1] * 2 + [0] * 9)
    comparison = compare(result(a), result(b))
    n, k = 11, 2
    two_sided = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    assert comparison.method == "exact McNemar" and comparison.p_value == pytest.approx(two_sided)
    assert comparison.difference == pytest.approx(7 / 30)
    assert comparison.low < comparison.difference < comparison.high
    greater = compare(result(a), result(b), alternative="greater")
    assert greater.p_value == pytest.approx(sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    assert compare(result(a), result(b), alternative="less").p_value > 0.9


def test_sign_flip_test_matches_exhaustive_enumeration():
    # per-image means over 4 seeds; enumerate all 2^n sign flips of the nonzero differences
    rng = np.random.default_rng(3)
    a = rng.random((12, 4)) < 0.7
    b = rng.random((12, 4)) < 0.4
    d = a.mean(1) - b.mean(1)
    nonzero = d[d != 0]
    null = np.array([np.mean(np.array(signs) * np.abs(nonzero))
                     for signs in itertools.product([-1, 1], repeat=len(nonzero))])
    exact = np.mean(null >= nonzero.mean() - 1e-12)
    comparison = compare(result(a), result(b), alternative="greater")
    assert comparison.method.startswith("sign-flip")
    assert comparison.p_value == pytest.approx(exact, abs=0.01)


def test_paired_test_refuses_different_images_and_bad_arguments():
    a = result(np.ones(10))
    with pytest.raises(ValueError, match="different images"):
        compare(a, result(np.ones(10), index=np.arange(1, 11)))
    with pytest.raises(ValueError, match="labels"):
        compare(a, result(np.ones(10), label=np.ones(10, dtype=int)))
    with pytest.raises(ValueError, match="level"):
        compare(a, a, level=95)
    with pytest.raises(ValueError, match="alternative"):
        compare(a, a, alternative="bigger")
    with pytest.raises(ValueError, match="kind"):
        compare(a, a, kind_a="robustness")


def test_bound_test_is_the_exact_binomial_tail():
    r = result(np.array([1] * 4 + [0] * 36))  # 10 % at n = 40
    comparison = compare_to_bound(r, "adversarial", 0.05)
    tail = sum(math.comb(40, i) * 0.05 ** i * 0.95 ** (40 - i) for i in range(4, 41))
    assert comparison.p_value == pytest.approx(tail) and comparison.difference == pytest.approx(0.05)
    assert not comparison.significant(0.95)  # 4 of 40 is not evidence against "at most 5 %"
    assert compare_to_bound(result(np.array([1] * 10 + [0] * 30)), "adversarial", 0.05).significant(0.95)


def hand_bootstrap_interval(values, seed=0, level=0.95):
    """The percentile bootstrap of a mean written as a plain loop: one resample of n images per draw."""
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), size=len(values))].mean() for _ in range(RESAMPLES)]
    return tuple(np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))


def test_mean_interval_is_the_percentile_bootstrap_and_drops_nan():
    values = np.random.default_rng(5).exponential(size=25)
    low, high = mean_interval(values, seed=7)
    assert (low, high) == pytest.approx(hand_bootstrap_interval(values, seed=7), abs=1e-12)
    assert low < values.mean() < high
    assert mean_interval(values, 0.8, seed=7) == pytest.approx(hand_bootstrap_interval(values, 7, 0.8), abs=1e-12)
    with_nan = np.insert(values, [0, 10, 25], np.nan)
    assert mean_interval(with_nan, seed=7) == (low, high)  # NaN (undefined for an image) is dropped, not resampled
    # non-binary accuracies go to the same bootstrap
    accuracies = np.array([0.0, 0.5, 1.0, 1.0, 0.25, 0.75])
    assert accuracy_interval(accuracies) == mean_interval(accuracies)
    with pytest.raises(ValueError, match="no value"):
        mean_interval(np.array([np.nan, np.nan]))
    with pytest.raises(ValueError, match="'values'.*1-D"):
        mean_interval(np.ones((2, 3)))


def test_paired_difference_against_enumeration_and_bootstrap_and_drops_nan_pairs():
    rng = np.random.default_rng(11)
    x, y = rng.normal(0.6, 0.3, size=10), rng.normal(0.3, 0.3, size=10)
    d = x - y
    # exact sign-flip distribution: all 2^10 sign patterns of |d_i| (no d_i is 0 here)
    null = np.array([np.mean(np.array(signs) * np.abs(d)) for signs in itertools.product([-1, 1], repeat=len(d))])
    for alternative, exact in (("greater", np.mean(null >= d.mean() - 1e-12)),
                               ("less", np.mean(null <= d.mean() + 1e-12)),
                               ("two-sided", np.mean(np.abs(null) >= abs(d.mean()) - 1e-12))):
        comparison = paired_difference(x, y, alternative=alternative, seed=2)
        assert comparison.p_value == pytest.approx(exact, abs=0.01), alternative
        assert comparison.alternative == alternative and comparison.method.startswith("sign-flip")
    comparison = paired_difference(x, y, seed=2)
    assert comparison.difference == pytest.approx(d.mean()) and comparison.n == 10
    # the interval is the set of shifts theta the exact test (all 2^10 sign patterns of |d - theta|) does not
    # reject: its Monte Carlo ends lie between the exact ends at levels 94 % and 96 % (Monte Carlo error of p)
    patterns = np.array(list(itertools.product([-1, 1], repeat=len(d))))
    thetas = np.linspace(d.min() - 0.1, d.max() + 0.1, 4001)
    exact_p = np.array([np.mean(np.abs(patterns @ np.abs(d - t)) >= abs((d - t).sum()) - 1e-12) for t in thetas])
    for end, pick in ((comparison.low, min), (comparison.high, max)):
        wide, narrow = (pick(thetas[exact_p >= alpha]) for alpha in (0.04, 0.06))
        assert min(wide, narrow) - 1e-3 <= end <= max(wide, narrow) + 1e-3
    # a NaN on either side drops the pair: the same test as on the remaining pairs, n counts them
    x_nan, y_nan = x.copy(), y.copy()
    x_nan[2], y_nan[7] = np.nan, np.nan
    keep = np.ones(10, dtype=bool)
    keep[[2, 7]] = False
    assert paired_difference(x_nan, y_nan, seed=2) == paired_difference(x[keep], y[keep], seed=2)
    assert paired_difference(x_nan, y_nan).n == 8
    # binary per-image outcomes: exact McNemar, as compare() on evaluation results
    a, b = np.array([1, 1, 1, 0, 1, 0, 1, 1]), np.array([0, 0, 1, 0, 1, 1, 0, 0])
    assert paired_difference(a, b) == compare(result(a), result(b))
    assert paired_difference(a, b).method == "exact McNemar"
    with pytest.raises(ValueError, match="shapes"):
        paired_difference(x, y[:5])
    with pytest.raises(ValueError, match="no pair"):
        paired_difference(np.array([np.nan, 1.0]), np.array([0.0, np.nan]))


def excludes_zero(comparison):
    return comparison.low > 0 or comparison.high < 0


LEVELS = st.sampled_from([0.8, 0.9, 0.95, 0.99])
ALTERNATIVE = st.sampled_from(["two-sided", "greater", "less"])


@settings(max_examples=60, deadline=None)
@given(outcomes=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=80), level=LEVELS,
       alternative=ALTERNATIVE)
def test_mcnemar_interval_excludes_zero_exactly_when_the_test_rejects(outcomes, level, alternative):
    a, b = np.array(outcomes, dtype=float).T
    comparison = paired_difference(a, b, level, alternative)
    assert comparison.method == "exact McNemar"
    assert excludes_zero(comparison) == (comparison.p_value < 1 - level)
    assert comparison.low <= comparison.difference <= comparison.high


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=2, max_size=40), level=LEVELS,
       alternative=ALTERNATIVE, seed=st.integers(0, 2 ** 16))
def test_sign_flip_interval_excludes_zero_exactly_when_the_test_rejects(counts, level, alternative, seed):
    # per-image accuracies over 3 seeds (k / 3): few discordant images, where a percentile bootstrap is too narrow
    a, b = np.array(counts, dtype=float).T / 3
    comparison = compare(result(np.arange(3)[None] < a[:, None] * 3), result(np.arange(3)[None] < b[:, None] * 3),
                         level=level, alternative=alternative, seed=seed)
    assert excludes_zero(comparison) == (comparison.p_value < 1 - level)
    assert comparison.low <= comparison.difference <= comparison.high
    assert -1 <= comparison.low and comparison.high <= 1  # a difference of accuracies; one-sided ends at -1 or 1


def test_few_discordant_images_the_inverted_interval_agrees_where_the_percentile_bootstrap_did_not():
    # the quickstart case: 300 images, 5 discordant, all against a: p = 2 / 2^5 = 0.0625, not rejected
    a = np.array([0] * 5 + [1] * 295, dtype=float)
    b = np.ones(300)
    comparison = paired_difference(a, b)
    assert comparison.p_value == pytest.approx(0.0625) and not comparison.significant(0.95)
    assert not excludes_zero(comparison) and comparison.low < -5 / 300  # the difference may be larger than observed
    low, high = hand_bootstrap_interval(a - b)  # the percentile bootstrap that was here excluded 0
    assert high < 0


def exact_inverted_interval(d, level=0.95, grid=4001):
    """The shifts theta the exact sign-flip test (all 2^n sign patterns of |d - theta|, two-sided) does not reject,
    at the levels level -+ 0.01 (the Monte Carlo p-value is within about 0.002 of the exact one), on a grid."""
    patterns = np.array(list(itertools.product([-1, 1], repeat=len(d))))
    thetas = np.linspace(d.min() - 0.3, d.max() + 0.3, grid)
    exact = np.array([np.mean(np.abs(patterns @ np.abs(d - t)) >= abs((d - t).sum()) - 1e-12) for t in thetas])
    return [(thetas[exact >= alpha].min(), thetas[exact >= alpha].max()) for alpha in (1 - level - 0.01, 1 - level + 0.01)]


def test_interval_ends_are_where_the_exact_shifted_sign_flip_test_starts_rejecting():
    x, y = np.array([3, 3, 2, 3, 1, 3, 2, 0, 3, 2, 3, 1]) / 3, np.array([1, 0, 2, 1, 0, 3, 0, 1, 2, 0, 1, 0]) / 3
    comparison = paired_difference(x, y)
    assert comparison.method.startswith("sign-flip")
    (wide_low, wide_high), (narrow_low, narrow_high) = exact_inverted_interval(x - y)
    step = ((x - y).max() - (x - y).min() + 0.6) / 4000 + 1e-9  # the grid's spacing
    assert wide_low - step <= comparison.low <= narrow_low + step
    assert narrow_high - step <= comparison.high <= wide_high + step


def test_mcnemar_interval_ends_solve_the_binomial_tail_equations():
    # 9 images only right under a, 2 only under b, 19 concordant (n = 30): the ends are q (2 pi - 1) at the
    # Clopper-Pearson ends of pi (P(K >= 9 | 11, pi_low) = 0.025, P(K <= 9 | 11, pi_high) = 0.025) and of the
    # discordant rate q = 11/30 at 99 % (P(M >= 11 | 30, q_low) = 0.005, P(M <= 11 | 30, q_high) = 0.005), the
    # q that makes each end widest: p = 0.065 is not significant, so pi_low < 1/2 and the low end takes q_high;
    # one-sided (p = 0.033) pi_low > 1/2 and it takes q_low (binomial sums by hand)
    a = np.array([1] * 10 + [1] * 9 + [0] * 2 + [0] * 9, dtype=float)
    b = np.array([1] * 10 + [0] * 9 + [1] * 2 + [0] * 9, dtype=float)
    comparison = paired_difference(a, b)
    at_least = lambda k, n, p: sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))  # noqa: E731
    solve = lambda f, target: scipy_optimize.brentq(lambda p: f(p) - target, 1e-12, 1 - 1e-12)  # noqa: E731
    pi_low, pi_high = solve(lambda p: at_least(9, 11, p), 0.025), solve(lambda p: 1 - at_least(10, 11, p), 0.025)
    q_low, q_high = solve(lambda p: at_least(11, 30, p), 0.005), solve(lambda p: 1 - at_least(12, 30, p), 0.005)
    assert comparison.p_value == pytest.approx(2 * (1 - at_least(3, 11, 0.5)))  # twice the smaller tail
    assert pi_low < 0.5 < pi_high and comparison.low == pytest.approx(q_high * (2 * pi_low - 1), abs=1e-9)
    assert comparison.high == pytest.approx(q_high * (2 * pi_high - 1), abs=1e-9)
    greater = paired_difference(a, b, alternative="greater")  # one-sided: the whole 5 % in the lower tail
    assert greater.low == pytest.approx(q_low * (2 * solve(lambda p: at_least(9, 11, p), 0.05) - 1), abs=1e-9)
    assert greater.high == pytest.approx(q_high, abs=1e-9)  # pi <= 1
    # no discordant image: p = 1, and the difference within -+ the 99 % bound of the discordant rate
    same = paired_difference(a, a)
    assert same.p_value == 1.0 and same.difference == 0.0
    assert same.high == -same.low == pytest.approx(1 - 0.005 ** (1 / 30))


def test_bound_interval_inverts_the_bound_test():
    for outcomes in (np.array([1] * 4 + [0] * 36), np.array([1] * 10 + [0] * 30)):  # exact binomial
        comparison = compare_to_bound(result(outcomes), "adversarial", 0.05)
        assert (comparison.low > 0) == comparison.significant(0.95)
        k, n = int(outcomes.sum()), len(outcomes)
        p_low = comparison.low + 0.05  # the one-sided Clopper-Pearson bound: P(K >= k | p_low) = 0.05
        assert sum(math.comb(n, i) * p_low ** i * (1 - p_low) ** (n - i) for i in range(k, n + 1)) == \
            pytest.approx(0.05, abs=1e-9)
    rng = np.random.default_rng(4)
    for accuracy in (0.03, 0.08, 0.12):  # three seeds: the bootstrap test
        r = result(rng.random((60, 3)) < accuracy)
        for bound in (0.02, 0.05, 0.1):
            comparison = compare_to_bound(r, "adversarial", bound)
            assert (comparison.low > 0) == comparison.significant(0.95), (accuracy, bound)


def test_holm_against_a_hand_computed_family():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0]) and holm([0.2]) == pytest.approx([0.2])
    assert len(holm([])) == 0
    with pytest.raises(ValueError, match="p_values"):
        holm([0.1, 1.5])


def test_a_family_of_three_whose_smallest_p_is_003_is_inconclusive():
    from snn_adv.studies.common import family_verdicts

    rows = [{"a": "x", "b": "y", "difference": d, "p_value": p, "family": "three"}
            for d, p in ((2.0, 0.03), (1.0, 0.2), (-1.0, 0.5))]
    rows.append({"a": "x", "b": "y", "difference": 2.0, "p_value": 0.03, "family": "alone"})
    verdicts = family_verdicts(rows)
    assert [v["p_holm"] for v in verdicts] == pytest.approx([0.09, 0.4, 0.5, 0.03])
    assert [v["verdict"] for v in verdicts] == ["inconclusive"] * 3 + ["x higher"]
