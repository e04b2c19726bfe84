"""Study ``robustness`` (the paper's main table): ANN, SNN-conv and SNN-BP under clean, FGSM and PGD, whitebox and
blackbox (every source kind, trained separately with another seed, against every target: same-kind and cross pairs).

:func:`table_study` is shared with the ``strong`` study (the same table under adaptive attacks). Besides the table
(accuracy with its 95 % interval over images and Poisson seeds, and each target's per-sample worst case over every
attack on it, :data:`WORST`) it writes paired comparisons on the same images
(each SNN against the ANN, each attack against the section's first) and self-checks whose verdicts come from paired
tests (whitebox not weaker than transfer; an attack of at least the first one's effort not weaker than it;
gradient-free and minimal-norm attacks not stronger / not more robust than it; more steps or restarts do not help).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .. import plots
from ..attack_specs import ATTACK_LIST, ENTRIES, attack_label, check_protocols
from ..cells import cell_key, markdown_table
from ..distributed import dist_info
from ..evaluation import (Check, CleanMemo, EvaluationResult, check_gradient_free, check_minimal_norm,
                          check_more_effort, check_not_weaker, check_whitebox_vs_transfer, compare)
from ..schema import Section
from ..zoo import KINDS, LABELS
from .common import (KIND_LIST, NO_GRADIENT, TEST_COUNT, TEST_COUNTS, StudyContext, comparison_row, evaluate_condition, family_verdicts, interval_columns,
                     record_checks, record_comparisons, results_of)

__all__ = ["CLEAN_FAMILY", "CONFIG", "ROW_COLUMNS", "WORST", "add_worst_cases", "attack_checks", "comparison_family",
           "condition_of", "evaluate_models", "is_derived", "on_common_images", "run", "summarise", "table_study"]

#: the study's config section (``studies.robustness``)
CONFIG = Section({**TEST_COUNT, "attacks": ATTACK_LIST, "kinds": KIND_LIST, "sources": KIND_LIST,
                  "test_counts": TEST_COUNTS}, required=("attacks",))


def _pgd_effort(spec: Mapping[str, Any]) -> Tuple[Any, ...]:
    """What a PGD entry is apart from its effort (steps x restarts): same-kind entries differ only in effort."""
    return tuple(spec.get(k) for k in ("eps", "grad_mode", "eot", "surrogate"))


def attack_checks(spec: Mapping[str, Any], reference: Mapping[str, Any], result: EvaluationResult,
                  baseline: EvaluationResult, target: str) -> List[Check]:
    """The self-checks an attack entry ``spec`` owes against the section's first (``reference``) on ``target``."""
    label, ref_label = attack_label(spec), attack_label(reference)
    checks = []
    owed = ENTRIES[spec["name"]].owes(spec)
    if owed == "gradient_free":
        checks.append(check_gradient_free(baseline, result))
    elif owed == "minimal_norm":
        checks.append(check_minimal_norm(baseline, result, label))
    elif owed == "not_weaker" or spec.get("eot") or (owed == "iterative" and reference["name"] == "fgsm"):
        checks.append(check_not_weaker(result, baseline, f"not_weaker_than_{ref_label}[{label}]",
                                       f"{label} vs {ref_label}"))
    if spec["name"] == reference["name"] == "pgd" and _pgd_effort(spec) == _pgd_effort(reference):
        effort = lambda s: s.get("steps", 10) * s.get("restarts", 1)  # noqa: E731
        if effort(spec) > effort(reference):
            checks.append(check_more_effort(baseline, result, "steps_or_restarts"))
    return [Check(c.name, c.passed, f"{target}: {c.detail}", c.values) for c in checks]


#: one measured condition: (target label, condition) with condition ``clean``, ``<attack> WB``,
#: ``<attack> BB from <source label>`` or :data:`WORST`
Key = Tuple[str, str]
#: the condition of a target's per-sample worst case over every attack on it, whitebox and blackbox
WORST = "worst of all attacks"


def is_derived(spec: Mapping[str, Any]) -> bool:
    """Whether an attack entry is a row computed from other rows (``worst_of``), not crafted."""
    return spec["name"] == "worst_of"


