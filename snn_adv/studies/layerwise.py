r"""Study ``layerwise``: how a perturbation propagates through the layers. Per layer and image, the relative change
``r_l(x) = ||a_l(x') - a_l(x)|| / ||a_l(x)||`` of ANN activations, SNN spike rates and membrane potentials (same
Poisson draws for the clean and the perturbed pass, so only the perturbation differs), for perturbations crafted on
each model itself (whitebox) or on the ANN source (transfer). A model entry's ``leak`` and ``timesteps`` are, with the
section's ``retrain`` (default true, the paper's method), those of an SNN-BP trained at them (the leak study's models);
with ``retrain: false`` knobs changed on the one trained SNN-BP. ``levels`` and ``rate`` are always knobs.

Outputs: ``table.*``, per layer the mean over images of the per-image mean over Poisson seeds with its 95 %
bootstrap interval over images; ``growth.*``, paired tests on the same images of the paper's claim "perturbations
grow through ReLU layers and shrink through LIF layers": per model, ``r_last - r_first`` (last minus first hidden
layer), and per SNN against the ANN under the same perturbation, the difference of the per-image log growth
``log(r_last / r_first)`` of its spike rates and of the ANN's activations.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import plots
from ..attack_specs import ATTACK, attack_label, build_attack
from ..cells import cell_key
from ..classifier import SpikingClassifier
from ..distributed import dist_info
from ..encoding import fixed_noise
from ..neurons import LeakyLIFNode
from ..schema import FLAG, FRACTION, LEAK, POSITIVE_INT, ListOf, Section, Value
from ..seeds import derive_seed
from ..stats import mean_interval, paired_difference
from ..zoo import LABELS
from .common import KIND, LEVEL, LEVELS, TEST_COUNT, StudyContext, family_verdicts, trained_per_point

__all__ = ["CONFIG", "GROWTH_COLUMNS", "GROWTH_FAMILIES", "TABLE_COLUMNS", "growth_rows", "layer_activations",
           "per_image_changes", "relative_change", "relative_change_per_image", "run"]

#: the study's config section (``studies.layerwise``)
CONFIG = Section({**TEST_COUNT, "models": ListOf(Section({"kind": KIND, "leak": LEAK, "timesteps": POSITIVE_INT,
                                                          "levels": LEVELS, "rate": FRACTION}, required=("kind",)),
                                                 unique=True),
                  "perturbations": ListOf(Value("str", choices=("whitebox", "transfer")), unique=True),
                  "attack": ATTACK, "retrain": FLAG}, required=("models", "perturbations", "attack"))

TABLE_COLUMNS = ["model", "perturbation", "quantity", "layer", "relative_change", "relative_change_low",
                 "relative_change_high", "n_images", "input_relative_change", "cell"]
GROWTH_COLUMNS = ["model", "perturbation", "quantity", "comparison", "difference", "difference_low", "difference_high",
                  "p_value", "p_holm", "verdict", "family", "method", "n_images"]


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


def relative_change_per_image(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Per image (row) ``||a(x_adv) - a(x)||_2 / ||a(x)||_2``, NaN where the clean activation is all zero (the
    relative change of that image is undefined); one value per row, in row order."""
    norm = clean.norm(dim=1)
    change = (perturbed - clean).norm(dim=1)
    return torch.where(norm > 0, change / norm, torch.full_like(norm, math.nan))


