"""What every study shares: its context (config section, model zoo, test data, cell store), tables and checks.

Every evaluation is a cell (:mod:`snn_adv.cells`): its adversarial examples are crafted per batch with seeds
derived from the config seed and the cell, and each target is scored under several Poisson seeds
(``eval_seeds``). Batches are sharded over ``torchrun`` ranks (:mod:`snn_adv.distributed`).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..attack_specs import build_attack
from ..attacks import NoInputGradientError
from ..cells import CellStore, run_cells, write_table
from ..data import dataset_info
from ..data.fingerprint import dataset_fingerprint
from ..distributed import dist_info, sharded_evaluate
from ..evaluation import Check, CleanMemo, EvaluationResult, warn_failures
from ..io import PathLike, atomic_write, atomic_write_json, provenance
from ..schema import COUNT, ListOf, Section, Value
from ..stats import Comparison, holm
from ..zoo import KINDS, LABELS, ModelZoo

#: the level of every interval and paired test the studies report
LEVEL = 0.95

__all__ = ["KIND", "KIND_LIST", "LEVELS", "TEST_COUNT", "TEST_COUNTS", "StudyContext", "check_evaluation_data", "evaluate_condition", "family_verdicts", "interval_columns",
           "public_config", "record_comparisons", "record_checks", "results_of"]

# the pieces of the studies' config sections (each study module declares its own, ``CONFIG``)
#: a model kind of the zoo
KIND = Value("str", choices=KINDS)
KIND_LIST = ListOf(KIND, unique=True)
#: an input quantisation level count (None: no quantisation)
LEVELS = Value("int", minimum=2, nullable=True)
#: a study's own number of test images (overrides ``data.test_count``)
TEST_COUNT = {"test_count": COUNT}
#: fewer images for some target kinds of a table study (e.g. SNN-conv at a large T): a prefix of its test images
TEST_COUNTS = Section({kind: Value("int", minimum=1) for kind in KINDS})


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def check_evaluation_data(images: torch.Tensor, labels: torch.Tensor, dataset: str) -> None:
    """Refuse test data a result must not be computed on: images not ``[N, C, H, W]`` of the dataset's shape, not
    finite or outside [0, 1]; labels not integers in ``[0, num_classes)`` or not one per image."""
    info = dataset_info(dataset)
    shape = (info.in_channels, *info.input_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"evaluation data of {dataset!r}: images have shape {tuple(images.shape)}, expected "
                         f"[N, {', '.join(map(str, shape))}]")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise ValueError(f"evaluation data of {dataset!r}: images must be finite floats, got dtype {images.dtype}")
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"evaluation data of {dataset!r}: image values span [{low!r}, {high!r}], must lie in [0, 1]")
    if labels.shape != (len(images),) or labels.is_floating_point():
        raise ValueError(f"evaluation data of {dataset!r}: labels must be {len(images)} integers, got shape "
                         f"{tuple(labels.shape)} and dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= info.num_classes)
    if bad.any():
        raise ValueError(f"evaluation data of {dataset!r}: {int(bad.sum())} label(s) outside [0, {info.num_classes}), "
                         f"e.g. {labels[bad][0].item()} at position {int(bad.nonzero()[0])}")


def public_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config as results record it: without ``data.root`` (a path of the machine; the data enters results as
    its content fingerprint instead)."""
    return {**config, "data": {k: v for k, v in config["data"].items() if k != "root"}}


