"""Study ``robustness`` (the paper's main table): ANN, SNN-conv and SNN-BP under clean, FGSM and PGD, whitebox and
blackbox (every source kind, trained separately with another seed, against every target: same-kind and cross pairs).

:func:`table_study` is shared with the ``strong`` study (the same table under adaptive attacks).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Tuple

from .. import plots
from ..attack_specs import attack_label
from ..cells import cell_key
from ..distributed import dist_info
from ..evaluation import check_whitebox_vs_blackbox
from ..zoo import KINDS, LABELS
from .common import StudyContext, accuracy_stats, noise_tolerance, record_checks

__all__ = ["run", "table_study"]


def table_study(ctx: StudyContext, blackbox: bool) -> str:
    """Whitebox (and blackbox) accuracy of every target kind under every attack of the study's section."""
    zoo, section = ctx.zoo, ctx.section
    kinds = section.get("kinds", list(KINDS))
    attacks = section["attacks"]
    sources = section.get("sources", list(KINDS)) if blackbox else []
    cells = [ctx.cell(source=None, attack={"name": "clean"}, targets={k: zoo.key(k) for k in kinds})]
    for spec in attacks:
        for kind in kinds:
            if spec.get("snn_only") and kind == "ann":
                continue
            cells.append(ctx.cell(source={"kind": kind, "role": "main", "model": zoo.key(kind)}, attack=spec,
                                  targets={kind: zoo.key(kind)}))
        for kind in sources:
            if spec.get("snn_only") and kind == "ann":
                continue
            cells.append(ctx.cell(source={"kind": kind, "role": "source", "model": zoo.key(kind, "source")},
                                  attack=spec, targets={k: zoo.key(k) for k in kinds}))

    def compute(settings: Mapping[str, Any]) -> Dict[str, Any]:
        src = settings["source"]
        source = zoo.get(src["kind"], src["role"]) if src else None
        targets = {k: zoo.get(k) for k in settings["targets"]}
        return ctx.counts(source, targets, settings["attack"], ctx.cell_seed(settings), with_clean=False)

    records = ctx.run(cells, compute)
    rows, wide = [], {k: {"model": LABELS[k]} for k in kinds}
    for record in records:
        s, counts = record["settings"], record["result"]
        src = s["source"]
        for target in s["targets"]:
            if src is None:
                condition, mode, tag = "clean", "-", "clean"
            else:
                mode = "whitebox" if src["role"] == "main" else "blackbox"
                tag = "adv"
                condition = f"{attack_label(s['attack'])} {'WB' if mode == 'whitebox' else 'BB from ' + LABELS[src['kind']]}"
            stats = accuracy_stats(counts, target, tag, ctx.eval_seeds)
            rows.append({"target": LABELS[target], "condition": condition, "attack": attack_label(s["attack"]),
                         "mode": mode, "source": LABELS[src["kind"]] + "'" if src and mode == "blackbox" else "",
                         "accuracy_mean": stats["mean"], "accuracy_std": stats["std"], "n_seeds": stats["n_seeds"],
                         "n_images": counts["total"], "cell": cell_key(s)})
            wide[target][condition] = f"{stats['mean']:.1f} ± {stats['std']:.1f}"
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    ctx.write(rows, ["target", "condition", "attack", "mode", "source", "accuracy_mean", "accuracy_std", "n_seeds",
                     "n_images", "cell"], stem="cells")
    pairs = [(wb, bb) for wb in rows if wb["mode"] == "whitebox" for bb in rows
             if bb["mode"] == "blackbox" and (bb["target"], bb["attack"]) == (wb["target"], wb["attack"])]
    checks = []
    for wb, bb in pairs:
        check = check_whitebox_vs_blackbox(wb["accuracy_mean"] / 100, bb["accuracy_mean"] / 100,
                                           noise_tolerance(wb["n_images"]))
        checks.append(dataclasses.replace(
            check, detail=f"{wb['target']}, {wb['attack']}, blackbox from {bb['source']}: {check.detail}"))
    markdown = ctx.write(list(wide.values()), ["model", *conditions], stem="table") + record_checks(ctx, checks)
    if dist_info().is_main:
        bars = {LABELS[k]: [_mean_std_of(rows, LABELS[k], c) for c in conditions] for k in kinds}
        plots.plot_bars(conditions, bars, ctx.out / "accuracy.png", ylabel="accuracy (%)",
                        title=f"{ctx.name}: accuracy per model and attack (WB whitebox, BB blackbox from a separately "
                              "trained source)", note=ctx.note())
    return markdown


def _mean_std_of(rows, target: str, condition: str) -> Tuple[float, float]:
    for row in rows:
        if row["target"] == target and row["condition"] == condition:
            return row["accuracy_mean"], row["accuracy_std"]
    return math.nan, 0.0


def run(ctx: StudyContext) -> str:
    return table_study(ctx, blackbox=True)
