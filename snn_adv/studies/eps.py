"""Study ``eps``: whitebox accuracy against the perturbation size eps, for each model kind and attack (self-check:
accuracy falls with eps, by paired tests between neighbouring eps; paired comparisons against the first eps)."""
from __future__ import annotations

from ..attack_specs import ATTACK_LIST, at_eps, attack_label
from ..schema import ListOf, Section, Value
from ..zoo import LABELS
from .common import KIND_LIST, TEST_COUNT, StudyContext, sweep

__all__ = ["CONFIG", "run"]

#: the study's config section (``studies.eps``)
CONFIG = Section({**TEST_COUNT, "kinds": KIND_LIST, "eps_255": ListOf(Value("number", minimum=0, maximum=255), unique=True),
                  "attacks": ATTACK_LIST}, required=("kinds", "eps_255", "attacks"))


def run(ctx: StudyContext) -> str:
    section = ctx.section
    grid = [{"kind": kind, "attack": at_eps(attack, eps / 255), "mode": "whitebox"}
            for kind in section["kinds"] for attack in section["attacks"] for eps in section["eps_255"]]
    # verdict family: per model kind, every eps against the first (both attacks)
    axis = lambda s: ((s["kind"], attack_label(s["attack"])), f"eps {s['attack']['eps'] * 255:g}/255",  # noqa: E731
                      f"{LABELS[s['kind']]}: each eps - eps {section['eps_255'][0]:g}/255")
    return sweep(ctx, grid, "eps (x/255, L-infinity)", lambda s: round(s["attack"]["eps"] * 255, 6),
                 lambda s: f"{LABELS[s['kind']]}, {attack_label(s['attack'])}", "Accuracy vs perturbation size",
                 axes=[axis], x_is_eps=True)
