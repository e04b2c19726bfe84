"""Study ``strong``: the robustness table under adaptive attacks (PGD+EOT, rate and HART gradients, the per-sample
worst case over gradient modes and attacker surrogates, torchattacks' APGD / AutoAttack / Square); blackbox columns
only when the section sets ``"blackbox": true``."""
from __future__ import annotations

from .common import StudyContext
from .robustness import table_study

__all__ = ["run"]


def run(ctx: StudyContext) -> str:
    return table_study(ctx, blackbox=ctx.section.get("blackbox", False))
