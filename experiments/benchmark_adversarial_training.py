"""Seconds per 1000 training images of the adversarial-training recipes on CIFAR shapes (VGG5; the ANN at batch 128,
the SNN-BP at T = 8, batch 64): clean, PGD-AT (Madry: 7 steps), fast AT (FGSM from a random start) and
Ozdenizci and Legenstein's TRADES with R+FGSM (the SNN-BP with trainable thresholds, as their robust conversion). Random
images: the cost does not depend on the pixels. The cifar10_defences preset is sized from these figures.

    python experiments/benchmark_adversarial_training.py [--batches 3]
"""
import argparse
import json
import time
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

from snn_adv.conversion import hybrid_init
from snn_adv.models import build_classifier
from snn_adv.training import train


def seconds_per_batch(model, batch: int, batches: int, adversarial) -> float:
    """Mean seconds of a training batch over ``batches`` of them, after one warm-up batch."""
    count = batch * (batches + 1)
    loader = DataLoader(TensorDataset(torch.rand(count, 3, 32, 32), torch.randint(0, 10, (count,))), batch_size=batch)
    train(model, loader, epochs=1, max_batches=1, progress=False, adversarial=adversarial)
    start = time.perf_counter()
    train(model, loader, epochs=1, max_batches=batches, progress=False, adversarial=adversarial)
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    snn_bp = build_classifier("vgg5", "cifar10-jpeg", "snn", timesteps=8)
    models = {"ann": (build_classifier("vgg5", "cifar10-jpeg"), 128), "snn_bp": (snn_bp, 64),
              "snn_bp_thresholds": (hybrid_init(snn_bp, 8, learnable_thresholds=True), 64)}
    runs = {"ann": ("clean", "pgd", "fast", "trades-rfgsm"), "snn_bp": ("clean", "pgd", "fast"),
            "snn_bp_thresholds": ("trades-rfgsm",)}
    figures = {}
    for name, (model, batch) in models.items():
        for method in runs[name]:
            seconds = seconds_per_batch(model, batch, args.batches, None if method == "clean" else {"method": method})
            figures[f"{name}/{method}"] = round(seconds / batch * 1000, 1)
            print(f"{name} {method}: {seconds:.2f} s per batch of {batch}, {seconds / batch * 1000:.1f} s per 1000 "
                  "images", flush=True)
    print(json.dumps({"seconds_per_1000_images": figures, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
