"""TRANSITIONAL: the old fixed-tolerance checks that ``studies.py`` still calls with accuracies (floats).

Delete this module when the studies run on :func:`snn_adv.evaluation.evaluate` and the paired-test checks of
:mod:`snn_adv.evaluation.checks` (helper EXPLAYER's port, issue 10 item 7). Not exported.
"""
from __future__ import annotations

from typing import Mapping

from .checks import Check


def check_monotone_in_eps(accuracy_by_eps: Mapping[float, float], tolerance: float = 0.03) -> Check:
    """Adversarial accuracy must not rise (beyond ``tolerance``) as eps grows."""
    points = sorted(accuracy_by_eps.items())
    rises = [(e0, a0, e1, a1) for (e0, a0), (e1, a1) in zip(points, points[1:]) if a1 > a0 + tolerance]
    detail = "; ".join(f"accuracy rises from {a0:.3f} at eps={e0:.4g} to {a1:.3f} at eps={e1:.4g}" for e0, a0, e1, a1 in rises)
    return Check("accuracy_non_increasing_in_eps", not rises, detail or "accuracy does not rise with eps",
                 {"accuracy_by_eps": {str(e): a for e, a in points}})


def check_whitebox_vs_blackbox(whitebox: float, blackbox: float, tolerance: float = 0.03) -> Check:
    """A whitebox attack must be at least as strong as a blackbox (transfer) attack."""
    passed = whitebox <= blackbox + tolerance
    detail = f"whitebox accuracy {whitebox:.3f}, blackbox {blackbox:.3f}" + ("" if passed else ": the transfer attack is stronger")
    return Check("whitebox_not_weaker_than_blackbox", passed, detail, {"whitebox": whitebox, "blackbox": blackbox})