def add_worst_cases(results: Dict[Key, EvaluationResult], no_gradient: List[Key],
                    attacks: Sequence[Mapping[str, Any]]) -> None:
    """Add the derived rows of a table to ``results``: for each ``worst_of`` entry of ``attacks`` and each target
    with whitebox results of every entry it names, their per-sample worst case
    (:meth:`EvaluationResult.worst_case`; a ``no_gradient`` member makes it ``no_gradient`` too); then each
    target's :data:`WORST` condition over its crafted conditions (an image counts as robust under a Poisson seed
    only if no attack of the table fools it) when it has two or more."""
    by_label = {attack_label(spec): spec for spec in attacks if not is_derived(spec)}
    targets = list(dict.fromkeys(t for t, _ in [*results, *no_gradient]))
    for spec in filter(is_derived, attacks):
        members = [condition_of(by_label[label]) for label in spec["of"]]
        for target in targets:
            if any((target, c) in no_gradient for c in members):
                no_gradient.append((target, condition_of(spec)))
            elif all((target, c) in results for c in members):
                results[(target, condition_of(spec))] = EvaluationResult.worst_case(
                    [results[(target, c)] for c in members], members)
    derived = {condition_of(spec) for spec in attacks if is_derived(spec)}
    for target in targets:
        attacked = [(c, r) for (t, c), r in results.items() if t == target and c not in ("clean", WORST, *derived)]
        if len(attacked) > 1:
            results[(target, WORST)] = EvaluationResult.worst_case([r for _, r in attacked], [c for c, _ in attacked])


def condition_of(spec: Optional[Mapping[str, Any]], source: Optional[str] = None) -> str:
    """The column name of an attack entry: ``clean``, ``<label> WB`` (whitebox) or ``<label> BB from <source>``."""
    if spec is None or spec["name"] == "clean":
        return "clean"
    return f"{attack_label(spec)} " + ("WB" if source is None else f"BB from {source}")


def summarise(results: Mapping[Key, EvaluationResult], no_gradient: Sequence[Key], targets: Sequence[str],
              attacks: Sequence[Mapping[str, Any]], pairs: Sequence[Tuple[str, str]],
              cells: Optional[Mapping[Key, str]] = None) -> Tuple[List[Dict[str, Any]], str, List[Check], List[Dict[str, Any]]]:
    """The long rows (numeric, with intervals), the wide markdown table (target x condition), the self-checks and
    the paired comparisons of a robustness table.

    :param results: the evaluation of every measured condition (the clean one: its clean outcomes).
    :param no_gradient: conditions whose attack found no input gradient (shown as such, never as a number).
    :param targets: target labels in table order; ``pairs``: ``(a, b)`` target labels compared in every condition.
    :param cells: the cell key of each condition (for the rows).
    """
    conditions = list(dict.fromkeys([c for _, c in results] + [c for _, c in no_gradient]))
    rows, wide = [], {t: {"model": t} for t in targets}
    for condition in conditions:
        for target in targets:
            key = (target, condition)
            if key in results:
                result = results[key]
                columns = interval_columns(result, "clean" if condition == "clean" else "adversarial", "accuracy")
                note, n, seeds = "", result.n, len(result.scoring_seeds)
            elif key in no_gradient:
                columns = {"accuracy": None, "accuracy_low": None, "accuracy_high": None}
                note, n, seeds = NO_GRADIENT, None, None
            else:
                continue
            mode = ("-" if condition == "clean" else "every attack" if condition == WORST
                    else "whitebox" if condition.endswith(" WB") else "blackbox")
            attack = "-" if condition == "clean" else condition.split(" WB")[0].split(" BB from ")[0]
            rows.append({"target": target, "condition": condition, "attack": attack, "mode": mode,
                         "source": condition.split(" BB from ")[1] + "'" if mode == "blackbox" else "", **columns,
                         "note": note, "n_images": n, "n_seeds": seeds, "cell": (cells or {}).get(key, "")})
            wide[target].update({condition: columns["accuracy"] if note == "" else NO_GRADIENT,
                                 f"{condition}_low": columns["accuracy_low"], f"{condition}_high": columns["accuracy_high"]})
    markdown = markdown_table(list(wide.values()),
                              ["model"] + [f"{c}{end}" for c in conditions for end in ("", "_low", "_high")])
    return rows, markdown, _checks(results, targets, attacks), _comparisons(results, targets, conditions, attacks, pairs)


ROW_COLUMNS = ["target", "condition", "attack", "mode", "source", "accuracy", "accuracy_low", "accuracy_high", "note",
               "n_images", "n_seeds", "cell"]


