r"""The versioned batteries of the robustness protocol: which attacks, with which parameters, in which order.

A version pins every stage and its parameters; any change of a battery is a new version, so that figures under
one version stay comparable (``battery_digest`` is recorded in every report and tested against the version).
``snn-v1``'s digest is ``1e1a352f5fb15a69``; before the first release it was ``de678190d0304d16``, with the same
stages and certificate but a vanishing-gradient check that bounded the gradient's scale (it flagged honest SNN-BPs).

``snn-v1`` (Linf), each stage on the (image, scoring seed) pairs the earlier stages left robust:

==================  ======================================================================================
``apgd-ce``         APGD, cross-entropy, 50 iterations x EOT 2 (AutoAttack's ``rand`` uses 100 x 20, ~20x
                    the cost; 100 gradients per image keep the first stage, which every image pays, at the
                    cost of one 100-iteration APGD without EOT), BPTT with the model's own surrogate
``apgd-t``          APGD-T: targeted DLR towards each of the 3 classes ranked next by the clean logits (AutoAttack
                    uses 9; on 10 classes the 4th and later rarely win), 50 x EOT 2 each
``sa-pgd-assg``     SA-PGD with the ASSG surrogate, Wang et al.'s defaults (100 iterations, EOT 1, ``A = 0.425``)
``apgd-rate``,      APGD-CE through the other gradient modes (RGA's rate gradient, HART, PDSG) and attacker
``apgd-hart``, ...  surrogates (ATan alpha 2, sigmoid alpha 4, the paper's piecewise-linear at widths 0.5 and 2):
                    25 x EOT 2 each, enough for a different gradient to show what the first stages missed
``transfer[s]``     APGD-CE crafted on each source ``s`` (100 x EOT 2 where the source is random), scored on the
                    target
``square``          Square, 1000 queries (the issue's floor at 8/255; AutoAttack runs 5000 on all images, here
                    only survivors pay), margin averaged over 1 draw per query
==================  ======================================================================================

``snn-v2`` keeps ``snn-v1``'s attacks, parameters and certificate and changes two things:

- every APGD-family stage returns the *last* iterate that fooled the EOT-averaged logits, not the first
  (AutoAttack's rule): on a Poisson model the first fooling point of 2 draws sits on the decision boundary and is
  often classified correctly by the scoring draw, while later iterates have climbed the loss further;
- the seven alternative-gradient stages become one, ``apgd-cycle`` (APGD-CE, 50 x EOT 2), whose iterations take
  the seven gradients in turn (:class:`~snn_adv.attacks.CyclingGradient`): one trajectory that every rule pushes,
  at 100 gradients per surviving image instead of 350 (in ``snn-v1`` on the CIFAR-10 SNN-BP they cost 12 % of the
  passes and broke 79 of the 3000 pairs, 2.6 points).

``snn-v2``'s digest is ``f93acd5b805a52c6``.

Gradient-mode stages need spiking neurons (an ANN's gradient is exact: they would repeat ``apgd-ce``), and the
modes that change the backward rule (rate, HART, PDSG, ASSG) need :class:`~snn_adv.neurons.LeakyLIFNode`; a stage
that does not apply to a model is listed as ``not applicable`` with the reason (a cycle keeps the members that apply
and is not applicable only when none does). EOT draws apply only to random models (on a deterministic one every
draw gives the same gradient). The convergence certificate re-runs the stage that broke the most pairs with 4x the
iterations, 4x the EOT draws and 2 restarts.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from ..attacks import APGD, GRADIENT_MODES, PGD, SAPGD, CyclingGradient, GradientMode, Square, resolve_gradient_mode
from ..frameworks import foreign_neurons_note
from ..neurons import build_surrogate, spiking_neurons, supports_backward_rules
from ..seeds import canonical_json

__all__ = ["CERTIFICATE", "DEFAULT_VERSION", "LARGE_EPS", "VANISHING", "Stage", "VERSIONS", "battery_digest",
           "large_eps_attack", "stages_of"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a battery.

    :ivar name: its name in reports (``apgd-ce``).
    :ivar attack: ``'apgd'``, ``'sapgd'`` or ``'square'``.
    :ivar arguments: the attack's arguments (``steps``, ``loss``, ``eot``, ``queries``, ...), eps excluded.
    :ivar grad_mode: ``None`` (the model's own surrogate, BPTT) or ``{"name": mode, **parameters}``; a ``bptt``
        mode may carry an attacker ``surrogate`` spec (:func:`~snn_adv.neurons.build_surrogate`).
    :ivar transfer: crafted on each source instead of the target.
    """

    name: str
    attack: str
    arguments: Mapping[str, Any]
    grad_mode: Optional[Mapping[str, Any]] = None
    transfer: bool = False

    @property
    def gradient_free(self) -> bool:
        return self.attack == "square"

    def settings(self) -> Dict[str, Any]:
        return {"name": self.name, "attack": self.attack, "arguments": dict(self.arguments),
                "grad_mode": None if self.grad_mode is None else dict(self.grad_mode), "transfer": self.transfer}

    def not_applicable(self, model: nn.Module) -> Optional[str]:
        """Why this stage does not apply to ``model`` (crafting model), or None."""
        if self.grad_mode is None or self.attack == "sapgd":
            return None
        neurons = spiking_neurons(model)
        if not neurons:
            foreign = foreign_neurons_note(model)
            return foreign or "no spiking neurons: the model's gradient is exact, the stage would repeat apgd-ce"
        if not _applicable_modes(self.grad_mode, neurons):
            return (f"gradient mode {self.grad_mode['name']!r} needs snn_adv's LeakyLIFNode with its own step hooks "
                    "(stock neurons, or a class overriding SpikingJelly's)")
        return None

    def gradient_mode(self, model: nn.Module) -> GradientMode:
        """The gradient mode on ``model``: SA-PGD's ASSG falls back to the model's own gradient where ASSG does not
        apply (no spiking neurons, stock neurons); a cycle keeps the members that apply."""
        neurons = spiking_neurons(model)
        specs = _applicable_modes(self.grad_mode or {"name": "bptt"}, neurons) if neurons else []
        if self.grad_mode is not None and self.grad_mode["name"] == "cycle":
            return CyclingGradient([_mode_from_spec(spec) for spec in specs])
        return _mode_from_spec(specs[0] if specs else {"name": "bptt"})

    def build(self, model: nn.Module, eps: float, random: bool, effort: int = 1, restarts: int = 1):
        """The attack on crafting model ``model`` at ``eps``; ``random``: the model is random (EOT applies);
        ``effort`` multiplies iterations (queries) and EOT draws, ``restarts`` sets the restarts (certificate)."""
        arguments = dict(self.arguments)
        draws = arguments.pop("eot", 1)
        eot = draws * effort if random else 1
        if self.attack == "square":
            arguments["queries"] *= effort
            return Square(model, eps=eps, eot=eot, **arguments)
        arguments["steps"] *= effort
        cls = {"apgd": APGD, "sapgd": SAPGD}[self.attack]
        return cls(model, eps=eps, eot=eot, restarts=restarts, grad_mode=self.gradient_mode(model), **arguments)


