"""Study ``timesteps``: adversarial accuracy against T, with input pre-quantisation levels as a second axis.

Two methods, chosen by the section's ``retrain`` (default true):

- ``retrain: true`` (the paper's): a separate SNN-BP is trained at each T from the same converted network
  (hybrid initialisation, then BPTT at that T) and evaluated at its own T. SNN-conv, if listed, is the one
  converted network run at each T.
- ``retrain: false``: T is changed on the one SNN-BP trained at the recipe's T (how robust is one trained network
  when run longer or shorter).

The quantisation levels are an input knob of the evaluated network in both. Blackbox examples come from the
section's ``blackbox_source`` (default: the separately trained ANN), the same for every point.
"""
from __future__ import annotations

from typing import Optional

from ..attack_specs import ATTACK_LIST, MODE, attack_label
from ..schema import FLAG, POSITIVE_INT, ListOf, Section
from ..zoo import LABELS
from .common import KIND, KIND_LIST, LEVELS, TEST_COUNT, StudyContext, sweep, trained_per_point

__all__ = ["CONFIG", "run"]

#: the study's config section (``studies.timesteps``)
CONFIG = Section({**TEST_COUNT, "kinds": KIND_LIST, "timesteps": ListOf(POSITIVE_INT, unique=True),
                  "levels": ListOf(LEVELS, unique=True), "modes": ListOf(MODE, unique=True), "attacks": ATTACK_LIST,
                  "blackbox_source": KIND, "retrain": FLAG},
                 required=("kinds", "timesteps", "levels", "modes", "attacks"))


def _levels(levels: Optional[int]) -> str:
    return "no quantisation" if levels is None else f"{levels} levels"


def run(ctx: StudyContext) -> str:
    section = ctx.section
    grid = [{"kind": kind, "train": trained_per_point(section, kind, timesteps=t),
             "knobs": {"timesteps": t, "levels": q, "quantise": True}, "attack": attack, "mode": mode}
            for kind in section["kinds"] for t in section["timesteps"] for q in section["levels"]
            for attack in section["attacks"] for mode in attack.get("study_modes", section["modes"])]
    base = lambda s: (s["kind"], s["mode"], attack_label(s["attack"]))  # noqa: E731
    first = f"T={section['timesteps'][0]}"
    # each T against the first T (same levels); each quantisation against none (same T). Verdict families, one per
    # claim and model kind (attacks and modes together): every T against the first, at every quantisation ("fewer
    # timesteps, more robust"); every quantisation against none, at every T ("pre-quantisation, more robust")
    axes = [
        lambda s: ((*base(s), "levels", s["knobs"]["levels"]), f"T={s['knobs']['timesteps']}",
                   f"{LABELS[s['kind']]}: each T - {first}, every quantisation"),
        lambda s: ((*base(s), "T", s["knobs"]["timesteps"]), _levels(s["knobs"]["levels"]),
                   f"{LABELS[s['kind']]}: each quantisation - none, every T"),
    ]
    return sweep(ctx, grid, "timesteps T", lambda s: s["knobs"]["timesteps"],
                 lambda s: f"{LABELS[s['kind']]}, {_levels(s['knobs']['levels'])}, {attack_label(s['attack'])}",
                 "Adversarial accuracy vs timesteps and input quantisation", axes=axes, xscale="log",
                 xticks=section["timesteps"], x_point=lambda s: f"T={s['knobs']['timesteps']}")
