"""The attack registry: a config entry ``{"name": ..., **arguments}`` -> an attack on a model.

One place for configs, studies, the quickstart and ``snn-adv evaluate``: each name of :data:`ENTRIES` holds how
to build its attack, the keys it takes (the config schema's attack entry is derived from them, and a key an entry
does not take is refused at load) and the self-check its rows owe in a robustness table. Names:

``clean``         no attack (None)
``fgsm``, ``pgd`` :class:`snn_adv.attacks.FGSM` / :class:`~snn_adv.attacks.PGD` and their arguments (``eps``,
                  ``alpha``, ``steps``, ``restarts``, ``random_start``, ``grad_mode``, ``eot``, ``surrogate`` as a spec)
``ensemble``      :func:`snn_adv.attacks.gradient_mode_ensemble`: ``modes``, ``surrogates`` (specs) and PGD arguments
``torchattacks``  ``class`` of torchattacks (``APGD``, ``AutoAttack``, ``Square``...) and its ``kwargs``; torchattacks
                  calls ``eval()``, under which our neurons keep their surrogate gradient
``worst_of``      not an attack: a row of a robustness or strong table, the per-sample worst case of the entries
                  whose labels it lists in ``of`` (:meth:`snn_adv.evaluation.EvaluationResult.worst_case` of their
                  whitebox results: no attack is crafted twice)

plus table metadata that is not an argument: ``label``, ``snn_only`` (skip ANN targets), ``study_modes`` (restrict a
sweep's whitebox/blackbox modes), ``alpha_over_eps`` (PGD step relative to the entry's eps, or the eps sweep's).

Adding an attack: its class in ``snn_adv/attacks/`` (torchattacks' contract: ``attack(images, labels)``, built as
``cls(model, seed=..., **arguments)``), then one line, ``register_attack("name", class_entry(MyAttack))``; an
argument its class takes that :data:`ARGUMENT_FIELDS` does not know is declared with ``class_entry(..., fields=)``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn

from .attacks import FGSM, PGD, gradient_mode_ensemble
from .attacks.gradients import GRADIENT_MODES
from .neurons import build_surrogate
from .schema import FLAG, FRACTION, OBJECT, POSITIVE, POSITIVE_INT, TEXT, ListOf, Section, Value

__all__ = ["ARGUMENT_FIELDS", "ATTACK", "ATTACK_LIST", "AttackEntry", "AttackEntrySchema", "AttackList", "ENTRIES",
           "METADATA_KEYS", "MODE", "at_eps", "attack_label", "attack_names", "build_attack", "build_surrogate",
           "check_protocols", "class_entry", "register_attack"]

METADATA_KEYS = ("label", "snn_only", "study_modes")

#: an attacker surrogate spec (:func:`snn_adv.neurons.build_surrogate`)
SURROGATE = Section({"name": TEXT, "alpha": POSITIVE, "gamma": POSITIVE, "width": POSITIVE, "spiking": FLAG},
                    required=("name",))
#: what each argument of our attack classes may hold in a config (``model`` and ``seed`` are the caller's)
ARGUMENT_FIELDS: Dict[str, Any] = {
    "eps": FRACTION, "alpha": POSITIVE, "steps": POSITIVE_INT, "restarts": POSITIVE_INT, "random_start": FLAG,
    "grad_mode": Value("str", choices=tuple(GRADIENT_MODES)), "eot": POSITIVE_INT, "surrogate": SURROGATE,
    "targeted": FLAG,
}
#: the self-checks a table row can owe (:func:`snn_adv.studies.robustness.attack_checks`): a gradient-free attack
#: must not beat the gradient attacks, a minimal-norm one must not find smaller perturbations, an ensemble or EOT
#: attack must not be weaker than the section's reference, an iterative one not weaker than a single-step reference
OWED_CHECKS = ("gradient_free", "minimal_norm", "not_weaker", "iterative")


def _owes_nothing(spec: Mapping[str, Any]) -> Optional[str]:
    return None


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One attack a config can name.

    :ivar build: ``(arguments, model, seed) -> attack`` (or None: no attack); ``arguments`` are the entry's keys
        without ``name`` and metadata.
    :ivar fields: the keys the entry takes and what each may hold (the config schema is derived from them).
    :ivar required: the keys it must give.
    :ivar owes: ``spec -> `` one of :data:`OWED_CHECKS` or None: the self-check its rows owe.
    """

    build: Callable[[Dict[str, Any], nn.Module, int], Optional[Callable]]
    fields: Mapping[str, Any]
    required: Tuple[str, ...] = ()
    owes: Callable[[Mapping[str, Any]], Optional[str]] = _owes_nothing


