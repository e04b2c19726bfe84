"""Study ``protocol``: the robustness protocol (:func:`snn_adv.protocol.robust_accuracy`) on each model of the zoo,
compared on the same images and scoring draws; with ``defences``, the defended models beside the plain ones and
the gap between the attack a defence paper reports and the protocol.

Targets: every kind of ``kinds`` under every name of ``defences`` (``null``: the plain recipe; a name: the config's
``models.defences`` variant, e.g. adversarially trained). One cell per target. Its transfer sources are the ANN it
was converted from (SNN-conv and SNN-BP, under the same defence: the zoo knows it) and the section's ``sources``,
trained separately with the ``source`` seed, so every target meets the same battery. Each cell keeps the protocol's
stage files under ``<out>/protocol/<target>/stages/`` while it runs (a kill costs at most the stage in progress) and
the report (``report.json``, ``table.md``, ``cost.png``) beside them; the cell holds the report, the per-(image,
draw) outcomes and the target's training time (its whole chain: ANN, conversion, BPTT).

With a ``reference`` attack entry (e.g. PGD-10 with the model's own surrogate and no EOT, as defence papers report)
each target is also attacked by it alone (one cell each), and the gap reference - protocol is tested per target.

Paired comparisons (Holm within each family): each SNN against the ANN of its defence (robust, robust on every
draw, clean), each defended target against its plain twin, and the gaps.

Section keys: ``kinds`` (default all), ``defences`` (default ``[null]``), ``sources`` (default ``["ann"]``), ``eps``
(default 8/255), ``version`` (default :data:`~snn_adv.protocol.DEFAULT_VERSION`), ``fresh_draws`` (K, default 8), ``reference``, ``test_count``,
``test_counts`` (fewer images for a kind: a prefix, as in the robustness table).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple


from .. import checkpoints, plots
from ..attack_specs import ATTACK, attack_label
from ..cells import cell_key
from ..evaluation import Check, EvaluationResult, compare
from ..protocol import DEFAULT_VERSION, VERSIONS, battery_digest, robust_accuracy
from ..protocol.report import FORWARD_COST
from ..schema import POSITIVE_INT, ListOf, Section, Value
from ..zoo import KINDS, LABELS
from .common import (KIND, KIND_LIST, TEST_COUNT, TEST_COUNTS, StudyContext, comparison_row, family_verdicts, interval_columns, record_checks,
                     record_comparisons, results_of)
from .robustness import on_common_images

__all__ = ["CONFIG", "DEFAULTS", "run", "sources_of", "target_label"]

#: the section's defaults: the issue's threat model (Linf 8/255), the first battery, K = 8 fresh draws
DEFAULTS = {"eps": 8 / 255, "version": DEFAULT_VERSION, "fresh_draws": 8, "sources": ["ann"]}


def _reference_at_the_protocols_radius(section: Mapping[str, Any], path: str, problems: List[str]) -> None:
    """The gap reference - protocol compares two attacks at one radius: a reference at another eps is refused."""
    reference, eps = section.get("reference"), section.get("eps", DEFAULTS["eps"])
    if isinstance(reference, dict) and isinstance(reference.get("eps"), (int, float)) and \
            isinstance(eps, (int, float)) and abs(reference["eps"] - eps) > 1e-12:
        problems.append(f"config key '{path}.reference.eps' = {reference['eps']!r} differs from the protocol's eps "
                        f"{eps!r}: the gap reference - protocol compares two attacks at one radius")


#: the study's config section (``studies.protocol``); battery versions are read when a config is checked
CONFIG = Section({**TEST_COUNT, "kinds": KIND_LIST, "sources": ListOf(KIND, unique=True, min_items=0),
                  "test_counts": TEST_COUNTS, "eps": Value("number", minimum=1e-9, maximum=1),
                  "version": Value("str", choices=lambda: sorted(VERSIONS)), "fresh_draws": POSITIVE_INT,
                  "defences": ListOf(Value("str", nullable=True), unique=True), "reference": ATTACK},
                 extra=_reference_at_the_protocols_radius)

Target = Tuple[str, Optional[str]]  # (kind, defence)


def target_label(kind: str, defence: Optional[str]) -> str:
    """``SNN-BP``, or ``SNN-BP (AT)`` under defence ``AT``."""
    return LABELS[kind] + ("" if defence is None else f" ({defence})")


def _folder(kind: str, defence: Optional[str]) -> str:
    return kind if defence is None else f"{kind}-{defence}"


def _sources(ctx: StudyContext, kind: str, defence: Optional[str]) -> Dict[str, Tuple[str, str, Optional[str]]]:
    """name -> (kind, role, defence) of the transfer sources of a target."""
    names = {} if kind == "ann" else {"ann-parent": ("ann", "main", defence)}
    names.update({f"{source}-source": (source, "source", None)
                  for source in ctx.section.get("sources", DEFAULTS["sources"])})
    return names


def sources_of(ctx: StudyContext, kind: str, defence: Optional[str] = None) -> Dict[str, str]:
    """Transfer sources of a target, name -> zoo key: ``ann-parent`` (the ANN an SNN was converted from, under the
    same defence) and ``<kind>-source`` for each kind of the section's ``sources`` (trained with the source seed)."""
    return {name: ctx.zoo.key(*which) for name, which in _sources(ctx, kind, defence).items()}


