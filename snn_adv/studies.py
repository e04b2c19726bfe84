"""The paper's studies as resumable cell grids over one shared cache of trained models.

``run_study(name, config, out)`` for ``name`` in :data:`STUDIES`:

``robustness``   ANN, SNN-conv, SNN-BP: clean, FGSM and PGD accuracy, whitebox and blackbox (every source kind,
                 trained separately with another seed, against every target: same-kind and cross pairs)
``timesteps``    adversarial accuracy against T for several input quantisation levels (SNN-BP, SNN-conv)
``leak``         adversarial accuracy against the leak factor at fixed T (1.0 = IF)
``eps``          accuracy against eps for each model kind and attack (whitebox)
``layerwise``    relative change of each layer's activations / spike rates / membrane potentials under attack
``strong``       the robustness table under adaptive attacks (EOT, rate, HART, surrogate ensemble, torchattacks)

Models: ``zoo.get(kind, role)`` with kind in ``ann | snn_conv | snn_bp`` and role ``main`` (the targets) or
``source`` (the blackbox sources, trained with another seed); checkpoints are cached under ``out/models`` by a
hash of their full recipe, so every study reuses them and a rerun trains nothing twice.

Every evaluation is a cell (see :mod:`snn_adv.study`): its adversarial examples are crafted per batch with seeds
derived from the cell, and each target is scored under several Poisson seeds (``eval_seeds``), giving the error
bars. Batches are sharded over ``torchrun`` ranks (:mod:`snn_adv.distributed`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from . import plots
from .classifier import ImageClassifier, SpikingClassifier
from .distributed import dist_info, sharded_counts
from .encoding import PoissonEncoder
from .evaluation import Check, warn_failures
from .evaluation._tolerance_checks import check_monotone_in_eps, check_whitebox_vs_blackbox  # until ported
from .io import PathLike, atomic_write, atomic_write_json, provenance
from .neurons import LeakyLIFNode
from .study import CellStore, cell_key, derive_seed, mean_std, run_cells, write_table
from .training import seed_everything
from .validation import check_choice

__all__ = ["KINDS", "LABELS", "STUDIES", "ModelZoo", "StudyContext", "make_attack", "attack_counts", "run_study", "run_studies"]

KINDS = ("ann", "snn_conv", "snn_bp")
LABELS = {"ann": "ANN", "snn_conv": "SNN-conv", "snn_bp": "SNN-BP"}
ROLES = ("main", "source")


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------
class ModelZoo:
    """The trained models of a config, built on first use and cached as checkpoints (keyed by their recipe).

    Recipe of ``(kind, role)``: the config's ``models.<kind>`` section, the data and architecture, the role's seed,
    and for ``snn_conv``/``snn_bp`` the recipe of the model it starts from (ANN -> SNN-conv -> SNN-BP).
    """

    def __init__(self, config: Mapping[str, Any], cache_dir: PathLike, progress: bool = True):
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.progress = progress
        self._memo: Dict[Tuple[str, str], ImageClassifier] = {}

    def recipe(self, kind: str, role: str = "main") -> Dict[str, Any]:
        check_choice("kind", kind, KINDS)
        check_choice("role", role, ROLES)
        models, data = self.config["models"], self.config["data"]
        recipe = {"kind": kind, **models[kind]}
        if kind == "ann":
            recipe.update(arch=models["arch"], arch_kwargs=models.get("arch_kwargs", {}), dataset=data["dataset"],
                          train_count=data.get("train_count"), seed=models["seeds"][role])
        else:
            recipe["from"] = self.recipe("ann" if kind == "snn_conv" else "snn_conv", role)
        return recipe

    def path(self, kind: str, role: str = "main") -> Path:
        return self.cache_dir / f"{kind}-{role}-{cell_key(self.recipe(kind, role))}.pt"

    def key(self, kind: str, role: str = "main") -> str:
        """Short id of a model's recipe (part of every cell's settings, so a new recipe means new cells)."""
        return cell_key(self.recipe(kind, role))

    def get(self, kind: str, role: str = "main") -> ImageClassifier:
        """The trained model (in eval mode): memoised, else loaded from the cache, else trained and cached."""
        if (kind, role) in self._memo:
            return self._memo[(kind, role)]
        from . import pipeline  # training, conversion and checkpoints (engineer B's modules)

        path = self.path(kind, role)
        if path.is_file():
            model = pipeline.load(path)
        else:
            recipe = self.recipe(kind, role)
            seed = derive_seed(self.config["seed"], cell_key(recipe))
            seed_everything(seed)
            data_cfg = self.config["data"]
            if kind == "ann":
                model = pipeline.train_ann(recipe, data_cfg, seed, progress=self.progress)
            elif kind == "snn_conv":
                model = pipeline.convert(reset(self.get("ann", role)), recipe, data_cfg, seed, progress=self.progress)
            else:
                model = pipeline.finetune(reset(self.get("snn_conv", role)), recipe, data_cfg, seed, progress=self.progress)
            if dist_info().is_main:
                pipeline.save(model, path, recipe)
        model.eval()
        self._memo[(kind, role)] = model
        return model

    def variant(self, kind: str, role: str = "main", **knobs: Any) -> ImageClassifier:
        """An independent copy of a model with SNN knobs changed: ``timesteps``, ``levels`` (input quantisation),
        ``rate`` (Poisson), ``leak``. ANNs ignore the knobs (they have none)."""
        model = copy.deepcopy(reset(self.get(kind, role)))
        if isinstance(model, SpikingClassifier):
            apply_knobs(model, **knobs)
        return model


def reset(model: nn.Module) -> nn.Module:
    """Clear neuron state left by the last forward (it may hold an autograd graph, which deepcopy refuses)."""
    functional.reset_net(model)
    return model


def apply_knobs(model: SpikingClassifier, timesteps: Optional[int] = None, levels: Optional[int] = None,
                rate: Optional[float] = None, leak: Optional[float] = None, quantise: bool = False) -> SpikingClassifier:
    """Change a spiking classifier's T, Poisson quantisation levels / rate and leak in place.

    ``levels`` is applied only when ``quantise`` is true, so ``levels=None`` can mean "no quantisation".
    """
    if timesteps is not None:
        model.timesteps = timesteps
    if quantise or rate is not None:
        old = model.encoder
        model.encoder = PoissonEncoder(rate=rate if rate is not None else getattr(old, "rate", 1.0),
                                       levels=levels if quantise else getattr(old, "levels", None))
    if leak is not None:
        model.set_leak(leak)
    return model


def seed_encoder(model: nn.Module, seed: int) -> None:
    """Restart the Poisson stream of a spiking classifier (no-op for an ANN)."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "manual_seed"):
        encoder.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------
