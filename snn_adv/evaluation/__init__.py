"""Robustness evaluation: the one engine (:func:`evaluate`: craft once, score many targets and Poisson seeds, per
sample, with intervals), the stochastic-model protocol, and self-checks whose verdicts come from paired tests.

- :mod:`.engine`: :func:`evaluate`, :class:`EvaluationResult`, :func:`check_attack_protocol`;
- :mod:`.checks`: :class:`Check`, the ``check_*`` functions and the battery :func:`sanity_checks`;
- paired tests and intervals live in :mod:`snn_adv.stats`.
"""
from . import checks, engine
from .checks import *  # noqa: F401,F403 (re-exported: see checks.__all__)
from .engine import *  # noqa: F401,F403 (re-exported: see engine.__all__)

__all__ = sorted(engine.__all__ + checks.__all__)