def class_entry(cls: type, owes: Callable[[Mapping[str, Any]], Optional[str]] = _owes_nothing,
                fields: Optional[Mapping[str, Any]] = None) -> AttackEntry:
    """The entry of one of our attack classes: built as ``cls(model, seed=seed, **arguments)`` (a ``surrogate``
    spec built first); its keys are its constructor's arguments, each from ``fields`` or :data:`ARGUMENT_FIELDS`."""
    known = {**ARGUMENT_FIELDS, **(fields or {})}
    arguments = [name for klass in cls.__mro__ if "__init__" in vars(klass)
                 for name, p in inspect.signature(klass.__init__).parameters.items()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in ("self", "model", "seed")]
    unknown = [name for name in arguments if name not in known]
    if unknown:
        raise ValueError(f"class_entry({cls.__name__}): arguments {unknown} have no config schema: pass fields=...")

    def build(spec: Dict[str, Any], model: nn.Module, seed: int) -> Callable:
        if "surrogate" in spec:
            spec = {**spec, "surrogate": build_surrogate(spec["surrogate"])}
        return cls(model, seed=seed, **spec)

    return AttackEntry(build, {name: known[name] for name in dict.fromkeys(arguments)}, owes=owes)


def _build_ensemble(spec: Dict[str, Any], model: nn.Module, seed: int) -> Callable:
    surrogates = [build_surrogate(s) for s in spec.pop("surrogates", [])]
    return gradient_mode_ensemble(model, surrogates=surrogates, seed=seed, **spec)


def _build_torchattacks(spec: Dict[str, Any], model: nn.Module, seed: int) -> Callable:
    import torchattacks

    kwargs = dict(spec.get("kwargs", {}))
    cls = getattr(torchattacks, spec["class"])
    accepted = cls.__init__.__code__.co_varnames
    if "seed" in accepted:
        kwargs["seed"] = seed
    if "n_classes" in accepted and "n_classes" not in kwargs and getattr(model, "arch", {}).get("dataset"):
        from .data import dataset_info

        kwargs["n_classes"] = dataset_info(model.arch["dataset"]).num_classes
    return cls(model, **kwargs)


def _torchattacks_owes(spec: Mapping[str, Any]) -> Optional[str]:
    from .evaluation import MINIMAL_NORM_ATTACKS

    return ("gradient_free" if spec.get("class") == "Square" else
            "minimal_norm" if spec.get("class") in MINIMAL_NORM_ATTACKS else None)


def _not_an_attack(spec: Dict[str, Any], model: nn.Module, seed: int) -> None:
    raise ValueError("attack entry 'worst_of' is not an attack: it is a row of a robustness or strong table, "
                     "computed from the rows it names in 'of'")


_PGD = class_entry(PGD, owes=lambda spec: "iterative")
#: name -> entry; add yours with :func:`register_attack`
ENTRIES: Dict[str, AttackEntry] = {
    "clean": AttackEntry(lambda spec, model, seed: None, {}),
    "fgsm": class_entry(FGSM),
    "pgd": _PGD,
    "ensemble": AttackEntry(_build_ensemble, {**{k: v for k, v in _PGD.fields.items() if k not in ("grad_mode", "surrogate")},
                                              "modes": ListOf(ARGUMENT_FIELDS["grad_mode"], unique=True),
                                              "surrogates": ListOf(SURROGATE, min_items=0)},
                            owes=lambda spec: "not_weaker"),
    "torchattacks": AttackEntry(_build_torchattacks, {"class": TEXT, "kwargs": OBJECT}, required=("class",),
                                owes=_torchattacks_owes),
    "worst_of": AttackEntry(_not_an_attack, {"of": ListOf(TEXT, unique=True, min_items=2)}, required=("of",)),
}


def register_attack(name: str, entry: AttackEntry) -> AttackEntry:
    """Make ``name`` an attack entry of configs, studies and ``snn-adv evaluate``."""
    if not isinstance(entry, AttackEntry):
        raise TypeError(f"register_attack: {entry!r} is not an AttackEntry (use class_entry(MyAttack))")
    if ENTRIES.get(name, entry) is not entry:
        raise ValueError(f"register_attack: name {name!r} is taken")
    ENTRIES[name] = entry
    return entry


def attack_names() -> List[str]:
    """Every attack entry name (:data:`ENTRIES`)."""
    return list(ENTRIES)


def attack_label(spec: Mapping[str, Any]) -> str:
    """The name an attack has in tables: its ``label``, else its name in capitals."""
    return spec.get("label") or spec["name"].upper()


def at_eps(spec: Mapping[str, Any], eps: float) -> Dict[str, Any]:
    """The attack entry at ``eps``; ``alpha_over_eps`` sets the PGD step relative to eps (0.25: the paper's
    2/255 at 8/255), so that 7 steps can reach the ball's surface at every eps."""
    spec = {**spec, "eps": eps}
    factor = spec.pop("alpha_over_eps", None)
    if factor is not None:
        spec["alpha"] = max(factor * eps, 1e-8)  # eps = 0: a clean cell, any step
    return spec


def build_attack(spec: Mapping[str, Any], model: nn.Module, seed: int = 0) -> Optional[Callable]:
    """The attack of config entry ``spec`` crafting on ``model``; None for ``clean``."""
    if "alpha_over_eps" in spec:
        if "eps" not in spec:
            raise ValueError(f"attack entry {dict(spec)!r}: 'alpha_over_eps' sets the step relative to eps and needs 'eps'")
        spec = at_eps(spec, spec["eps"])
    spec = {k: v for k, v in spec.items() if k not in METADATA_KEYS}
    name = spec.pop("name", None)
    if name not in ENTRIES:
        raise ValueError(f"argument 'attack' = {name!r}: must be one of {', '.join(map(repr, ENTRIES))}")
    return ENTRIES[name].build(spec, model, seed)