def table_study(ctx: StudyContext, blackbox: bool) -> str:
    """Whitebox (and blackbox) accuracy of every target kind under every attack of the study's section."""
    zoo, section = ctx.zoo, ctx.section
    kinds = section.get("kinds", list(KINDS))
    attacks = section["attacks"]
    sources = section.get("sources", list(KINDS)) if blackbox else []

    def cell(source: Optional[Dict[str, Any]], attack: Mapping[str, Any], targets: Sequence[str]) -> Dict[str, Any]:
        fewer = {k: n for k in targets if (n := ctx.count_of(k))}  # targets on a prefix of the images
        return ctx.cell(source=source, attack=attack, targets={k: zoo.key(k) for k in targets},
                        **({"test_counts": fewer} if fewer else {}))

    cells = [cell(None, {"name": "clean"}, kinds)]
    for spec in (a for a in attacks if not is_derived(a)):
        for kind in kinds:
            if not (spec.get("snn_only") and kind == "ann"):
                cells.append(cell({"kind": kind, "role": "main", "model": zoo.key(kind)}, spec, [kind]))
        for kind in sources:
            if not (spec.get("snn_only") and kind == "ann"):
                cells.append(cell({"kind": kind, "role": "source", "model": zoo.key(kind, "source")}, spec, kinds))

    def compute(settings: Mapping[str, Any]) -> Dict[str, Any]:
        src = settings["source"]
        # clean, or whitebox on the one target: no source; targets on fewer images: a second, shorter evaluation
        source = None if src is None or src["role"] == "main" else zoo.get(src["kind"], src["role"])
        by_count: Dict[Optional[int], List[str]] = {}
        for kind in settings["targets"]:
            by_count.setdefault(settings.get("test_counts", {}).get(kind), []).append(kind)
        cell_result: Dict[str, Any] = {"results": {}}
        for count, group in by_count.items():
            part = ctx.evaluate({k: zoo.get(k) for k in group}, settings["attack"], source, count)
            cell_result["results"].update(part.pop("results"))
            cell_result.update(part)
        return cell_result

    results, no_gradient, cell_of = {}, [], {}
    for record in ctx.run(cells, compute):
        src = record["settings"]["source"]
        source = LABELS[src["kind"]] if src and src["role"] == "source" else None
        condition = condition_of(record["settings"]["attack"] if src else None, source)
        for target, result in results_of(record).items():
            key = (LABELS[target], condition)
            cell_of[key] = cell_key(record["settings"])
            if "no_gradient" in record["result"]:
                no_gradient.append(key)
            else:
                results[key] = result
    add_worst_cases(results, no_gradient, attacks)
    pairs = [(LABELS[a], LABELS[b]) for a, b in (("snn_conv", "ann"), ("snn_bp", "ann"), ("snn_bp", "snn_conv"))
             if a in kinds and b in kinds]
    rows, wide, checks, comparisons = summarise(results, no_gradient, [LABELS[k] for k in kinds], attacks, pairs,
                                                cell_of)
    markdown = ctx.write(rows, ROW_COLUMNS, markdown=wide) + record_checks(ctx, checks)
    markdown += record_comparisons(ctx, comparisons)
    if dist_info().is_main:
        conditions = list(dict.fromkeys(r["condition"] for r in rows))
        bars = {LABELS[k]: [_bar(rows, LABELS[k], c) for c in conditions] for k in kinds}
        plots.plot_bars(conditions, bars, ctx.out / "accuracy.png", ylabel="accuracy (%)",
                        title=f"{ctx.name}: accuracy per model and attack (WB whitebox, BB blackbox from a separately "
                              "trained source)", note=ctx.note())
    return markdown


def _checks(results: Mapping[Key, EvaluationResult], targets: Sequence[str], attacks) -> List[Check]:
    """Per target: each attack against the first (:func:`attack_checks`); whitebox against every transfer."""
    checks = []
    reference = attacks[0]
    for target in targets:
        baseline = results.get((target, condition_of(reference)))
        for spec in attacks:
            whitebox = results.get((target, condition_of(spec)))
            if whitebox is None:
                continue
            if spec is not reference and baseline is not None and not is_derived(spec):  # derived: never weaker
                checks += attack_checks(spec, reference, whitebox, baseline, target)
            for (other, condition), transfer in results.items():
                prefix = f"{attack_label(spec)} BB from "
                if other == target and condition.startswith(prefix):
                    check = check_whitebox_vs_transfer(whitebox, transfer, source=condition[len(prefix):] + "'")
                    checks.append(Check(check.name, check.passed, f"{target}, {attack_label(spec)}: {check.detail}",
                                        check.values))
    return checks


#: the verdict family of the comparisons between two targets in the clean condition (one claim: clean accuracy)
CLEAN_FAMILY = "clean: every pair of models"


