"""The robustness protocol: one call, one number a reviewer can trust (the AutoAttack of SNNs).

:func:`robust_accuracy` runs a fixed, versioned battery (:data:`VERSIONS`; default :data:`DEFAULT_VERSION`,
``snn-v2``) as a cascade on the (image, Poisson draw) pairs still robust, certifies convergence with a stronger re-run
of its strongest stage, runs self-checks that can fail, and returns a :class:`ProtocolReport` with one headline line.

- :mod:`.battery`: the stages of each version (where to add an attack to a new version);
- :mod:`.run`: the cascade on the evaluation engine, resumable per stage;
- :mod:`.report`: the headline, table, plot and per-image outcomes.
"""
from .battery import CERTIFICATE, DEFAULT_VERSION, LARGE_EPS, VANISHING, VERSIONS, Stage, battery_digest, stages_of
from .report import ProtocolReport, StageRecord
from .run import gradient_probe, robust_accuracy, vanishing_gradient_check

__all__ = ["CERTIFICATE", "DEFAULT_VERSION", "LARGE_EPS", "ProtocolReport", "VANISHING", "Stage", "StageRecord",
           "VERSIONS", "battery_digest", "gradient_probe", "robust_accuracy", "stages_of", "vanishing_gradient_check"]
