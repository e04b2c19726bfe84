"""Study ``leak``: adversarial accuracy against the LIF leak factor at fixed T (1.0 = IF neuron).

Two methods, chosen by the section's ``retrain`` (default true):

- ``retrain: true`` (the paper's): a separate SNN-BP is trained at each leak (at the section's ``timesteps``, or
  the recipe's T) from the same converted network.
- ``retrain: false``: the leak is changed on the one SNN-BP trained at the recipe's leak.

Blackbox examples come from the section's ``blackbox_source`` (default: the separately trained ANN), the same for
every point. Paired comparisons: each leak against the first of the section.
"""
from __future__ import annotations

from ..attack_specs import ATTACK_LIST, MODE, attack_label
from ..schema import FLAG, LEAK, POSITIVE_INT, ListOf, Section
from ..zoo import LABELS
from .common import KIND, KIND_LIST, TEST_COUNT, StudyContext, sweep, trained_per_point

__all__ = ["CONFIG", "run"]

#: the study's config section (``studies.leak``)
CONFIG = Section({**TEST_COUNT, "kinds": KIND_LIST, "leaks": ListOf(LEAK, unique=True), "timesteps": POSITIVE_INT,
                  "modes": ListOf(MODE, unique=True), "attacks": ATTACK_LIST, "blackbox_source": KIND, "retrain": FLAG},
                 required=("kinds", "leaks", "modes", "attacks"))


def run(ctx: StudyContext) -> str:
    section = ctx.section
    fixed_t = {"timesteps": section["timesteps"]} if "timesteps" in section else {}
    grid = [{"kind": kind, "train": trained_per_point(section, kind, leak=leak, **fixed_t),
             "knobs": {"leak": leak, **fixed_t}, "attack": attack, "mode": mode}
            for kind in section["kinds"] for leak in section["leaks"] for attack in section["attacks"]
            for mode in attack.get("study_modes", section["modes"])]
    # verdict family: per model kind, every leak against the first (attacks and modes together)
    axis = lambda s: ((s["kind"], s["mode"], attack_label(s["attack"])), f"leak {s['knobs']['leak']:g}",  # noqa: E731
                      f"{LABELS[s['kind']]}: each leak - leak {section['leaks'][0]:g}")
    return sweep(ctx, grid, "leak factor (1 = IF neuron)", lambda s: s["knobs"]["leak"],
                 lambda s: f"{LABELS[s['kind']]}, {attack_label(s['attack'])}", "Adversarial accuracy vs leak",
                 axes=[axis])
