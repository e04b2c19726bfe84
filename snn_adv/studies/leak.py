"""Study ``leak``: adversarial accuracy against the LIF leak factor at fixed T (1.0 = IF neuron; the leak is
changed on one trained network)."""
from __future__ import annotations

from ..attack_specs import attack_label
from ..zoo import LABELS
from .common import StudyContext, sweep

__all__ = ["run"]


def run(ctx: StudyContext) -> str:
    section = ctx.section
    fixed_t = {"timesteps": section["timesteps"]} if "timesteps" in section else {}
    grid = [{"kind": kind, "knobs": {"leak": leak, **fixed_t}, "attack": attack, "mode": mode}
            for kind in section["kinds"] for leak in section["leaks"] for attack in section["attacks"]
            for mode in attack.get("study_modes", section["modes"])]
    return sweep(ctx, grid, "leak factor (1 = IF neuron)", lambda s: s["knobs"]["leak"],
                 lambda s: f"{LABELS[s['kind']]}, {attack_label(s['attack'])}", "Adversarial accuracy vs leak")