def _applicable_modes(spec: Mapping[str, Any], neurons) -> List[Mapping[str, Any]]:
    """The mode specs of ``spec`` (a cycle's members, else itself) that apply to ``neurons``: ``bptt`` (with any
    surrogate) always, the others only where every neuron takes our backward rules."""
    specs = spec["members"] if spec["name"] == "cycle" else [spec]
    rules = all(map(supports_backward_rules, neurons))
    return [s for s in specs if s["name"] == "bptt" or rules]


def _mode_from_spec(spec: Mapping[str, Any]) -> GradientMode:
    """A gradient mode from its spec: ``{"name": mode, **parameters}``, ``bptt`` with an optional surrogate spec."""
    parameters = dict(spec)
    name, surrogate = parameters.pop("name"), parameters.pop("surrogate", None)
    if name == "bptt":
        return resolve_gradient_mode("bptt", None if surrogate is None else build_surrogate(surrogate))
    return GRADIENT_MODES[name](**parameters)


#: the alternative gradients, by the name of their own stage in ``snn-v1`` (``snn-v2`` cycles through them): RGA's
#: rate gradient, HART, PDSG, and BPTT with attacker surrogates
_ALTERNATIVE_GRADIENTS: Tuple[Tuple[str, Mapping[str, Any]], ...] = (
    ("apgd-rate", {"name": "rate"}), ("apgd-hart", {"name": "hart"}), ("apgd-pdsg", {"name": "pdsg"}),
    ("apgd-atan", {"name": "bptt", "surrogate": {"name": "ATan", "alpha": 2.0}}),
    ("apgd-sigmoid", {"name": "bptt", "surrogate": {"name": "Sigmoid", "alpha": 4.0}}),
    ("apgd-pwl-narrow", {"name": "bptt", "surrogate": {"name": "PiecewiseLinear", "gamma": 1.0, "width": 0.5}}),
    ("apgd-pwl-wide", {"name": "bptt", "surrogate": {"name": "PiecewiseLinear", "gamma": 1.0, "width": 2.0}}))
