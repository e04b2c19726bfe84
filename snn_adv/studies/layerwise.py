"""Study ``layerwise``: how a perturbation propagates through the layers. Per layer, the relative change
``||a(x') - a(x)|| / ||a(x)||`` of ANN activations, SNN spike rates and membrane potentials (same Poisson draws for
the clean and the perturbed pass, so only the perturbation differs), for perturbations crafted on each model itself
(whitebox) or on the ANN source (transfer)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
import torch.nn as nn

from .. import plots
from ..attack_specs import attack_label, build_attack
from ..cells import cell_key, mean_std
from ..classifier import SpikingClassifier
from ..distributed import dist_info
from ..neurons import LeakyLIFNode
from ..seeds import derive_seed
from ..zoo import LABELS
from .common import StudyContext, seed_encoder

__all__ = ["layer_activations", "relative_change", "run"]


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


def run(ctx: StudyContext) -> str:
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
        seed = ctx.cell_seed(settings)
        seed_encoder(source, derive_seed(seed, "craft"))
        adversarial = build_attack(settings["attack"], source, derive_seed(seed, "attack"))(images, labels)
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
                                       f"({attack_label(section['attack'])})", xscale="linear", note=ctx.note())
    return markdown



