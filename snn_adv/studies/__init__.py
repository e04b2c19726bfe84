"""The paper's studies as resumable cell grids over one shared cache of trained models, one module per study.

``run_study(name, config, out)`` for ``name`` in :data:`STUDIES`:

``robustness``   ANN, SNN-conv, SNN-BP: clean, FGSM and PGD accuracy, whitebox and blackbox (every source kind,
                 trained separately with another seed, against every target: same-kind and cross pairs)
``timesteps``    adversarial accuracy against T for several input quantisation levels (SNN-BP, SNN-conv)
``leak``         adversarial accuracy against the leak factor at fixed T (1.0 = IF)
``eps``          accuracy against eps for each model kind and attack (whitebox)
``layerwise``    relative change of each layer's activations / spike rates / membrane potentials under attack
``strong``       the robustness table under adaptive attacks (EOT, rate, HART, surrogate ensemble, torchattacks)

Models come from :class:`snn_adv.zoo.ModelZoo` (cached under ``out/models`` by recipe, shared by every study);
attacks from :mod:`snn_adv.attack_specs`; cells from :mod:`snn_adv.cells`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..cells import claim_output_folder
from ..io import PathLike
from ..validation import check_choice
from ..zoo import ModelZoo
from . import eps, layerwise, leak, robustness, strong, timesteps
from .common import StudyContext

__all__ = ["STUDIES", "StudyContext", "run_studies", "run_study"]

STUDIES: Dict[str, Callable[[StudyContext], str]] = {
    "robustness": robustness.run,
    "timesteps": timesteps.run,
    "leak": leak.run,
    "eps": eps.run,
    "layerwise": layerwise.run,
    "strong": strong.run,
}


def run_study(name: str, config: Mapping[str, Any], out: PathLike, *, zoo: Optional[ModelZoo] = None,
              progress: bool = True) -> str:
    """Run one study of ``config`` into ``out/<name>/`` (resuming finished cells); return its markdown table."""
    check_choice("study", name, STUDIES)
    if name not in config.get("studies", {}):
        raise ValueError(f"argument 'study' = {name!r}: the config has no section studies.{name} "
                         f"(it has {sorted(config.get('studies', {}))})")
    with claim_output_folder(out):
        return STUDIES[name](StudyContext(name, config, out, zoo=zoo, progress=progress))


def run_studies(names: Sequence[str], config: Mapping[str, Any], out: PathLike, progress: bool = True) -> Dict[str, str]:
    """Run several studies sharing one model cache (under torchrun: every rank joins, rank 0 writes)."""
    from ..distributed import init_distributed

    info = init_distributed()
    for name in names:
        check_choice("study", name, STUDIES)
    zoo = ModelZoo(config, Path(out) / "models", progress=progress and info.is_main)
    tables = {}
    for name in names:
        tables[name] = run_study(name, config, out, zoo=zoo, progress=progress and info.is_main)
        if info.is_main:
            print(f"\n## {name}\n\n{tables[name]}", flush=True)
    return tables