def relative_change(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Per image ``||a(x_adv) - a(x)||_2 / ||a(x)||_2`` (images whose clean activation is all zero are skipped)."""
    change = relative_change_per_image(clean, perturbed)
    return change[~change.isnan()]


def _json_values(values: torch.Tensor) -> List[Optional[float]]:
    """A cell's list of per-image values: NaN (undefined) as None, which JSON can hold."""
    return [None if math.isnan(v) else v for v in values.tolist()]


def per_image_changes(result: Mapping[str, Any], quantity: str, seeds: Sequence[int]) -> np.ndarray:
    """``[layers, images]``: each image's relative change per layer, averaged over the scoring ``seeds`` under which
    it is defined (NaN where it is undefined under every seed), from a cell ``result``."""
    values = np.array([result[f"{quantity}/{e}"] for e in seeds], dtype=float)  # [seeds, layers, images], None -> NaN
    defined = ~np.isnan(values)
    counts = defined.sum(0)
    return np.where(counts > 0, np.where(defined, values, 0.0).sum(0) / np.maximum(counts, 1), np.nan)


def _log_growth(changes: np.ndarray) -> np.ndarray:
    """Per image ``log(r_last / r_first)``; NaN where it is undefined (a change of 0 or NaN at either layer)."""
    first, last = changes[0], changes[-1]
    defined = (first > 0) & (last > 0)
    return np.where(defined, np.log(np.where(defined, last, 1.0) / np.where(defined, first, 1.0)), np.nan)


#: the verdict families of ``growth.*``: every model's change from the first to the last hidden layer, and every
#: SNN's log growth against the ANN's (each Holm-adjusted together)
GROWTH_FAMILIES = ("last - first hidden layer: every model, perturbation and quantity",
                   "log growth, SNN - ANN: every SNN and perturbation")


def _growth_row(model: str, perturbation: str, quantity: str, what: str, x: np.ndarray, y: np.ndarray,
                family: str) -> Dict[str, Any]:
    """A row of ``growth.*`` in verdict family ``family``: :func:`snn_adv.stats.paired_difference` of ``x - y`` over
    the images where both are defined; empty values when no image has both."""
    row = {"model": model, "perturbation": perturbation, "quantity": quantity, "comparison": what, "family": family}
    if np.isnan(x - y).all():
        return {**row, "difference": None, "difference_low": None, "difference_high": None, "p_value": None,
                "verdict": "no image with both values", "method": None, "n_images": 0}
    comparison = paired_difference(x, y, LEVEL)
    return {**row, "difference": comparison.difference, "difference_low": comparison.low,
            "difference_high": comparison.high, "p_value": comparison.p_value, "method": comparison.method,
            "n_images": comparison.n}


def growth_rows(changes: Mapping[tuple, np.ndarray], labels: Mapping[str, str]) -> List[Dict[str, Any]]:
    """The rows of ``growth.*`` from ``changes[(model, perturbation, quantity)]`` (:func:`per_image_changes` of a
    cell; ``labels[model]`` the model's label): per model and quantity, the paired difference of the relative
    change at the last minus the first hidden layer ("grows" / "shrinks" / inconclusive); per SNN (quantity
    ``spike_rate``) and ANN (``activation``) under the same perturbation, the paired difference of the per-image
    log growth of the SNN's spike rates minus the ANN's activations (images where either is undefined are
    dropped). Verdicts at Holm-adjusted p < 0.05 within :data:`GROWTH_FAMILIES`."""
    rows, words = [], []
    for (model, perturbation, quantity), values in changes.items():
        if len(values) > 1:
            rows.append(_growth_row(labels[model], perturbation, quantity, f"layer {len(values)} - layer 1",
                                    values[-1], values[0], GROWTH_FAMILIES[0]))
            words.append(("grows", "shrinks"))
    for (ann, perturbation, quantity), ann_values in changes.items():
        if quantity != "activation" or len(ann_values) < 2:
            continue
        for (snn, other, snn_quantity), snn_values in changes.items():
            if other == perturbation and snn_quantity == "spike_rate" and len(snn_values) > 1:
                rows.append(_growth_row(f"{labels[snn]} vs {labels[ann]}", perturbation, "spike_rate vs activation",
                                        "log(r_last / r_first): SNN - ANN", _log_growth(snn_values),
                                        _log_growth(ann_values), GROWTH_FAMILIES[1]))
                words.append((f"{labels[snn]} grows more", f"{labels[snn]} grows less"))
    return family_verdicts(rows, words, LEVEL)


def _change_columns(values: np.ndarray) -> Dict[str, Any]:
    """``relative_change`` (mean over the images where it is defined), its bootstrap interval and ``n_images``."""
    n = int((~np.isnan(values)).sum())
    if n == 0:
        return {"relative_change": None, "relative_change_low": None, "relative_change_high": None, "n_images": 0}
    low, high = mean_interval(values, LEVEL)
    return {"relative_change": float(np.nanmean(values)), "relative_change_low": low, "relative_change_high": high,
            "n_images": n}


def run(ctx: StudyContext) -> str:
    """Relative change per layer and image, same Poisson draws for the clean and the perturbed pass (so only the
    perturbation differs). Perturbations: crafted on each model itself (whitebox) or on the ANN source (transfer).
    Returns the table and the growth tests as markdown."""
    zoo, section = ctx.zoo, ctx.section
    variants = section["models"]  # [{"kind": ..., "leak": ...}]
    trained = [trained_per_point(section, v["kind"], **{k: v[k] for k in ("leak", "timesteps") if k in v})
               for v in variants]
    # values="per_image": a cell holds every image's relative change (cells of older versions held means)
    cells = [ctx.cell(kind=v["kind"], model=zoo.key(v["kind"], **train), knobs={k: x for k, x in v.items() if k != "kind"},
                      attack=section["attack"], perturbation=p, values="per_image",
                      source=zoo.key("ann", "source") if p == "transfer" else None,
                      **({"trained_at": train} if train else {}))
             for v, train in zip(variants, trained) for p in section["perturbations"]]

    def compute(settings: Mapping[str, Any]) -> Dict[str, Any]:
        images, labels = ctx.data
        model = zoo.variant(settings["kind"], "main", train=settings.get("trained_at"), **settings["knobs"])
        source = model if settings["perturbation"] == "whitebox" else zoo.get("ann", "source")
        seed = derive_seed(ctx.config["seed"], cell_key(settings))
        if getattr(source, "encoder", None) is not None:
            source.encoder.manual_seed(derive_seed(seed, "craft"))
        adversarial = build_attack(settings["attack"], source, derive_seed(seed, "attack"))(images, labels)
        result: Dict[str, Any] = {}
        for e in ctx.eval_seeds:
            with fixed_noise(model, derive_seed(seed, "eval", e)):  # one Poisson draw for the clean and the adv pass
                acts = {tag: layer_activations(model, x) for tag, x in (("clean", images), ("adv", adversarial))}
            for quantity, layers in acts["clean"].items():  # per layer, per image in data order (paired over cells)
                result[f"{quantity}/{e}"] = [_json_values(relative_change_per_image(c, a))
                                             for c, a in zip(layers, acts["adv"][quantity])]
        result["input"] = _json_values(relative_change_per_image(images.flatten(1), adversarial.flatten(1)))
        return result

    records = ctx.run(cells, compute)
    rows, changes, labels = [], {}, {}
    for record in records:
        s, result = record["settings"], record["result"]
        key = cell_key(s)
        labels[key] = LABELS[s["kind"]] + (f" (leak {s['knobs']['leak']:g}{', trained at it' if s.get('trained_at') else ''})"
                                           if "leak" in s["knobs"] else "")
        input_change = float(np.nanmean(np.array(result["input"], dtype=float)))
        for quantity in sorted({k.split("/")[0] for k in result if "/" in k}):
            changes[key, s["perturbation"], quantity] = per_image_changes(result, quantity, ctx.eval_seeds)
            for layer, values in enumerate(changes[key, s["perturbation"], quantity], 1):
                rows.append({"model": labels[key], "perturbation": s["perturbation"], "quantity": quantity,
                             "layer": layer, **_change_columns(values), "input_relative_change": input_change,
                             "cell": key})
    markdown = ctx.write(rows, TABLE_COLUMNS)
    growth = ctx.write(growth_rows(changes, labels), GROWTH_COLUMNS, stem="growth")
    if dist_info().is_main:
        markdown += (f"\nGrowth of the perturbation, paired over the same images (sign-flip test and the {LEVEL:.0%} "
                     f"interval that inverts it, verdict at Holm-adjusted p < {1 - LEVEL:.2f} within the family): "
                     "relative change at the last minus the first "
                     "hidden layer, and the per-image log growth log(r_last / r_first) of each SNN's spike rates "
                     "minus the ANN's activations:\n\n" + growth)
        names = {"activation": "ANN activations", "spike_rate": "spike rates", "membrane": "membrane potentials"}
        for perturbation in section["perturbations"]:
            for quantities in (("activation", "spike_rate"), ("activation", "membrane")):
                subset = [dict(r, series=f"{r['model']}: {names[r['quantity']]}") for r in rows
                          if r["perturbation"] == perturbation and r["quantity"] in quantities
                          and r["relative_change"] is not None]
                series = plots.series_from_rows(subset, series="series", x="layer", y="relative_change",
                                                low="relative_change_low", high="relative_change_high")
                plots.plot_lines(series, ctx.out / f"{perturbation}_{quantities[1]}.png",
                                 xlabel="layer (input side first)", ylabel="relative change ||a'-a|| / ||a||",
                                 title=f"Perturbation propagation, {perturbation} perturbation "
                                       f"({attack_label(section['attack'])})", xscale="linear",
                                 note=ctx.note())
    return markdown