# Attacks and scoring
# --------------------------------------------------------------------------------------------------------------
def build_surrogate(spec: Mapping[str, Any]) -> Callable:
    """An attacker surrogate from ``{"name": ..., **kwargs}``: ``PiecewiseLinear`` (ours) or any class of
    ``spikingjelly.activation_based.surrogate`` (``ATan``, ``Sigmoid``, ``Erf``...)."""
    from spikingjelly.activation_based import surrogate as sj_surrogate

    from .neurons import PiecewiseLinear

    spec = dict(spec)
    name = spec.pop("name")
    if name == "PiecewiseLinear":
        return PiecewiseLinear(**spec)
    cls = getattr(sj_surrogate, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"argument 'surrogate' = {name!r}: must be 'PiecewiseLinear' or a class of spikingjelly's surrogate module")
    return cls(**spec)


def make_attack(spec: Mapping[str, Any], model: nn.Module, seed: int):
    """An attack on ``model`` from its config entry ``{"name": ..., **arguments}``; None for ``"clean"``.

    Names: ``fgsm``, ``pgd`` (arguments of :class:`snn_adv.attacks.PGD`, incl. ``grad_mode``, ``eot``,
    ``surrogate`` as a spec), ``ensemble`` (:func:`snn_adv.attacks.gradient_mode_ensemble`: ``modes``,
    ``surrogates`` and PGD arguments) and ``torchattacks`` (``class`` of torchattacks and its ``kwargs``, e.g.
    ``AutoAttack`` or ``APGD``; torchattacks calls ``eval()``, under which our neurons keep their surrogate gradient).
    """
    from . import attacks

    spec = dict(spec)
    name = spec.pop("name")
    for key in ("label", "snn_only", "study_modes"):  # table metadata, not attack arguments
        spec.pop(key, None)
    if name == "clean":
        return None
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
    raise ValueError(f"argument 'attack' = {name!r}: must be 'clean', {', '.join(map(repr, attacks.ATTACKS))}, 'ensemble' or 'torchattacks'")


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
    one. Keys: ``"<target>/<e>/adv"``, ``"<target>/<e>/clean"`` and ``"total"``. A sample counts as robust only if it survives every member of an
    ensemble attack.
    """
    device = dist_info().device
    for model in [source, *targets.values()]:
        if model is not None:
            model.to(device).eval()

    def count(x: torch.Tensor, y: torch.Tensor, batch_seed: int) -> Dict[str, int]:
        attack = None
        if source is not None:
            seed_encoder(source, derive_seed(batch_seed, "craft"))
            attack = make_attack(attack_spec, source, derive_seed(batch_seed, "attack"))
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
        """The study's test images and labels: a stratified subset of ``test_count`` examples."""
        if self._data is None:
            from .data import load_tensors

            data = self.config["data"]
            count = self.section.get("test_count", data.get("test_count"))
            self._data = load_tensors(data["dataset"], "test", count=count, root=data.get("root"), seed=data.get("subset_seed", 0))
        return self._data

    def data_settings(self) -> Dict[str, Any]:
        data = self.config["data"]
        return {"dataset": data["dataset"], "test_count": self.section.get("test_count", data.get("test_count")),
                "subset_seed": data.get("subset_seed", 0)}

    def cell(self, **settings: Any) -> Dict[str, Any]:
        """Cell settings: the given ones plus the data, the Poisson seeds and the batch size (all change results)."""
        return {"study": self.name, "data": self.data_settings(), "eval_seeds": self.eval_seeds,
                "batch_size": self.batch_size, **settings}

    def run(self, cells: Sequence[Mapping[str, Any]], compute: Callable[[Mapping[str, Any]], Mapping[str, Any]]):
        return run_cells(cells, compute, self.store, seed=self.config["seed"], desc=self.name, progress=self.progress)

    def counts(self, source: Optional[nn.Module], targets: Mapping[str, nn.Module], attack: Mapping[str, Any],
               cell_seed: int, with_clean: bool = True) -> Dict[str, int]:
        images, labels = self.data
        return attack_counts(source, targets, attack, images, labels, seed=cell_seed, eval_seeds=self.eval_seeds,
                             batch_size=self.batch_size, with_clean=with_clean, progress=self.progress)

    def write(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], stem: str = "table") -> str:
        """Write the table (markdown + CSV) and a ``results.json`` with every row, the config and provenance."""
        if not dist_info().is_main:
            return ""
        markdown = write_table(rows, columns, self.out / stem)
        atomic_write_json(self.out / f"{stem}.json", {"study": self.name, "rows": list(rows), "config": self.config,
                                                     "provenance": provenance(seed=self.config["seed"])})
        return markdown


