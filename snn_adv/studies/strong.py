"""Study ``strong``: the robustness table under adaptive attacks (PGD+EOT, rate and HART gradients, the per-sample
worst case over gradient modes and attacker surrogates, torchattacks' APGD / AutoAttack / Square); blackbox columns
only when the section sets ``"blackbox": true``."""
from __future__ import annotations

from ..attack_specs import ATTACK_LIST
from ..schema import FLAG, Section
from .common import KIND_LIST, TEST_COUNT, TEST_COUNTS, StudyContext
from .robustness import table_study

__all__ = ["CONFIG", "run"]

#: the study's config section (``studies.strong``)
CONFIG = Section({**TEST_COUNT, "attacks": ATTACK_LIST, "kinds": KIND_LIST, "sources": KIND_LIST, "blackbox": FLAG,
                  "test_counts": TEST_COUNTS}, required=("attacks",))


def run(ctx: StudyContext) -> str:
    return table_study(ctx, blackbox=ctx.section.get("blackbox", False))
