"""Study ``protocol``: the robustness protocol (:func:`snn_adv.protocol.robust_accuracy`) on each model kind of the
zoo, and the kinds' robust accuracies compared on the same images and scoring draws.

One cell per target kind. Its transfer sources are the ANN it was converted from (SNN-conv and SNN-BP: the zoo
knows it) and the section's ``sources``, trained separately with the ``source`` seed (default: the ANN), so every
target meets the same battery, and the SNNs their parent as well. Each cell keeps the protocol's stage files under
``<out>/protocol/<kind>/stages/`` while it runs (a kill costs at most the stage in progress) and the report
(``report.json``, ``table.md``, ``cost.png``) beside them; the cell holds the report and the per-(image, draw)
outcomes, from which the table, the paired comparisons (SNN vs ANN, Holm within each family) and the checks are
drawn.

Section keys: ``kinds`` (default all), ``sources`` (kinds of the separately trained sources, default ``["ann"]``),
``eps`` (default 8/255), ``version`` (default ``snn-v1``), ``fresh_draws`` (K, default 8), ``test_count``,
``test_counts`` (fewer images for a kind: a prefix, as in the robustness table).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch.nn as nn

from .. import plots
from ..cells import cell_key
from ..evaluation import Check, EvaluationResult
from ..protocol import battery_digest, robust_accuracy
from ..protocol.report import FORWARD_COST
from ..stats import compare
from ..zoo import KINDS, LABELS
from .common import (StudyContext, comparison_row, family_verdicts, interval_columns, record_checks,
                     record_comparisons)
from .robustness import on_common_images

__all__ = ["DEFAULTS", "run", "sources_of"]

#: the section's defaults: the issue's threat model (Linf 8/255), the first battery, K = 8 fresh draws
DEFAULTS = {"eps": 8 / 255, "version": "snn-v1", "fresh_draws": 8, "sources": ["ann"]}


def sources_of(ctx: StudyContext, kind: str) -> Dict[str, str]:
    """Transfer sources of a ``kind`` target, name -> zoo key: ``ann-parent`` (the ANN an SNN was converted from)
    and ``<kind>-source`` for each kind of the section's ``sources`` (trained with the source seed)."""
    names = {} if kind == "ann" else {"ann-parent": ("ann", "main")}
    names.update({f"{source}-source": (source, "source") for source in ctx.section.get("sources", DEFAULTS["sources"])})
    return {name: ctx.zoo.key(*which) for name, which in names.items()}


def _source_models(ctx: StudyContext, kind: str) -> Dict[str, nn.Module]:
    return {name: ctx.zoo.get(*(("ann", "main") if name == "ann-parent" else (name[:-len("-source")], "source")))
            for name in sources_of(ctx, kind)}


def run(ctx: StudyContext) -> str:
    section, zoo = ctx.section, ctx.zoo
    settings = {key: section.get(key, default) for key, default in DEFAULTS.items() if key != "sources"}
    kinds = list(section.get("kinds", KINDS))
    cells = [ctx.cell(kind=kind, model=zoo.key(kind), sources=sources_of(ctx, kind), count=ctx.count_of(kind),
                      battery=battery_digest(settings["version"]), **settings) for kind in kinds]

    def compute(cell: Mapping[str, Any]) -> Dict[str, Any]:
        kind = cell["kind"]
        images, labels = (t[:cell["count"]] for t in ctx.data)
        report = robust_accuracy(zoo.get(kind), (images, labels), cell["eps"], version=cell["version"],
                                 sources=_source_models(ctx, kind), seed=ctx.config["seed"],
                                 scoring_seeds=ctx.eval_seeds, fresh_draws=cell["fresh_draws"],
                                 batch_size=ctx.batch_size, out=ctx.out / kind, progress=ctx.progress,
                                 device=zoo.device)
        results = {"robust": report.result.to_dict()}
        if report.every_draw is not None:
            results["every_draw"] = report.every_draw.to_dict()
        return {"report": report.to_dict(), "results": results}

    records = ctx.run(cells, compute)
    rows, robust, every, checks = [], {}, {}, []
    series = {}
    for record in records:
        kind, report = record["settings"]["kind"], record["result"]["report"]
        results = {name: EvaluationResult.from_dict(data) for name, data in record["result"]["results"].items()}
        robust[kind] = results["robust"]
        every[kind] = results.get("every_draw", results["robust"])  # a deterministic model: every draw is the same
        certificate = report["certificate"]
        rows.append({"model": LABELS[kind], **interval_columns(robust[kind], "clean", "clean"),
                     **interval_columns(robust[kind], "adversarial", "robust"),
                     **interval_columns(every[kind], "adversarial", "robust_every_draw"),
                     "verdict": report["verdict"], "certificate_stage": certificate.get("stage"),
                     "certificate_removed": None if certificate.get("removed") is None else 100 * certificate["removed"],
                     "certificate_p": certificate.get("comparison", {}).get("p_value"),
                     "cost": report["total_cost"], "seconds": report["seconds"],
                     "n_images": robust[kind].n, "n_seeds": len(robust[kind].scoring_seeds),
                     "sources": ", ".join(record["settings"]["sources"]), "cell": cell_key(record["settings"])})
        checks += [Check(c["name"], c["passed"], f"{LABELS[kind]}: {c['detail']}", c.get("values", {}))
                   for c in report["checks"]]
        series[LABELS[kind]] = [(r["cumulative_cost"], 100 * r["accuracy"], 100 * r["low"], 100 * r["high"])
                                for r in report["stages"]]
    comparisons = []
    for kind in kinds:
        if kind == "ann" or "ann" not in robust:
            continue
        for what, outcome, family in (("robust accuracy", robust, "protocol: robust accuracy, SNN vs ANN"),
                                      ("robust on every draw", every, "protocol: robust on every draw, SNN vs ANN")):
            a, b = on_common_images(outcome[kind], outcome["ann"])
            comparisons.append(comparison_row(what, LABELS[kind], LABELS["ann"], compare(a, b), family))
        a, b = on_common_images(robust[kind], robust["ann"])
        comparisons.append(comparison_row("clean accuracy", LABELS[kind], LABELS["ann"],
                                          compare(a, b, "clean", "clean"), "protocol: clean accuracy, SNN vs ANN"))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    markdown = ctx.write(rows, columns) + record_checks(ctx, checks)
    markdown += record_comparisons(ctx, family_verdicts(comparisons))
    plots.plot_lines(series, ctx.out / "cascade.png", xlabel="cumulative cost (forward-backward passes per image, "
                     f"a forward alone {FORWARD_COST})", ylabel="robust accuracy (%)", xscale="symlog",
                     title=f"protocol {settings['version']}: robust accuracy over the cascade", ylim=(0, 100),
                     eps=settings["eps"], note=ctx.note())
    return markdown
