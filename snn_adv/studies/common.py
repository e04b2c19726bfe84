"""What every study shares: its context (config section, model zoo, test data, cell store), tables and checks.

Every evaluation is a cell (:mod:`snn_adv.cells`): its adversarial examples are crafted per batch with seeds
derived from the config seed and the cell, and each target is scored under several Poisson seeds
(``eval_seeds``). Batches are sharded over ``torchrun`` ranks (:mod:`snn_adv.distributed`).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..attack_specs import build_attack
from ..cells import CellStore, mean_std, run_cells, write_table
from ..data import dataset_info
from ..data.fingerprint import dataset_fingerprint
from ..distributed import dist_info, sharded_counts
from ..evaluation import Check, warn_failures
from ..io import PathLike, atomic_write, atomic_write_json, provenance
from ..seeds import derive_seed
from ..zoo import ModelZoo

__all__ = ["StudyContext", "attack_counts", "accuracy_stats", "check_evaluation_data", "public_config",
           "record_checks", "seed_encoder"]


def seed_encoder(model: nn.Module, seed: int) -> None:
    """Restart the Poisson stream of a spiking classifier (no-op for an ANN)."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "manual_seed"):
        encoder.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------
def _adversarial_sets(attack, x: torch.Tensor, y: torch.Tensor) -> List[torch.Tensor]:
    """The inputs a sample must survive: ``[x]`` (clean), the attack's output, or every ensemble member's."""
    if attack is None:
        return [x]
    if hasattr(attack, "members_outputs"):
        return attack.members_outputs(x, y)
    return [attack(x, y).detach()]


def attack_counts(
    source: Optional[nn.Module],
    targets: Mapping[str, nn.Module],
    attack_spec: Mapping[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    eval_seeds: Sequence[int],
    batch_size: int,
    with_clean: bool = True,
    progress: bool = True,
) -> Dict[str, int]:
    """Correct counts of every target on the adversarial examples crafted on ``source`` (sharded over ranks).

    Per batch ``b``: the source's Poisson stream and the attack's random start are seeded from
    ``derive_seed(seed, b)``; each target is then scored once per Poisson seed ``e`` of ``eval_seeds``
    (stream ``derive_seed(seed, b, "eval", e)``) on the adversarial batch and, when ``with_clean``, on the clean
    one. Keys: ``"<target>/<e>/adv"``, ``"<target>/<e>/clean"`` and ``"total"``. A sample counts as robust only if
    it survives every member of an ensemble attack.
    """
    device = dist_info().device
    for model in [source, *targets.values()]:
        if model is not None:
            model.to(device).eval()

    def count(x: torch.Tensor, y: torch.Tensor, batch_seed: int) -> Dict[str, int]:
        attack = None
        if source is not None:
            seed_encoder(source, derive_seed(batch_seed, "craft"))
            attack = build_attack(attack_spec, source, derive_seed(batch_seed, "attack"))
        adversarial = _adversarial_sets(attack, x, y)
        inputs_of = {"adv": adversarial}
        if with_clean and attack is not None:
            inputs_of["clean"] = [x]
        out = {"total": len(y)}
        with torch.no_grad():
            for name, target in targets.items():
                for e in eval_seeds:
                    for tag, inputs in inputs_of.items():
                        seed_encoder(target, derive_seed(batch_seed, "eval", e))
                        robust = torch.ones_like(y, dtype=torch.bool)
                        for z in inputs:
                            robust &= target(z).argmax(1) == y
                        out[f"{name}/{e}/{tag}"] = int(robust.sum())
                    if attack is None:  # clean run: the "adversarial" inputs are the clean ones
                        out[f"{name}/{e}/clean"] = out[f"{name}/{e}/adv"]
        return out

    return sharded_counts(count, images, labels, batch_size=batch_size, seed=seed, progress=progress)


def accuracy_stats(counts: Mapping[str, int], target: str, tag: str, eval_seeds: Sequence[int]) -> Dict[str, float]:
    """Mean and std (over Poisson seeds) of a target's accuracy in percent."""
    stats = mean_std(100.0 * counts[f"{target}/{e}/{tag}"] / counts["total"] for e in eval_seeds)
    return {"mean": stats["mean"], "std": stats["std"], "n_seeds": stats["n"]}


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


# --------------------------------------------------------------------------------------------------------------
# Study context
# --------------------------------------------------------------------------------------------------------------
class StudyContext:
    """What a study needs: its config section, the model zoo, the test images, its cell store and output folder."""

    def __init__(self, name: str, config: Mapping[str, Any], out: PathLike, zoo: Optional[ModelZoo] = None,
                 progress: bool = True):
        self.name = name
        self.config = config
        self.section = config["studies"][name]
        self.out = Path(out) / name
        self.progress = progress
        self.zoo = zoo or ModelZoo(config, Path(out) / "models", progress=progress)
        self.store = CellStore(self.out)
        self.eval_seeds = list(config["eval_seeds"])
        self.batch_size = int(config["eval_batch_size"])
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

    def counts(self, source: Optional[nn.Module], targets: Mapping[str, nn.Module], attack: Mapping[str, Any],
               cell_seed: int, with_clean: bool = True) -> Dict[str, int]:
        images, labels = self.data
        return attack_counts(source, targets, attack, images, labels, seed=cell_seed, eval_seeds=self.eval_seeds,
                             batch_size=self.batch_size, with_clean=with_clean, progress=self.progress)

    def write(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], stem: str = "table") -> str:
        """Write the table (markdown + CSV) and ``<stem>.json`` with every row, the config and provenance."""
        if not dist_info().is_main:
            return ""
        markdown = write_table(rows, columns, self.out / stem)
        atomic_write_json(self.out / f"{stem}.json", {"study": self.name, "rows": list(rows),
                                                     "config": public_config(self.config),
                                                     "provenance": provenance(seed=self.config["seed"])})
        return markdown

    def note(self) -> str:
        """The measurement conditions, as the second line of a plot's title."""
        data = self.data_settings()
        return (f"{data['dataset']}, {data['test_count']} test images; error bars: std over {len(self.eval_seeds)} "
                f"Poisson seeds of the target; preset '{self.config.get('preset', '?')}'")

    def cell_seed(self, settings: Mapping[str, Any]) -> int:
        from ..cells import cell_key

        return derive_seed(self.config["seed"], "batches", cell_key(settings))