_LAST = {"keep": "last"}

#: version -> the whitebox stages in order; transfer stages (one per source) and Square follow them
VERSIONS: Dict[str, Tuple[Stage, ...]] = {
    "snn-v1": (
        Stage("apgd-ce", "apgd", {"steps": 50, "loss": "ce", "eot": 2}),
        Stage("apgd-t", "apgd", {"steps": 50, "loss": "dlr", "target_classes": 3, "eot": 2}),
        Stage("sa-pgd-assg", "sapgd", {"steps": 100, "eot": 1}, {"name": "assg", "vanishing": 0.425}),
        *(Stage(name, "apgd", {"steps": 25, "loss": "ce", "eot": 2}, mode) for name, mode in _ALTERNATIVE_GRADIENTS),
        Stage("transfer", "apgd", {"steps": 100, "loss": "ce", "eot": 2}, transfer=True),
        Stage("square", "square", {"queries": 1000, "p_init": 0.8, "eot": 1}),
    ),
    "snn-v2": (
        Stage("apgd-ce", "apgd", {"steps": 50, "loss": "ce", "eot": 2, **_LAST}),
        Stage("apgd-t", "apgd", {"steps": 50, "loss": "dlr", "target_classes": 3, "eot": 2, **_LAST}),
        Stage("sa-pgd-assg", "sapgd", {"steps": 100, "eot": 1, **_LAST}, {"name": "assg", "vanishing": 0.425}),
        Stage("apgd-cycle", "apgd", {"steps": 50, "loss": "ce", "eot": 2, **_LAST},
              {"name": "cycle", "members": [mode for _, mode in _ALTERNATIVE_GRADIENTS]}),
        Stage("transfer", "apgd", {"steps": 100, "loss": "ce", "eot": 2, **_LAST}, transfer=True),
        Stage("square", "square", {"queries": 1000, "p_init": 0.8, "eot": 1}),
    ),
}

#: the version a call without one gets: ``snn-v2``, stronger than ``snn-v1`` at less cost (README, "What the protocol
#: costs"); presets name theirs, so committed results keep the version they were computed with
DEFAULT_VERSION = "snn-v2"

#: the convergence certificate: factor on iterations and EOT draws, and restarts
CERTIFICATE = {"effort": 4, "restarts": 2}
#: the large-eps self-check: PGD from the clean image (a random start alone would fool the model and hide a
#: missing gradient), 28 steps of 2.5*eps/28 (Madry's rule), on the first images
LARGE_EPS = {"eps": 1.0, "steps": 28, "images": 100, "bound": 0.05}
#: the vanishing-gradient check (a finite-difference probe, :func:`~snn_adv.protocol.run.gradient_probe`) on the
#: clean-correct ones of the first ``images``: one sign step of eps down the gradient of the margin must lower the
#: margin more than a random sign step of the same size on significantly more images than the other way round
#: (one-sided exact sign test at ``level``); else the gradient tells a gradient attack nothing, however large or
#: small it is. Scale-free on
#: purpose: honest SNN-BP surrogate gradients are 40x smaller than their ANN's (the quickstart's: median
#: ``eps * |grad margin|_1 / margin`` 0.021 against 0.82 at 8/255), so a bound on the scale flags them falsely
VANISHING = {"images": 100, "level": 0.95}


def stages_of(version: str, sources: Mapping[str, nn.Module]) -> Tuple[Stage, ...]:
    """The stages of ``version`` with the transfer stage expanded to one per source (none without sources)."""
    if version not in VERSIONS:
        raise ValueError(f"argument 'version' = {version!r}: must be one of {', '.join(VERSIONS)}")
    stages = []
    for stage in VERSIONS[version]:
        if stage.transfer:
            stages += [dataclasses.replace(stage, name=f"{stage.name}[{name}]") for name in sources]
        else:
            stages.append(stage)
    return tuple(stages)


def battery_digest(version: str) -> str:
    """A digest of the version's stages, certificate and self-check settings (recorded in every report)."""
    content = [[s.settings() for s in VERSIONS[version]], CERTIFICATE, LARGE_EPS, VANISHING]
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()[:16]


def large_eps_attack(model: nn.Module) -> PGD:
    """The PGD of the large-eps self-check on ``model`` (its own gradient)."""
    eps, steps = LARGE_EPS["eps"], LARGE_EPS["steps"]
    return PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=False)
