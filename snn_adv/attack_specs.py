"""The attack registry: a config entry ``{"name": ..., **arguments}`` -> an attack on a model.

One place for studies, the quickstart and ``snn-adv evaluate``. Names:

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
sweep's whitebox/blackbox modes), ``alpha_over_eps`` (PGD step relative to eps in the eps sweep).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch.nn as nn

from .neurons import build_surrogate

__all__ = ["METADATA_KEYS", "at_eps", "attack_label", "attack_names", "build_attack", "build_surrogate",
           "check_protocols"]

METADATA_KEYS = ("label", "snn_only", "study_modes")


def attack_names() -> List[str]:
    """Every attack entry name: ``clean``, the attacks of :data:`snn_adv.attacks.ATTACKS`, ``ensemble``,
    ``torchattacks`` and ``worst_of`` (a table row over other entries)."""
    from .attacks import ATTACKS

    return ["clean", *ATTACKS, "ensemble", "torchattacks", "worst_of"]


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
    from . import attacks

    if "alpha_over_eps" in spec:
        if "eps" not in spec:
            raise ValueError(f"attack entry {dict(spec)!r}: 'alpha_over_eps' sets the step relative to eps and needs 'eps'")
        spec = at_eps(spec, spec["eps"])
    spec = {k: v for k, v in spec.items() if k not in METADATA_KEYS}
    name = spec.pop("name", None)
    if name == "clean":
        return None
    if name == "worst_of":
        raise ValueError("attack entry 'worst_of' is not an attack: it is a row of a robustness or strong table, "
                         "computed from the rows it names in 'of'")
    if "surrogate" in spec:
        spec["surrogate"] = build_surrogate(spec["surrogate"])
    if name in attacks.ATTACKS:
        return attacks.ATTACKS[name](model, seed=seed, **spec)
    if name == "ensemble":
        surrogates = [build_surrogate(s) for s in spec.pop("surrogates", [])]
        return attacks.gradient_mode_ensemble(model, surrogates=surrogates, seed=seed, **spec)
    if name == "torchattacks":
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
    raise ValueError(f"argument 'attack' = {name!r}: must be one of {', '.join(map(repr, attack_names()))}")


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
