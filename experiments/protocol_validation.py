"""The protocol on models whose behaviour is known (issue: a protocol a reviewer can trust).

On the bundled Fashion-MNIST subset: a small VGG (ANN, 3 epochs on 2000 images, as the test suite's fixture), its
converted SNN at a low T, and masked variants: a model whose backward is noise, stock SpikingJelly neurons in
``eval()``, an SNN whose surrogate is so narrow that its gradient vanishes, and a noise defence (Gaussian input
noise). Each gets the battery ``--version`` (default the package's) and every single attack below on the same images
and Poisson draws, and the paired one-sided test of "protocol above the attack". Writes
``experiments/results/protocol_validation/`` (``table.md``, ``results.json``, one protocol folder per model,
resumable).

    python experiments/protocol_validation.py [--images 100] [--version snn-v2]
        [--out experiments/results/protocol_validation]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron
from torch.utils.data import DataLoader, TensorDataset

from snn_adv import evaluate
from snn_adv.attacks import APGD, FGSM, PGD, NoInputGradientError
from snn_adv.cells import markdown_table
from snn_adv.classifier import SpikingClassifier
from snn_adv.conversion import convert
from snn_adv.data import dataset_fingerprint, load_tensors
from snn_adv.encoding import PoissonEncoder
from snn_adv.io import atomic_write, atomic_write_json, provenance
from snn_adv.models import build_classifier
from snn_adv.neurons import PiecewiseLinear, spiking_neurons
from snn_adv.protocol import DEFAULT_VERSION, VERSIONS, robust_accuracy
from snn_adv.protocol.report import FORWARD_COST
from snn_adv.protocol.run import CostMeter
from snn_adv.evaluation import compare
from snn_adv.training import seed_everything, train_ann

EPS = 8 / 255
SEEDS = [0, 1, 2]


class NoiseGradient(nn.Module):
    """A model's logits with an input gradient of pure noise (the engine seeds torch's stream per batch)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(_Noise.apply(images))


class _Noise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.randn_like(grad)