def noise_tolerance(n_images: int) -> float:
    """How far an accuracy (as a fraction) may move by sampling noise alone: two binomial standard errors at 0.5."""
    return max(0.03, 1.0 / math.sqrt(max(n_images, 1)))


def record_checks(ctx: StudyContext, checks: Sequence[Check]) -> str:
    """Write the study's self-checks to ``checks.json`` and ``checks.md``, warn about failures (possible gradient
    masking) and return them as a markdown section for the study's table."""
    if not checks or not dist_info().is_main:
        return ""
    warn_failures(checks)
    atomic_write_json(ctx.out / "checks.json", [dataclasses.asdict(c) for c in checks])
    lines = [f"- {'PASS' if c.passed else 'FAIL (possible gradient masking)'}: {c.name}: {c.detail}" for c in checks]
    section = "Self-checks (Carlini et al. 2019):\n" + "\n".join(lines) + "\n"
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


def sweep(ctx: StudyContext, grid: Sequence[Dict[str, Any]], xlabel: str, x_of: Callable[[Mapping], float],
          series_of: Callable[[Mapping], str], title: str, xscale: str = "linear", xticks=None,
          x_is_eps: bool = False) -> str:
    """Run a grid of whitebox/blackbox cells ``{"kind", "knobs", "attack", "mode", ["train"]}``, tabulate and plot
    them. ``train``: recipe overrides of the target model (:meth:`snn_adv.zoo.ModelZoo.get`); ``knobs``: changed
    on it at evaluation (:func:`snn_adv.zoo.apply_knobs`)."""
    from .. import plots
    from ..attack_specs import attack_label
    from ..cells import cell_key
    from ..evaluation import check_monotone_in_eps
    from ..zoo import LABELS

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
        if settings["mode"] == "whitebox":
            source = target
        else:  # the blackbox source keeps its own settings: the perturbation is independent of the target's knobs
            source = zoo.get(source_kind, "source")
        return ctx.counts(source, {"target": target}, settings["attack"], ctx.cell_seed(settings))

    records = ctx.run(cells, compute)
    rows = []
    for record in records:
        s, counts = record["settings"], record["result"]
        adv, clean = (accuracy_stats(counts, "target", tag, ctx.eval_seeds) for tag in ("adv", "clean"))
        trained = {"trained": "at this point" if s.get("trained_at") else "once"} if per_point else {}
        rows.append({"model": LABELS[s["kind"]], **trained, **{k: v for k, v in s["knobs"].items() if k != "quantise"},
                     "attack": attack_label(s["attack"]), "eps": s["attack"].get("eps", 0.0), "mode": s["mode"],
                     "x": x_of(s), "series": series_of(s), "clean_mean": clean["mean"], "clean_std": clean["std"],
                     "adv_mean": adv["mean"], "adv_std": adv["std"], "n_seeds": adv["n_seeds"],
                     "n_images": counts["total"], "cell": cell_key(s)})
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in ("x", "series")]
    checks = []
    if x_is_eps:  # adversarial accuracy must not rise with eps, per curve
        for name in dict.fromkeys(r["series"] for r in rows):
            curve = [r for r in rows if r["series"] == name]
            check = check_monotone_in_eps({r["eps"]: r["adv_mean"] / 100 for r in curve},
                                          noise_tolerance(curve[0]["n_images"]))
            checks.append(dataclasses.replace(check, detail=f"{name}: {check.detail}"))
    markdown = ctx.write(rows, columns) + record_checks(ctx, checks)
    if dist_info().is_main:
        for mode in dict.fromkeys(r["mode"] for r in rows):
            subset = [r for r in rows if r["mode"] == mode]
            series = plots.series_from_rows(subset, series="series", x="x", y="adv_mean", std="adv_std")
            plots.plot_lines(series, ctx.out / f"{mode}.png", xlabel=xlabel, ylabel="adversarial accuracy (%)",
                             title=f"{title} ({mode})", xscale=xscale, xticks=xticks, ylim=(0, 100), note=ctx.note())
    return markdown