def evaluate_condition(targets: Mapping[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                       attack: Mapping[str, Any], source: Optional[nn.Module] = None, *, seed: int,
                       scoring_seeds: Sequence[int], batch_size: int, progress: bool = True,
                       clean_memo: Optional[CleanMemo] = None) -> Tuple[Dict[str, EvaluationResult], Optional[str]]:
    """``(results per target, None)`` of ``targets`` under config entry ``attack`` crafted on ``source`` (None:
    whitebox on the one target; a clean entry: each target alone), sharded over ranks; when the crafting model
    gives no input gradient (e.g. a network silent at a small T), ``(clean results, the reason)``: no adversarial
    number exists for it. ``clean_memo``: clean outcomes shared between conditions (:class:`~snn_adv.evaluation.CleanMemo`)."""
    run = functools.partial(sharded_evaluate, images=images, labels=labels, seed=seed, scoring_seeds=scoring_seeds,
                            batch_size=batch_size, progress=progress, clean_memo=clean_memo)
    clean = lambda: {name: run({name: model})[name] for name, model in targets.items()}  # noqa: E731
    if attack["name"] == "clean":
        return clean(), None
    try:
        return run(targets, attack=lambda model: build_attack(attack, model), source=source), None
    except NoInputGradientError as error:
        return clean(), str(error)


# --------------------------------------------------------------------------------------------------------------
# Study context
# --------------------------------------------------------------------------------------------------------------
class StudyContext:
    """What a study needs: its config section, the model zoo, the test images, its cell store and output folder."""

    def __init__(self, name: str, config: Mapping[str, Any], out: PathLike, zoo: Optional[ModelZoo] = None,
                 progress: bool = True, recompute: bool = False):
        self.name = name
        self.config = config
        self.section = config["studies"][name]
        self.out = Path(out) / name
        self.progress = progress
        self.zoo = zoo or ModelZoo(config, Path(out) / "models", progress=progress)
        self.store = CellStore(self.out, recompute=recompute)
        self.eval_seeds = list(config["eval_seeds"])
        self.batch_size = int(config["eval_batch_size"])
        #: each target's clean outcomes, paid in its first cell and reused by the others (identical numbers)
        self.clean_memo = CleanMemo()
        self._data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def data(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The study's test images and labels: a stratified subset of ``test_count`` examples (validated)."""
        if self._data is None:
            from ..data import load_tensors

            data = self.config["data"]
            images, labels = load_tensors(data["dataset"], "test", count=self.test_count, root=data.get("root"),
                                          seed=data.get("subset_seed", 0))
            check_evaluation_data(images, labels, data["dataset"])
            self._data = images, labels
        return self._data

    @property
    def test_count(self) -> Optional[int]:
        return self.section.get("test_count", self.config["data"].get("test_count"))

    def count_of(self, kind: str) -> Optional[int]:
        """The images a target of ``kind`` is evaluated on when the section's ``test_counts`` gives it fewer than
        the study's (e.g. SNN-conv at a large T): the first ``count`` of the study's images, so that a comparison
        pairs the images both targets saw; None: all of them."""
        count = self.section.get("test_counts", {}).get(kind)
        return None if count is None or (self.test_count is not None and count >= self.test_count) else count

    def data_settings(self) -> Dict[str, Any]:
        """What of the test data can change a number: dataset, content fingerprint, subset size and seed."""
        data = self.config["data"]
        return {"dataset": data["dataset"], "fingerprint": dataset_fingerprint(data["dataset"], data.get("root")),
                "test_count": self.test_count, "subset_seed": data.get("subset_seed", 0)}

    def cell(self, **settings: Any) -> Dict[str, Any]:
        """Cell settings: the given ones plus everything else that changes results (config seed, data, Poisson
        seeds, batch size)."""
        return {"study": self.name, "seed": self.config["seed"], "data": self.data_settings(),
                "eval_seeds": self.eval_seeds, "batch_size": self.batch_size, **settings}

    def run(self, cells: Sequence[Mapping[str, Any]], compute: Callable[[Mapping[str, Any]], Mapping[str, Any]]):
        """Validate the test data, then compute the cells not yet stored (:func:`snn_adv.cells.run_cells`)."""
        self.data  # noqa: B018  (loads and validates before any cell is computed)
        return run_cells(cells, compute, self.store, seed=self.config["seed"], desc=self.name, progress=self.progress)

    def evaluate(self, targets: Mapping[str, nn.Module], attack: Mapping[str, Any],
                 source: Optional[nn.Module] = None, count: Optional[int] = None) -> Dict[str, Any]:
        """A cell's result: :func:`snn_adv.evaluation.evaluate` of ``targets`` under the attack of config entry
        ``attack`` crafted on ``source`` (None: whitebox on the one target; a clean entry: each target alone), as
        ``{"results": {target: EvaluationResult.to_dict()}}`` with every per-sample outcome. When the crafting model
        gives no input gradient (:class:`~snn_adv.attacks.NoInputGradientError`, e.g. a network silent at a small T)
        the cell holds the clean results and ``"no_gradient"``: the reason, and no adversarial accuracy. ``count``:
        only the first ``count`` test images (:meth:`count_of`).

        Every cell of a config uses the engine seed ``config['seed']``: the crafting and scoring streams then depend
        only on the images, so each target is scored on the same Poisson draws in every cell (common random
        numbers for the paired tests between cells).
        """
        images, labels = (t[:count] for t in self.data)
        results, no_gradient = evaluate_condition(targets, images, labels, attack, source, seed=self.config["seed"],
                                                  scoring_seeds=self.eval_seeds, batch_size=self.batch_size,
                                                  progress=self.progress, clean_memo=self.clean_memo)
        cell = {"results": {name: result.to_dict() for name, result in results.items()}}
        return cell if no_gradient is None else {**cell, "no_gradient": no_gradient}

    def write(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], stem: str = "table",
              markdown: Optional[str] = None) -> str:
        """Write the table (markdown, or ``markdown`` as given; CSV) and ``<stem>.json`` with every row, the config
        and provenance."""
        if not dist_info().is_main:
            return ""
        markdown = write_table(rows, columns, self.out / stem, markdown)
        atomic_write_json(self.out / f"{stem}.json", {"study": self.name, "rows": list(rows),
                                                     "config": public_config(self.config),
                                                     "provenance": provenance(seed=self.config["seed"])})
        return markdown

    def note(self) -> str:
        """The measurement conditions, as the second line of a plot's title."""
        data = self.data_settings()
        fewer = "".join(f" ({LABELS[k]}: {n})" for k in KINDS if (n := self.count_of(k)))
        return (f"{data['dataset']}, {data['test_count']} test images{fewer} x {len(self.eval_seeds)} Poisson seeds; "
                f"error bars: 95 % intervals; preset '{self.config.get('preset', '?')}'")


def results_of(record: Mapping[str, Any]) -> Dict[str, EvaluationResult]:
    """The per-target :class:`~snn_adv.evaluation.EvaluationResult` of a cell record written by
    :meth:`StudyContext.evaluate` (clean-only results when the attack found no input gradient)."""
    return {name: EvaluationResult.from_dict(data) for name, data in record["result"]["results"].items()}


#: what tables say where an attack found no input gradient (the adversarial accuracy is undefined)
NO_GRADIENT = "no input gradient"


def adversarial_columns(record: Mapping[str, Any], result: EvaluationResult, column: str) -> Dict[str, Any]:
    """:func:`interval_columns` of the adversarial accuracy, or None and a note when the cell found no gradient."""
    if "no_gradient" in record["result"]:
        return {column: None, f"{column}_low": None, f"{column}_high": None, "note": NO_GRADIENT}
    return {**interval_columns(result, "adversarial", column), "note": ""}


def interval_columns(result: EvaluationResult, kind: str, column: str, level: float = LEVEL) -> Dict[str, float]:
    """``{column: accuracy, column_low: low, column_high: high}`` in percent (the ``level`` interval over images and
    seeds); :func:`snn_adv.cells.markdown_table` shows them as ``value [low, high]``."""
    low, high = result.confidence_interval(kind, level)
    return {column: 100 * result.accuracy(kind), f"{column}_low": 100 * low, f"{column}_high": 100 * high}


def comparison_row(what: str, a: str, b: str, comparison: Comparison, family: str) -> Dict[str, Any]:
    """One row of ``comparisons.*``: the paired difference ``a - b`` in points with its interval (the inversion of
    the test), the p-value and method, and the verdict ``family`` the comparison belongs to (the comparisons one
    claim is drawn from; :func:`family_verdicts` adds the Holm-adjusted p-value and the verdict)."""
    points = lambda value: round(100 * value, 9)  # noqa: E731 (a zero difference of thirds shows as 0, not 7e-17)
    return {"comparison": what, "a": a, "b": b, "difference": points(comparison.difference),
            "difference_low": points(comparison.low), "difference_high": points(comparison.high),
            "p_value": comparison.p_value, "family": family, "method": comparison.method, "n_images": comparison.n}


def family_verdicts(rows: Sequence[Mapping[str, Any]], words: Optional[Sequence[Tuple[str, str]]] = None,
                    level: float = LEVEL) -> List[Dict[str, Any]]:
    """``rows`` (each with ``difference``, ``p_value`` and ``family``) with ``p_holm``, the Holm-adjusted p-value
    within the row's family (:func:`snn_adv.stats.holm` over the rows of that family that have a p-value), and
    ``verdict``: ``words[i]`` ``(positive, negative)`` by the sign of the difference where ``p_holm < 1 - level``,
    else ``inconclusive`` (default words: ``"<a> higher"``, ``"<b> higher"``). A row without a p-value (nothing to
    test) keeps its verdict."""
    words = [(f"{r['a']} higher", f"{r['b']} higher") for r in rows] if words is None else words
    adjusted: Dict[int, float] = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        members = [i for i, r in enumerate(rows) if r["family"] == family and r["p_value"] is not None]
        adjusted.update(zip(members, holm([rows[i]["p_value"] for i in members]).tolist()))
    out = []
    for i, row in enumerate(rows):
        if i not in adjusted:
            out.append({**row, "p_holm": None})
            continue
        positive, negative = words[i]
        significant = adjusted[i] < 1.0 - level
        out.append({**row, "p_holm": adjusted[i], "verdict": "inconclusive" if not significant
                    else positive if row["difference"] > 0 else negative})
    return out


COMPARISON_COLUMNS = ["comparison", "a", "b", "difference", "difference_low", "difference_high", "p_value", "p_holm",
                      "verdict", "family", "method", "n_images"]


def record_comparisons(ctx: StudyContext, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write the study's paired comparisons (:func:`comparison_row` with :func:`family_verdicts`) to
    ``comparisons.md/.csv/.json``; return them as a markdown section."""
    if not rows:
        return ""
    markdown = ctx.write(rows, COMPARISON_COLUMNS, stem="comparisons")
    return (f"\nPaired comparisons on the same images (difference a - b in accuracy points, {LEVEL:.0%} interval: "
            f"the values the paired test does not reject; verdict at Holm-adjusted p < {1 - LEVEL:.2f} within the "
            "family):\n\n" + markdown)


def record_checks(ctx: StudyContext, checks: Sequence[Check]) -> str:
    """Write the study's self-checks to ``checks.json`` and ``checks.md``, warn about failures (possible gradient
    masking) and return them as a markdown section for the study's table. Verdicts come from paired tests."""
    if not checks or not dist_info().is_main:
        return ""
    warn_failures(checks)
    atomic_write_json(ctx.out / "checks.json", [c.to_dict() for c in checks])
    lines = [c.report_line() for c in checks]
    section = ("Self-checks (Carlini et al. 2019; a check fails when its one-sided paired test is significant at "
               f"p < {1 - LEVEL:.2f}):\n" + "\n".join(lines) + "\n")
    with atomic_write(ctx.out / "checks.md", "w") as handle:
        handle.write(section)
    return "\n" + section


# --------------------------------------------------------------------------------------------------------------
# Sweeps (timesteps, leak, eps)
# --------------------------------------------------------------------------------------------------------------
def trained_per_point(section: Mapping[str, Any], kind: str, **recipe: Any) -> Dict[str, Any]:
    """The recipe overrides of a sweep point's model: ``recipe`` (e.g. ``timesteps``, ``leak``) for an SNN-BP when
    the section's ``retrain`` is true (the default: a separate SNN-BP trained at each point), else none (the knob
    is changed on the one trained network)."""
    retrain = section.get("retrain", True)
    if not isinstance(retrain, bool):
        raise ValueError(f"config key 'retrain' = {retrain!r}: must be true (train an SNN-BP at each point) or false "
                         "(change the knob on one trained network)")
    return dict(recipe) if retrain and kind == "snn_bp" else {}


#: an axis of a sweep along which points are compared: settings -> (group, point label, verdict family); the points
#: of one group differ only along the axis, and each is compared with the group's first point (in grid order); the
#: family names the comparisons one claim is drawn from (Holm-adjusted together)
Axis = Callable[[Mapping[str, Any]], Tuple[Hashable, str, str]]


def plot_points(rows: Sequence[Mapping[str, Any]], y: str) -> Dict[str, List[Tuple[float, float, float, float]]]:
    """``{row["series"]: [(row["x"], value, interval low, interval high), ...]}`` for
    :func:`snn_adv.plots.plot_lines`."""
    series: Dict[str, List[Tuple[float, float, float, float]]] = {}
    for row in rows:
        if row[y] is not None:
            series.setdefault(row["series"], []).append((float(row["x"]), row[y], row[f"{y}_low"], row[f"{y}_high"]))
    return series


def sweep(ctx: StudyContext, grid: Sequence[Dict[str, Any]], xlabel: str, x_of: Callable[[Mapping], float],
          series_of: Callable[[Mapping], str], title: str, axes: Sequence[Axis] = (), xscale: str = "linear",
          xticks=None, x_is_eps: bool = False, x_point: Optional[Callable[[Mapping], str]] = None) -> str:
    """Run a grid of whitebox/blackbox cells ``{"kind", "knobs", "attack", "mode", ["train"]}``; tabulate
    (accuracies with intervals), compare along each of ``axes`` with paired tests, check (whitebox not weaker than
    transfer; with ``x_is_eps``, accuracy falls with eps) and plot them. ``train``: recipe overrides of the target
    model (:meth:`snn_adv.zoo.ModelZoo.get`); ``knobs``: changed on it at evaluation (:func:`snn_adv.zoo.apply_knobs`).
    ``x_point`` names a point's x (e.g. ``T=8``) in the comparisons along an axis that keeps x fixed."""
    from .. import plots
    from ..attack_specs import attack_label
    from ..cells import cell_key
    from ..evaluation import check_monotone_in_eps, check_whitebox_vs_transfer
    from ..evaluation import compare

    zoo = ctx.zoo
    source_kind = ctx.section.get("blackbox_source", "ann")
    per_point = any("train" in g for g in grid)  # a sweep that can train a model per point says how each was trained
    cells = [ctx.cell(kind=g["kind"], model=zoo.key(g["kind"], **g.get("train", {})), knobs=g.get("knobs", {}),
                      attack=g["attack"], mode=g["mode"],
                      source=zoo.key(source_kind, "source") if g["mode"] == "blackbox" else None,
                      **({"trained_at": g["train"]} if g.get("train") else {}))
             for g in grid]

    def compute(settings: Mapping[str, Any]) -> Dict[str, Any]:
        target = zoo.variant(settings["kind"], "main", train=settings.get("trained_at"), **settings["knobs"])
        # the blackbox source keeps its own settings: the perturbation is independent of the target's knobs
        source = zoo.get(source_kind, "source") if settings["mode"] == "blackbox" else None
        return ctx.evaluate({"target": target}, settings["attack"], source)

    records = ctx.run(cells, compute)
    rows, results = [], []
    for record in records:
        s, result = record["settings"], results_of(record)["target"]
        trained = {"trained": "at this point" if s.get("trained_at") else "once"} if per_point else {}
        rows.append({"model": LABELS[s["kind"]], **trained, **{k: v for k, v in s["knobs"].items() if k != "quantise"},
                     "attack": attack_label(s["attack"]), "eps": s["attack"].get("eps", 0.0), "mode": s["mode"],
                     "x": x_of(s), "series": series_of(s), **interval_columns(result, "clean", "clean"),
                     **adversarial_columns(record, result, "adversarial"), "n_images": result.n,
                     "n_seeds": len(result.scoring_seeds), "cell": cell_key(s)})
        results.append(None if "no_gradient" in record["result"] else result)
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in ("x", "series")]

    comparisons = []
    for axis in axes:
        first: Dict[Hashable, int] = {}
        for i, record in enumerate(records):
            group, label, family = axis(record["settings"])
            j = first.setdefault(group, i)
            if j != i and results[i] is not None and results[j] is not None:
                reference = axis(records[j]["settings"])[1]
                what = f"{series_of(record['settings'])} {rows[i]['mode']}"
                if x_point is not None and rows[i]["x"] == rows[j]["x"]:
                    what += f" at {x_point(record['settings'])}"
                comparisons.append(comparison_row(what, label, reference, compare(results[i], results[j]), family))
    checks = []
    source_label = LABELS[source_kind] + "'"
    for i, record in enumerate(records):
        s = record["settings"]
        for j, other in enumerate(records):
            o = other["settings"]
            if (s["mode"], o["mode"]) == ("whitebox", "blackbox") and all(s[k] == o[k] for k in ("kind", "knobs", "attack")) \
                    and results[i] is not None and results[j] is not None:
                check = check_whitebox_vs_transfer(results[i], results[j], source=source_label)
                checks.append(Check(check.name, check.passed, f"{rows[i]['series']}: {check.detail}", check.values))
    if x_is_eps:  # adversarial accuracy must not rise with eps, per curve
        for name in dict.fromkeys(r["series"] for r in rows):
            curve = {row["eps"]: result for row, result in zip(rows, results) if row["series"] == name and result}
            check = check_monotone_in_eps(curve)
            checks.append(Check(check.name, check.passed, f"{name}: {check.detail}", check.values))
    markdown = ctx.write(rows, columns) + record_checks(ctx, checks)
    markdown += record_comparisons(ctx, family_verdicts(comparisons))
    if dist_info().is_main:
        for mode in dict.fromkeys(r["mode"] for r in rows):
            series = plot_points([r for r in rows if r["mode"] == mode], "adversarial")
            plots.plot_lines(series, ctx.out / f"{mode}.png", xlabel=xlabel, ylabel="adversarial accuracy (%)",
                             title=f"{title} ({mode})", xscale=xscale, xticks=xticks, ylim=(0, 100), note=ctx.note())
    return markdown