def _noise_tolerance(n_images: int) -> float:
    """How far an accuracy (as a fraction) may move by sampling noise alone: two binomial standard errors at 0.5."""
    return max(0.03, 1.0 / math.sqrt(max(n_images, 1)))


def _record_checks(ctx: StudyContext, checks: Sequence[Check]) -> str:
    """Write the study's self-checks to ``checks.json`` and ``checks.md``, warn about failures (possible gradient masking) and return
    them as a markdown section for the study's table."""
    if not checks or not dist_info().is_main:
        return ""
    warn_failures(checks)
    atomic_write_json(ctx.out / "checks.json", [dataclasses.asdict(c) for c in checks])
    lines = [f"- {'PASS' if c.passed else 'FAIL (possible gradient masking)'}: {c.name}: {c.detail}" for c in checks]
    section = "Self-checks (Carlini et al. 2019):\n" + "\n".join(lines) + "\n"
    with atomic_write(ctx.out / "checks.md", "w") as handle:
        handle.write(section)
    return "\n" + section


def _attack_label(spec: Mapping[str, Any]) -> str:
    return spec.get("label") or spec["name"].upper()


def _cell_seed(ctx: StudyContext, settings: Mapping[str, Any]) -> int:
    return derive_seed(ctx.config["seed"], "batches", cell_key(settings))


