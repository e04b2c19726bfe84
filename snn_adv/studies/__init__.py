"""The paper's studies as resumable cell grids over one shared cache of trained models, one module per study.

``run_study(name, config, out)`` for ``name`` in :data:`STUDIES`:

``robustness``   ANN, SNN-conv, SNN-BP: clean, FGSM and PGD accuracy, whitebox and blackbox (every source kind,
                 trained separately with another seed, against every target: same-kind and cross pairs)
``timesteps``    adversarial accuracy against T for several input quantisation levels (SNN-BP, SNN-conv)
``leak``         adversarial accuracy against the leak factor at fixed T (1.0 = IF)
``eps``          accuracy against eps for each model kind and attack (whitebox)
``layerwise``    relative change of each layer's activations / spike rates / membrane potentials under attack
``strong``       the robustness table under adaptive attacks (EOT, rate, HART, surrogate ensemble, torchattacks)
``protocol``     the robustness protocol (:mod:`snn_adv.protocol`: the versioned battery as a certified cascade) on
                 each kind, every SNN against the ANN on the same images and draws

Models come from :class:`snn_adv.zoo.ModelZoo` (cached under ``out/models`` by recipe, shared by every study);
attacks from :mod:`snn_adv.attack_specs`; cells from :mod:`snn_adv.cells`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..attack_specs import check_protocols
from ..cells import claim_output_folder
from ..io import PathLike
from ..schema import Section
from ..validation import check_choice
from ..zoo import KINDS, LABELS, ModelZoo
from . import eps, layerwise, leak, protocol, robustness, strong, timesteps
from .common import StudyContext

__all__ = ["STUDIES", "STUDY_SECTIONS", "StudyContext", "check_study_protocols", "run_studies", "run_study"]

#: the study modules in the order ``study all`` runs them; each has ``run`` and its config section ``CONFIG``
_MODULES = {"robustness": robustness, "timesteps": timesteps, "leak": leak, "eps": eps, "layerwise": layerwise,
            "strong": strong, "protocol": protocol}
STUDIES: Dict[str, Callable[[StudyContext], str]] = {name: module.run for name, module in _MODULES.items()}
#: each study's config section (``studies.<name>``), composed by :mod:`snn_adv.config`
STUDY_SECTIONS: Dict[str, Section] = {name: module.CONFIG for name, module in _MODULES.items()}


def check_study_protocols(name: str, config: Mapping[str, Any]) -> None:
    """Refuse, before any model is trained, an attack entry of study ``name`` whose protocol does not fit a target
    kind it runs on (AutoAttack ``version='standard'`` on a stochastic SNN: :func:`snn_adv.attack_specs.check_protocols`
    on an untrained stand-in of each kind, which has the kind's encoder)."""
    from ..models import build_classifier

    section, models = config["studies"][name], config["models"]
    specs = section.get("attacks", [section["attack"]] if "attack" in section else [])
    kinds = section.get("kinds") or [m["kind"] for m in section.get("models", [])] or list(KINDS)
    stand_ins = {LABELS[kind]: build_classifier(models["arch"], config["data"]["dataset"],
                                                "ann" if kind == "ann" else "snn", **models.get("arch_kwargs", {}))
                 for kind in dict.fromkeys(kinds)}
    check_protocols(specs, stand_ins, f"config studies.{name}.attacks")


def run_study(name: str, config: Mapping[str, Any], out: PathLike, *, zoo: Optional[ModelZoo] = None,
              progress: bool = True, recompute: bool = False) -> str:
    """Run one study of ``config`` into ``out/<name>/`` (resuming finished cells); return its markdown table.
    ``recompute``: recompute cells that fail verification instead of refusing them (:class:`CellStore`)."""
    check_choice("study", name, STUDIES)
    if name not in config.get("studies", {}):
        raise ValueError(f"argument 'study' = {name!r}: the config has no section studies.{name} "
                         f"(it has {sorted(config.get('studies', {}))})")
    check_study_protocols(name, config)
    with claim_output_folder(out):
        return STUDIES[name](StudyContext(name, config, out, zoo=zoo, progress=progress, recompute=recompute))


def run_studies(names: Sequence[str], config: Mapping[str, Any], out: PathLike, progress: bool = True,
                recompute: bool = False) -> Dict[str, str]:
    """Run several studies sharing one model cache (under torchrun: every rank joins, rank 0 writes)."""
    from ..distributed import init_distributed

    info = init_distributed()
    for name in names:  # every study's attacks are checked before the first model is trained
        check_choice("study", name, STUDIES)
        if name in config.get("studies", {}):
            check_study_protocols(name, config)
    zoo = ModelZoo(config, Path(out) / "models", progress=progress and info.is_main)
    tables = {}
    for name in names:
        tables[name] = run_study(name, config, out, zoo=zoo, progress=progress and info.is_main,
                                 recompute=recompute)
        if info.is_main:
            print(f"\n## {name}\n\n{tables[name]}", flush=True)
    return tables