def check_protocols(specs: Sequence[Mapping[str, Any]], targets: Mapping[str, nn.Module], where: str) -> None:
    """Refuse, before any work, an entry whose protocol does not fit a target it will run on
    (:func:`snn_adv.evaluation.check_attack_protocol`: AutoAttack other than ``version='rand'`` on a stochastic
    model). ``where`` names the entries in the message (e.g. ``"config studies.strong.attacks"``); entries with
    ``snn_only`` skip targets without spiking neurons."""
    from .evaluation import check_attack_protocol
    from .neurons import spiking_neurons

    for i, spec in enumerate(specs):
        for name, model in targets.items():
            if spec.get("snn_only") and not spiking_neurons(model):
                continue
            try:
                check_attack_protocol(spec, model)
            except ValueError as error:
                raise ValueError(f"{where}[{i}] ({attack_label(spec)}) on target {name}: {error}") from None


# --------------------------------------------------------------------------------------------------------------
# The config schema of an attack entry, derived from the registry (snn_adv.config and the studies' sections use it)
# --------------------------------------------------------------------------------------------------------------
#: a study mode of an attack entry (``study_modes``) and of the sweep studies
MODE = Value("str", choices=("whitebox", "blackbox"))

#: keys of an attack entry that are table metadata or study settings, not arguments of its attack
_ATTACK_METADATA = {"label": TEXT, "snn_only": FLAG, "study_modes": ListOf(MODE, unique=True), "alpha_over_eps": POSITIVE}


def _attack_entry_keys(value: Mapping[str, Any], path: str, problems: List[str]) -> None:
    """An entry takes only its own keys (:class:`AttackEntry` ``fields``; not ``seed``: the cell
    derives it) besides the metadata, and its required ones: ``steps`` on ``fgsm`` is refused at load, not after the
    models were trained; a ``torchattacks`` entry takes ``class`` and ``kwargs`` (a top-level ``eps`` would be
    ignored). ``alpha_over_eps`` needs the entry's ``eps`` (or the eps study, which supplies it) and excludes
    ``alpha``."""
    if "alpha_over_eps" in value:
        if "alpha" in value:
            problems.append(f"config key {path + '.alpha_over_eps'!r}: set 'alpha' or 'alpha_over_eps', not both")
        elif "eps" not in value and not path.startswith("studies.eps."):
            problems.append(f"config key {path + '.alpha_over_eps'!r}: a step relative to eps needs the entry's "
                            "'eps' (only the eps study supplies one)")
    name = value.get("name")
    entry = ENTRIES.get(name) if isinstance(name, str) else None
    if entry is None:
        return  # reported by the name's choices
    for key in value:
        if key == "name" or key in entry.fields or key in _ATTACK_METADATA:
            continue
        if name == "torchattacks":
            problems.append(f"config key {path + '.' + key!r}: not used by a torchattacks entry (its arguments go "
                            f"in 'kwargs', e.g. \"kwargs\": {{{json.dumps(key)}: ...}})")
        else:
            problems.append(f"config key {path + '.' + key!r}: not an argument of attack {name!r} "
                            f"(it takes {', '.join(sorted(entry.fields)) or 'none'})")
    for key in entry.required:
        if key not in value:
            problems.append(f"config key {path!r}: a {name!r} entry needs {key!r}")


@dataclasses.dataclass(frozen=True)
class AttackEntrySchema:
    """An attack entry: a ``name`` of :data:`ENTRIES` and the keys that entry takes, read from the registry when a
    config is checked (a registered attack needs no change here)."""

    def check(self, value: Any, path: str, problems: List[str]) -> None:
        fields = {"name": Value("str", choices=tuple(ENTRIES)), **_ATTACK_METADATA}
        for entry in ENTRIES.values():
            fields.update({k: v for k, v in entry.fields.items() if k not in fields})
        Section(fields, required=("name",), extra=_attack_entry_keys).check(value, path, problems)


ATTACK = AttackEntrySchema()


@dataclasses.dataclass(frozen=True)
class AttackList(ListOf):
    """A list of attack entries in which a ``worst_of`` entry names, in ``of``, the labels of other entries."""

    def check(self, value: Any, path: str, problems: List[str]) -> None:
        super().check(value, path, problems)
        if not isinstance(value, list):
            return
        entries = [e for e in value if isinstance(e, dict) and isinstance(e.get("name"), str)]
        labels = {attack_label(e) for e in entries if e["name"] != "worst_of"}
        for i, entry in enumerate(value):
            if not (isinstance(entry, dict) and entry.get("name") == "worst_of"):
                continue
            if isinstance(entry.get("of"), list):
                for label in entry["of"]:
                    if label not in labels:
                        problems.append(f"config key {f'{path}[{i}].of'!r}: {label!r} is not the label of another "
                                        f"entry (labels: {', '.join(sorted(map(repr, labels)))})")


ATTACK_LIST = AttackList(ATTACK)