# --------------------------------------------------------------------------------------------------------------
# Study 1 and 6: robustness tables
# --------------------------------------------------------------------------------------------------------------
def _table_study(ctx: StudyContext, blackbox: bool) -> str:
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
        return ctx.counts(source, targets, settings["attack"], _cell_seed(ctx, settings), with_clean=False)

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
                condition = f"{_attack_label(s['attack'])} {'WB' if mode == 'whitebox' else 'BB from ' + LABELS[src['kind']]}"
            stats = accuracy_stats(counts, target, tag, ctx.eval_seeds)
            rows.append({"target": LABELS[target], "condition": condition, "attack": _attack_label(s["attack"]),
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
                                           _noise_tolerance(wb["n_images"]))
        checks.append(dataclasses.replace(check, detail=f"{wb['target']}, {wb['attack']}, blackbox from {bb['source']}: {check.detail}"))
    markdown = ctx.write(list(wide.values()), ["model", *conditions], stem="table") + _record_checks(ctx, checks)
    if dist_info().is_main:
        bars = {LABELS[k]: [_mean_std_of(rows, LABELS[k], c) for c in conditions] for k in kinds}
        plots.plot_bars(conditions, bars, ctx.out / "accuracy.png", ylabel="accuracy (%)",
                        title=f"{ctx.name}: accuracy per model and attack (WB whitebox, BB blackbox from a separately "
                              "trained source)", note=_note(ctx))
    return markdown


def _mean_std_of(rows, target: str, condition: str) -> Tuple[float, float]:
    for row in rows:
        if row["target"] == target and row["condition"] == condition:
            return row["accuracy_mean"], row["accuracy_std"]
    return math.nan, 0.0


def _note(ctx: StudyContext) -> str:
    data = ctx.data_settings()
    return (f"{data['dataset']}, {data['test_count']} test images; error bars: std over {len(ctx.eval_seeds)} Poisson "
            f"seeds of the target; preset '{ctx.config.get('preset', '?')}'")


def study_robustness(ctx: StudyContext) -> str:
    return _table_study(ctx, blackbox=True)


def study_strong(ctx: StudyContext) -> str:
    return _table_study(ctx, blackbox=ctx.section.get("blackbox", False))


# --------------------------------------------------------------------------------------------------------------
# Studies 2-4: sweeps
# --------------------------------------------------------------------------------------------------------------
def _sweep(ctx: StudyContext, grid: Sequence[Dict[str, Any]], xlabel: str, x_of: Callable[[Mapping], float],
           series_of: Callable[[Mapping], str], title: str, xscale: str = "linear", xticks=None,
           x_is_eps: bool = False) -> str:
    """Run a grid of whitebox/blackbox cells ``{"kind", "knobs", "attack", "mode"}``, tabulate and plot them."""
    zoo = ctx.zoo
    cells = [ctx.cell(kind=g["kind"], model=zoo.key(g["kind"]), knobs=g.get("knobs", {}), attack=g["attack"],
                      mode=g["mode"], source=zoo.key(ctx.section.get("blackbox_source", "ann"), "source")
                      if g["mode"] == "blackbox" else None) for g in grid]

    def compute(settings: Mapping[str, Any]) -> Dict[str, Any]:
        target = zoo.variant(settings["kind"], "main", **settings["knobs"])
        if settings["mode"] == "whitebox":
            source = target
        else:  # the blackbox source keeps its own settings: the perturbation is independent of the target's knobs
            source = zoo.get(ctx.section.get("blackbox_source", "ann"), "source")
        return ctx.counts(source, {"target": target}, settings["attack"], _cell_seed(ctx, settings))

    records = ctx.run(cells, compute)
    rows = []
    for record in records:
        s, counts = record["settings"], record["result"]
        adv, clean = (accuracy_stats(counts, "target", tag, ctx.eval_seeds) for tag in ("adv", "clean"))
        rows.append({"model": LABELS[s["kind"]], **{k: v for k, v in s["knobs"].items() if k != "quantise"},
                     "attack": _attack_label(s["attack"]), "eps": s["attack"].get("eps", 0.0), "mode": s["mode"],
                     "x": x_of(s), "series": series_of(s), "clean_mean": clean["mean"], "clean_std": clean["std"],
                     "adv_mean": adv["mean"], "adv_std": adv["std"], "n_seeds": adv["n_seeds"],
                     "n_images": counts["total"], "cell": cell_key(s)})
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in ("x", "series")]
    checks = []
    if x_is_eps:  # adversarial accuracy must not rise with eps, per curve
        for name in dict.fromkeys(r["series"] for r in rows):
            curve = [r for r in rows if r["series"] == name]
            check = check_monotone_in_eps({r["eps"]: r["adv_mean"] / 100 for r in curve}, _noise_tolerance(curve[0]["n_images"]))
            checks.append(dataclasses.replace(check, detail=f"{name}: {check.detail}"))
    markdown = ctx.write(rows, columns) + _record_checks(ctx, checks)
    if dist_info().is_main:
        for mode in dict.fromkeys(r["mode"] for r in rows):
            subset = [r for r in rows if r["mode"] == mode]
            series = plots.series_from_rows(subset, series="series", x="x", y="adv_mean", std="adv_std")
            plots.plot_lines(series, ctx.out / f"{mode}.png", xlabel=xlabel, ylabel="adversarial accuracy (%)",
                             title=f"{title} ({mode})", xscale=xscale, xticks=xticks, ylim=(0, 100), note=_note(ctx))
    return markdown