def comparison_family(a: str, b: str, condition: str, attack_reference: Optional[str] = None) -> str:
    """The verdict family of a table's comparison (the comparisons one claim is drawn from, Holm-adjusted
    together): ``a - b`` (two targets) in every attacked condition (worst cases included), or :data:`CLEAN_FAMILY`;
    with ``attack_reference``, every attack against it on target ``a``."""
    if attack_reference is not None:
        return f"{a}: each attack - {attack_reference}"
    return CLEAN_FAMILY if condition == "clean" else f"{a} - {b}: every attack"


def _comparisons(results, targets, conditions, attacks, pairs) -> List[Dict[str, Any]]:
    """Each pair of targets in every condition; each attack against the first, per target (whitebox); verdicts
    by family (:func:`comparison_family`, :func:`~snn_adv.studies.common.family_verdicts`)."""
    rows = []
    for condition in conditions:
        kind_of = "clean" if condition == "clean" else "adversarial"
        for a, b in pairs:
            if (a, condition) in results and (b, condition) in results:
                comparison = compare(*on_common_images(results[(a, condition)], results[(b, condition)]),
                                     kind_of, kind_of)
                rows.append(comparison_row(condition, a, b, comparison, comparison_family(a, b, condition)))
    reference = condition_of(attacks[0])
    for target in targets:
        for spec in attacks[1:]:
            condition = condition_of(spec)
            if (target, condition) in results and (target, reference) in results:
                comparison = compare(results[(target, condition)], results[(target, reference)])
                rows.append(comparison_row(target, condition, reference, comparison,
                                           comparison_family(target, reference, condition, reference)))
    return family_verdicts(rows)


def on_common_images(a: EvaluationResult, b: EvaluationResult) -> Tuple[EvaluationResult, EvaluationResult]:
    """``a`` and ``b`` on the images both saw (a target evaluated on a prefix of the images: ``test_counts``)."""
    if np.array_equal(a.index, b.index):
        return a, b
    common = np.intersect1d(a.index, b.index)
    return a.restricted(common), b.restricted(common)


def _bar(rows, target: str, condition: str) -> Tuple[float, ...]:
    """(accuracy, interval low, interval high) of ``target`` in ``condition``; ``(nan,)``, an empty slot, when not
    measured (an SNN-only attack on the ANN, or no input gradient)."""
    for row in rows:
        if row["target"] == target and row["condition"] == condition and row["accuracy"] is not None:
            return row["accuracy"], row["accuracy_low"], row["accuracy_high"]
    return (float("nan"),)


def evaluate_models(targets: Mapping[str, nn.Module], sources: Mapping[str, nn.Module], images: torch.Tensor,
                    labels: torch.Tensor, attacks: Sequence[Mapping[str, Any]], *, seed: int = 0,
                    scoring_seeds: Sequence[int] = (0,), batch_size: int = 128,
                    progress: bool = True) -> Tuple[List[Dict[str, Any]], str, List[Check], List[Dict[str, Any]]]:
    """The robustness table of any classifiers (``snn-adv evaluate``): clean, every attack entry whitebox on each
    target and blackbox from each source onto every target; returns :func:`summarise`'s rows, markdown table,
    self-checks and comparisons (each target against the first)."""
    from ..neurons import spiking_neurons

    check_protocols(attacks, targets, "argument 'attacks'")
    run = functools.partial(evaluate_condition, images=images, labels=labels, seed=seed, scoring_seeds=scoring_seeds,
                            batch_size=batch_size, progress=progress, clean_memo=CleanMemo())
    results: Dict[Key, EvaluationResult] = {}
    no_gradient: List[Key] = []

    def record(condition: str, outcome: Tuple[Dict[str, EvaluationResult], Optional[str]]) -> None:
        for name, result in outcome[0].items():
            if outcome[1] is None:
                results[(name, condition)] = result
            else:
                no_gradient.append((name, condition))

    record("clean", run(targets, attack={"name": "clean"}))
    for spec in (a for a in attacks if not is_derived(a)):
        for name, model in targets.items():
            if not (spec.get("snn_only") and not spiking_neurons(model)):
                record(condition_of(spec), run({name: model}, attack=spec))
        for source_name, source in sources.items():
            record(condition_of(spec, source_name), run(targets, attack=spec, source=source))
    add_worst_cases(results, no_gradient, attacks)
    names = list(targets)
    return summarise(results, no_gradient, names, attacks, [(name, names[0]) for name in names[1:]])


def run(ctx: StudyContext) -> str:
    return table_study(ctx, blackbox=True)