class NoisyInput(nn.Module):
    """A noise defence: Gaussian noise (std 0.1) on the input of every forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images + 0.1 * torch.randn_like(images)).clamp(0, 1))


def models() -> Dict[str, Optional[nn.Module]]:
    train_x, train_y = load_tensors("fashion-mnist-bundled", "train", count=2000, seed=0)
    seed_everything(0)
    ann = build_classifier("vgg-tiny", "fashion-mnist-bundled")
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    train_ann(ann, loader, epochs=3, optimizer="adam", lr=3e-3, seed=0, progress=False)
    ann.eval()
    calibration = DataLoader(TensorDataset(train_x[:200], train_y[:200]), batch_size=100)
    snn = convert(ann, calibration, timesteps=8, seed=0, progress=False).eval()
    narrow = convert(ann, calibration, timesteps=8, seed=0, progress=False).eval()
    for node in spiking_neurons(narrow):
        node.surrogate_function = PiecewiseLinear(gamma=1.0, width=1e-7)
    stock = nn.Sequential(layer.Flatten(), layer.Linear(28 * 28, 10), neuron.LIFNode())
    functional.set_step_mode(stock, "m")
    return {"honest ANN": ann, "noise backward (ANN)": NoiseGradient(ann).eval(),
            "stock SpikingJelly neurons in eval()": SpikingClassifier(stock, PoissonEncoder(seed=0), timesteps=8).eval(),
            "noise defence (ANN + Gaussian noise)": NoisyInput(ann).eval(),
            "vanishing surrogate (SNN-conv, T=8)": narrow, "SNN-conv at T=8": snn, "_ann": ann}


def single_attacks(model: nn.Module) -> Dict[str, object]:
    return {"FGSM": FGSM(model, eps=EPS), "PGD-7": PGD(model, eps=EPS, alpha=2 / 255, steps=7),
            "PGD-7 EOT 4": PGD(model, eps=EPS, alpha=2 / 255, steps=7, eot=4),
            "APGD-CE 100": APGD(model, eps=EPS, steps=100)}


def write(rows: List[Dict], out: Path, images: int, version: str) -> None:
    """``table.md`` and ``results.json`` from the rows so far (rewritten after each model: a long run shows them)."""
    lines = [f"# The protocol on models with known behaviour (Fashion-MNIST bundled subset, {images} test images, "
             f"{len(SEEDS)} Poisson scoring seeds, Linf 8/255)", ""]
    labels = ("FGSM", "PGD-7", "PGD-7 EOT 4", "APGD-CE 100")
    protocol = f"protocol ({version})"
    columns = ["model", protocol, *labels, "protocol above any attack?", "protocol cost / APGD-CE 100 cost"]
    shown = []
    for row in rows:
        if row["protocol"] == "refused":
            shown.append({"model": row["model"], protocol: f"refused: {row['detail']}"})
            continue
        attacks = {label: row["attacks"][label] for label in labels}
        worst_p = min(a["protocol_minus_attack"]["p_value"] for a in attacks.values())
        shown.append({"model": row["model"], protocol: row["protocol"],
                      **{label: f"{100 * a['accuracy']:.1f} [{100 * a['interval'][0]:.1f}, {100 * a['interval'][1]:.1f}]"
                         for label, a in attacks.items()},
                      "protocol above any attack?": f"{'yes' if worst_p < 0.05 else 'no'} (smallest one-sided p = "
                                                    f"{worst_p:.3g})",
                      "protocol cost / APGD-CE 100 cost": f"{row['cost_ratio']:.2f}"})
    lines.append(markdown_table(shown, columns).rstrip("\n"))
    lines += ["", "Each attack column: accuracy % [95 % interval] of that attack alone on the same images and draws; "
                  "'protocol above': the one-sided paired test of protocol > attack (a 'yes' would be a failure); cost in "
                  f"forward-backward passes per image (a forward alone counts {FORWARD_COST}).", ""]
    with atomic_write(out / "table.md", "w") as handle:
        handle.write("\n".join(lines))
    atomic_write_json(out / "results.json", {"rows": rows, "version": version, "eps": EPS, "scoring_seeds": SEEDS,
                                             "images": images,
                                             "data": dataset_fingerprint("fashion-mnist-bundled", None),
                                             "provenance": provenance(seed=0)})


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--version", default=DEFAULT_VERSION, choices=sorted(VERSIONS), help="battery version")
    parser.add_argument("--out", default="experiments/results/protocol_validation")
    args = parser.parse_args(argv)
    out = Path(args.out)
    x, y = load_tensors("fashion-mnist-bundled", "test", count=args.images, seed=0)
    zoo = models()
    ann = zoo.pop("_ann")
    rows = []
    for name, model in zoo.items():
        folder = out / name.split(" (")[0].replace(" ", "_").replace("()", "").replace(".", "")
        start = time.perf_counter()
        sources = {"ann": ann} if "SNN-conv" in name else {}  # transfer from the ANN they were converted from
        try:
            report = robust_accuracy(model, (x, y), eps=EPS, version=args.version, sources=sources,
                                     scoring_seeds=SEEDS, out=folder, progress=False)
        except NoInputGradientError as error:
            rows.append({"model": name, "protocol": "refused", "detail": str(error).split(";")[0]})
            write(rows, out, args.images, args.version)
            continue
        row = {"model": name, "protocol": report.headline(), "verdict": report.verdict,
               "robust": report.robust_accuracy, "seconds": round(time.perf_counter() - start, 1), "attacks": {}}
        for label, attack in single_attacks(model).items():
            began = time.perf_counter()
            with CostMeter([model]) as meter:
                try:
                    single = evaluate(model, (x, y), attack, scoring_seeds=SEEDS, batch_size=100, progress=False)
                except NoInputGradientError:  # the single attack is blind here (e.g. the vanishing surrogate)
                    single = evaluate(model, (x, y), None, scoring_seeds=SEEDS, batch_size=100, progress=False)
            if label == "APGD-CE 100":  # the cost unit of the protocol's budget
                row["apgd_100"] = {"seconds": round(time.perf_counter() - began, 1),
                                   "passes_per_image": (meter.gradient + FORWARD_COST * meter.forward) / len(y)}
                row["cost_ratio"] = report.total_cost() / row["apgd_100"]["passes_per_image"]
            above = compare(report.result, single, alternative="greater")
            row["attacks"][label] = {"accuracy": single.adversarial_accuracy, "interval": list(single.confidence_interval()),
                                     "protocol_minus_attack": above.to_dict()}
        rows.append(row)
        print(row["protocol"], flush=True)
        write(rows, out, args.images, args.version)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