def study_timesteps(ctx: StudyContext) -> str:
    section = ctx.section
    grid = [{"kind": kind, "knobs": {"timesteps": t, "levels": q, "quantise": True}, "attack": attack, "mode": mode}
            for kind in section["kinds"] for t in section["timesteps"] for q in section["levels"]
            for attack in section["attacks"] for mode in attack.get("study_modes", section["modes"])]
    return _sweep(ctx, grid, "timesteps T", lambda s: s["knobs"]["timesteps"],
                  lambda s: f"{LABELS[s['kind']]}, {_levels(s['knobs']['levels'])}, {_attack_label(s['attack'])}",
                  "Adversarial accuracy vs timesteps and input quantisation", xscale="log", xticks=section["timesteps"])


def _levels(levels: Optional[int]) -> str:
    return "no quantisation" if levels is None else f"{levels} levels"


def study_leak(ctx: StudyContext) -> str:
    section = ctx.section
    grid = [{"kind": kind, "knobs": {"leak": leak, **({"timesteps": section["timesteps"]} if "timesteps" in section else {})},
             "attack": attack, "mode": mode}
            for kind in section["kinds"] for leak in section["leaks"] for attack in section["attacks"]
            for mode in attack.get("study_modes", section["modes"])]
    return _sweep(ctx, grid, "leak factor (1 = IF neuron)", lambda s: s["knobs"]["leak"],
                  lambda s: f"{LABELS[s['kind']]}, {_attack_label(s['attack'])}", "Adversarial accuracy vs leak")


