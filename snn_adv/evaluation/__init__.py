"""Robustness evaluation: the one engine (:func:`evaluate`: craft once, score many targets and Poisson seeds, per
sample, with intervals), the stochastic-model protocol, and self-checks whose verdicts come from paired tests.

- :mod:`.engine`: :func:`evaluate`, :class:`EvaluationResult`, :func:`check_attack_protocol`;
- :mod:`.checks`: :class:`Check`, the ``check_*`` functions and the battery :func:`sanity_checks`;
- paired tests and intervals live in :mod:`snn_adv.stats`.
"""
from .checks import (
    MINIMAL_NORM_ATTACKS,
    Check,
    GradientMaskingWarning,
    check_gradient_free,
    check_large_eps,
    check_minimal_norm,
    check_monotone_in_eps,
    check_more_effort,
    check_whitebox_vs_transfer,
    sanity_checks,
    seed_spread,
    warn_failures,
)
from .engine import KINDS, EvaluationResult, check_attack_protocol, describe_attack, describe_model, evaluate

__all__ = [
    "Check",
    "EvaluationResult",
    "GradientMaskingWarning",
    "KINDS",
    "MINIMAL_NORM_ATTACKS",
    "check_attack_protocol",
    "check_gradient_free",
    "check_large_eps",
    "check_minimal_norm",
    "check_monotone_in_eps",
    "check_more_effort",
    "check_whitebox_vs_transfer",
    "describe_attack",
    "describe_model",
    "evaluate",
    "sanity_checks",
    "seed_spread",
    "warn_failures",
]
