"""Robustness evaluation: the one engine (:func:`evaluate`: craft once, score many targets and Poisson seeds, per
sample, with intervals), the stochastic-model protocol, and self-checks whose verdicts come from paired tests.

- :mod:`.engine`: :func:`evaluate`, :func:`check_attack_protocol`;
- :mod:`.result`: :class:`EvaluationResult` and the paired tests between results (:func:`compare`,
  :func:`compare_to_bound`);
- :mod:`.checks`: :class:`Check`, the ``check_*`` functions and the battery :func:`sanity_checks`;
- the array-level tests and intervals live in :mod:`snn_adv.stats`.
"""
from . import checks, engine, result
from .checks import *  # noqa: F401,F403 (re-exported: see checks.__all__)
from .engine import *  # noqa: F401,F403 (re-exported: see engine.__all__)
from .result import *  # noqa: F401,F403 (re-exported: see result.__all__)

__all__ = sorted(engine.__all__ + checks.__all__ + result.__all__)