def _at_eps(attack: Mapping[str, Any], eps: float) -> Dict[str, Any]:
    """The attack entry at ``eps``; ``alpha_over_eps`` sets the PGD step relative to eps (0.25: the paper's
    2/255 at 8/255), so that 7 steps can reach the ball's surface at every eps."""
    attack = {**attack, "eps": eps}
    factor = attack.pop("alpha_over_eps", None)
    if factor is not None:
        attack["alpha"] = max(factor * eps, 1e-8)  # eps = 0: a clean cell, any step
    return attack


def study_eps(ctx: StudyContext) -> str:
    section = ctx.section
    grid = [{"kind": kind, "attack": _at_eps(attack, eps / 255), "mode": "whitebox"}
            for kind in section["kinds"] for attack in section["attacks"] for eps in section["eps_255"]]
    return _sweep(ctx, grid, "eps (x/255, L-infinity)", lambda s: round(s["attack"]["eps"] * 255, 6),
                  lambda s: f"{LABELS[s['kind']]}, {_attack_label(s['attack'])}", "Accuracy vs perturbation size",
                  x_is_eps=True)


# --------------------------------------------------------------------------------------------------------------
# Study 5: layer-wise perturbation propagation
# --------------------------------------------------------------------------------------------------------------
def layer_activations(model: nn.Module, images: torch.Tensor) -> Dict[str, List[torch.Tensor]]:
    """Per-layer activations of one forward pass, input side first, one row per image.

    ANN: the output of every ReLU (``"activation"``). SNN: every spiking layer's firing rate (mean over T of its
    spikes, ``"spike_rate"``) and its membrane potential over time (``"membrane"``, ``[N, T*...]``).
    """
    out: Dict[str, List[torch.Tensor]] = {}
    hooks = []
    if isinstance(model, SpikingClassifier):
        nodes = [n for n in model.neurons() if isinstance(n, LeakyLIFNode)]
        for node in nodes:
            node.store_v_seq = True
            hooks.append(node.register_forward_hook(
                lambda m, i, o: out.setdefault("spike_rate", []).append(o.mean(0).flatten(1))))
    else:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                hooks.append(module.register_forward_hook(
                    lambda m, i, o: out.setdefault("activation", []).append(o.flatten(1))))
    try:
        with torch.no_grad():
            model(images)
        if isinstance(model, SpikingClassifier):
            out["membrane"] = [n.v_seq.transpose(0, 1).flatten(1) for n in nodes]
    finally:
        for hook in hooks:
            hook.remove()
        if isinstance(model, SpikingClassifier):
            for node in nodes:
                node.store_v_seq = False
    return out