def _training_seconds(ctx: StudyContext, kind: str, defence: Optional[str]) -> Optional[float]:
    """Wall time of the target's whole training chain (ANN, conversion, BPTT), as its checkpoints recorded it;
    None where a checkpoint predates the record or is not in the cache (a cached SNN-BP needs no parents)."""
    chain = {"ann": ["ann"], "snn_conv": ["ann", "snn_conv"], "snn_bp": ["ann", "snn_conv", "snn_bp"]}[kind]
    paths = [ctx.zoo.path(k, "main", defence) for k in chain]
    if not all(path.is_file() for path in paths):
        return None
    seconds = [checkpoints.read_header(path)["metadata"].get("training_seconds") for path in paths]
    return None if None in seconds else round(sum(seconds), 1)


def run(ctx: StudyContext) -> str:
    section, zoo = ctx.section, ctx.zoo
    settings = {key: section.get(key, default) for key, default in DEFAULTS.items() if key != "sources"}
    targets: List[Target] = [(kind, defence) for defence in section.get("defences", [None])
                             for kind in section.get("kinds", KINDS)]

    def named(kind: str, defence: Optional[str]) -> Dict[str, Any]:
        """Cell settings naming a target (no ``defence`` key for a plain one)."""
        return {"kind": kind, "model": zoo.key(kind, defence=defence),
                **({} if defence is None else {"defence": defence})}

    cells = [ctx.cell(**named(kind, defence), sources=sources_of(ctx, kind, defence), count=ctx.count_of(kind),
                      battery=battery_digest(settings["version"]), **settings) for kind, defence in targets]

    def compute(cell: Mapping[str, Any]) -> Dict[str, Any]:
        kind, defence = cell["kind"], cell.get("defence")
        images, labels = (t[:cell["count"]] for t in ctx.data)
        sources = {name: zoo.get(*which) for name, which in _sources(ctx, kind, defence).items()}
        model = zoo.get(kind, defence=defence)
        seconds = _training_seconds(ctx, kind, defence)  # before the hours of attacks, not after
        report = robust_accuracy(model, (images, labels), cell["eps"],
                                 version=cell["version"], sources=sources, seed=ctx.config["seed"],
                                 scoring_seeds=ctx.eval_seeds, fresh_draws=cell["fresh_draws"],
                                 batch_size=ctx.batch_size, out=ctx.out / _folder(kind, defence),
                                 progress=ctx.progress, device=zoo.device)
        results = {"robust": report.result.to_dict()}
        if report.every_draw is not None:
            results["every_draw"] = report.every_draw.to_dict()
        return {"report": report.to_dict(), "results": results, "training_seconds": seconds}

    records = ctx.run(cells, compute)
    reference = section.get("reference")
    references: Dict[Target, EvaluationResult] = {}
    if reference is not None:
        def attack(cell: Mapping[str, Any]) -> Dict[str, Any]:
            model = zoo.get(cell["kind"], defence=cell.get("defence"))
            return ctx.evaluate({"target": model}, cell["attack"], count=cell["count"])

        for record in ctx.run([ctx.cell(**named(kind, defence), attack=reference, count=ctx.count_of(kind))
                               for kind, defence in targets], attack):
            references[(record["settings"]["kind"], record["settings"].get("defence"))] = \
                results_of(record)["target"]

    rows, robust, every, checks, series = [], {}, {}, [], {}
    for record in records:
        target = (record["settings"]["kind"], record["settings"].get("defence"))
        label, report = target_label(*target), record["result"]["report"]
        results = {name: EvaluationResult.from_dict(data) for name, data in record["result"]["results"].items()}
        robust[target] = results["robust"]
        every[target] = results.get("every_draw", results["robust"])  # a deterministic model: every draw is the same
        certificate = report["certificate"]
        extra = {} if reference is None else interval_columns(references[target], "adversarial", "reference")
        extra["training_seconds"] = record["result"].get("training_seconds")
        rows.append({"model": label, **interval_columns(robust[target], "clean", "clean"), **extra,
                     **interval_columns(robust[target], "adversarial", "robust"),
                     **interval_columns(every[target], "adversarial", "robust_every_draw"),
                     "verdict": report["verdict"], "certificate_stage": certificate.get("stage"),
                     "certificate_removed": None if certificate.get("removed") is None
                     else 100 * certificate["removed"],
                     "certificate_p": certificate.get("comparison", {}).get("p_value"),
                     "cost": report["total_cost"], "seconds": report["seconds"],
                     "n_images": robust[target].n, "n_seeds": len(robust[target].scoring_seeds),
                     "sources": ", ".join(record["settings"]["sources"]), "cell": cell_key(record["settings"])})
        checks += [Check(c["name"], c["passed"], f"{label}: {c['detail']}", c.get("values", {}))
                   for c in report["checks"]]
        series[label] = [(r["cumulative_cost"], 100 * r["accuracy"], 100 * r["low"], 100 * r["high"])
                         for r in report["stages"]]

    def paired(what: str, a: Target, b: Target, outcome, family: str, kinds=("adversarial", "adversarial")):
        x, y = on_common_images(outcome[a], outcome[b])
        return comparison_row(what, target_label(*a), target_label(*b), compare(x, y, *kinds), family)

    comparisons = []
    for kind, defence in targets:
        ann = ("ann", defence)
        if kind != "ann" and ann in robust:
            comparisons += [paired("robust accuracy", (kind, defence), ann, robust,
                                   "protocol: robust accuracy, SNN vs ANN"),
                            paired("robust on every draw", (kind, defence), ann, every,
                                   "protocol: robust on every draw, SNN vs ANN"),
                            paired("clean accuracy", (kind, defence), ann, robust,
                                   "protocol: clean accuracy, SNN vs ANN", ("clean", "clean"))]
        if defence is not None and (kind, None) in robust:
            comparisons.append(paired("robust accuracy", (kind, defence), (kind, None), robust,
                                      "protocol: robust accuracy, defended vs plain"))
    for target in references:  # the robustness a defence paper's attack reports, above the protocol's
        x, y = on_common_images(references[target], robust[target])
        comparisons.append(comparison_row(target_label(*target), attack_label(reference), "protocol", compare(x, y),
                                          "gap: reference attack - protocol"))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    markdown = ctx.write(rows, columns) + record_checks(ctx, checks)
    markdown += record_comparisons(ctx, family_verdicts(comparisons))
    plots.plot_lines(series, ctx.out / "cascade.png", xlabel="cumulative cost (forward-backward passes per image, "
                     f"a forward alone {FORWARD_COST})", ylabel="robust accuracy (%)", xscale="symlog",
                     title=f"protocol {settings['version']}: robust accuracy over the cascade", ylim=(0, 100),
                     eps=settings["eps"], note=ctx.note())
    return markdown
