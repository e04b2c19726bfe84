"""Study ``timesteps``: adversarial accuracy against T, with input pre-quantisation levels as a second axis
(SNN-BP, SNN-conv; T and the levels are changed on one trained network)."""
from __future__ import annotations

from typing import Optional

from ..attack_specs import attack_label
from ..zoo import LABELS
from .common import StudyContext, sweep

__all__ = ["run"]


def _levels(levels: Optional[int]) -> str:
    return "no quantisation" if levels is None else f"{levels} levels"


def run(ctx: StudyContext) -> str:
    section = ctx.section
    grid = [{"kind": kind, "knobs": {"timesteps": t, "levels": q, "quantise": True}, "attack": attack, "mode": mode}
            for kind in section["kinds"] for t in section["timesteps"] for q in section["levels"]
            for attack in section["attacks"] for mode in attack.get("study_modes", section["modes"])]
    return sweep(ctx, grid, "timesteps T", lambda s: s["knobs"]["timesteps"],
                 lambda s: f"{LABELS[s['kind']]}, {_levels(s['knobs']['levels'])}, {attack_label(s['attack'])}",
                 "Adversarial accuracy vs timesteps and input quantisation", xscale="log", xticks=section["timesteps"])