def relative_change(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Per image ``||a(x_adv) - a(x)||_2 / ||a(x)||_2`` (images whose clean activation is all zero are skipped)."""
    norm = clean.norm(dim=1)
    keep = norm > 0
    return (perturbed - clean)[keep].norm(dim=1) / norm[keep]


def study_layerwise(ctx: StudyContext) -> str:
    """Relative change per layer, same Poisson draws for the clean and the perturbed pass (so only the
    perturbation differs). Perturbations: crafted on each model itself (whitebox) or on the ANN source (transfer)."""
    zoo, section = ctx.zoo, ctx.section
    variants = section["models"]  # [{"kind": ..., "leak": ...}]
    cells = [ctx.cell(kind=v["kind"], model=zoo.key(v["kind"]), knobs={k: x for k, x in v.items() if k != "kind"},
                      attack=section["attack"], perturbation=p,
                      source=zoo.key("ann", "source") if p == "transfer" else None)
             for v in variants for p in section["perturbations"]]

    def compute(settings: Mapping[str, Any]) -> Dict[str, Any]:
        images, labels = ctx.data
        model = zoo.variant(settings["kind"], "main", **settings["knobs"])
        source = model if settings["perturbation"] == "whitebox" else zoo.get("ann", "source")
        seed = _cell_seed(ctx, settings)
        seed_encoder(source, derive_seed(seed, "craft"))
        adversarial = make_attack(settings["attack"], source, derive_seed(seed, "attack"))(images, labels)
        result: Dict[str, Any] = {}
        for e in ctx.eval_seeds:
            acts = {}
            for tag, x in (("clean", images), ("adv", adversarial)):
                seed_encoder(model, derive_seed(seed, "eval", e))
                acts[tag] = layer_activations(model, x)
            for quantity, layers in acts["clean"].items():
                result[f"{quantity}/{e}"] = [relative_change(c, a).mean().item() for c, a in zip(layers, acts["adv"][quantity])]
        result["input"] = relative_change(images.flatten(1), adversarial.flatten(1)).mean().item()
        return result

    records = ctx.run(cells, compute)
    rows = []
    for record in records:
        s, result = record["settings"], record["result"]
        label = LABELS[s["kind"]] + (f" (leak {s['knobs']['leak']:g})" if "leak" in s["knobs"] else "")
        for quantity in sorted({k.split("/")[0] for k in result if "/" in k}):
            per_seed = [result[f"{quantity}/{e}"] for e in ctx.eval_seeds]
            for layer in range(len(per_seed[0])):
                stats = mean_std(values[layer] for values in per_seed)
                rows.append({"model": label, "perturbation": s["perturbation"], "quantity": quantity,
                             "layer": layer + 1, "relative_change_mean": stats["mean"], "relative_change_std": stats["std"],
                             "input_relative_change": result["input"], "cell": cell_key(s)})
    markdown = ctx.write(rows, ["model", "perturbation", "quantity", "layer", "relative_change_mean",
                                "relative_change_std", "input_relative_change", "cell"])
    if dist_info().is_main:
        names = {"activation": "ANN activations", "spike_rate": "spike rates", "membrane": "membrane potentials"}
        for perturbation in section["perturbations"]:
            for quantities in (("activation", "spike_rate"), ("activation", "membrane")):
                subset = [dict(r, series=f"{r['model']}: {names[r['quantity']]}") for r in rows
                          if r["perturbation"] == perturbation and r["quantity"] in quantities]
                series = plots.series_from_rows(subset, series="series", x="layer", y="relative_change_mean",
                                                std="relative_change_std")
                plots.plot_lines(series, ctx.out / f"{perturbation}_{quantities[1]}.png",
                                 xlabel="layer (input side first)", ylabel="relative change ||a'-a|| / ||a||",
                                 title=f"Perturbation propagation, {perturbation} perturbation "
                                       f"({_attack_label(section['attack'])})", xscale="linear", note=_note(ctx))
    return markdown


STUDIES: Dict[str, Callable[[StudyContext], str]] = {
    "robustness": study_robustness,
    "timesteps": study_timesteps,
    "leak": study_leak,
    "eps": study_eps,
    "layerwise": study_layerwise,
    "strong": study_strong,
}


def run_study(name: str, config: Mapping[str, Any], out: PathLike, *, zoo: Optional[ModelZoo] = None,
              progress: bool = True) -> str:
    """Run one study of ``config`` into ``out/<name>/`` (resuming finished cells); return its markdown table."""
    check_choice("study", name, STUDIES)
    if name not in config.get("studies", {}):
        raise ValueError(f"argument 'study' = {name!r}: the config has no section studies.{name} "
                         f"(it has {sorted(config.get('studies', {}))})")
    return STUDIES[name](StudyContext(name, config, out, zoo=zoo, progress=progress))


def run_studies(names: Sequence[str], config: Mapping[str, Any], out: PathLike, progress: bool = True) -> Dict[str, str]:
    """Run several studies sharing one model cache (under torchrun: every rank joins, rank 0 writes)."""
    from .distributed import init_distributed

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
