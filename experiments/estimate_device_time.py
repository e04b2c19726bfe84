"""Estimate the device time of a config's models and its `robustness` / `timesteps` studies on the GPU, from the
per-step costs measured there (``experiments/results/gpu/benchmark.json``: VGG5 3x32x32, batch 64, CuPy backend).

The cost model, each assumption named (the benchmark measures attack steps only)::

    attack step (forward + backward) at T, batch b   (a + c T) b / 64     a, c: least squares over the measured T
    forward only                                     1/3 of a step         (a backward costs about two forwards)
    training step                                    1.5 steps             (weight gradients on top)
    ANN                                              the measured ANN step, the same ratios
    fixed                                            OVERHEAD_S            (offline install, CuPy compile, decoding)

Counts follow the studies: every cell crafts each batch once (steps of the crafting model) and scores it on every
scoring seed; clean accuracy is paid once per model; blackbox examples are crafted on each source. A sweep with
``retrain`` trains an SNN-BP at each of its points::

    python experiments/estimate_device_time.py paper_gpu [--benchmark experiments/results/gpu/benchmark.json]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict

import numpy as np

from snn_adv.config import load_config
from snn_adv.configs import config_path
from snn_adv.models import build_classifier

OVERHEAD_S = 90.0
TRAIN_SET = {"cifar10-jpeg": 50_000, "cifar10": 50_000, "cifar100": 50_000}
TEST_SET = 10_000  # CIFAR's test split, where a config takes all of it


def step_costs(benchmark: Path):
    """(snn_step(T, batch), ann_step(batch)) in seconds, from the measured CuPy and ANN attack steps."""
    timing = json.loads(benchmark.read_text())["timing"]
    slope, intercept = np.polyfit([row["T"] for row in timing], [row["ours_cupy_s"] for row in timing], 1)
    ann = float(np.median([row["ann_step_s"] for row in timing]))
    measured_batch = timing[0]["batch"]
    return (lambda t, batch: (intercept + slope * t) * batch / measured_batch,
            lambda batch: ann * batch / measured_batch)


def estimate(config: Dict, benchmark: Path) -> Dict[str, float]:
    snn_step, ann_step = step_costs(benchmark)
    models, data = config["models"], config["data"]
    step = {"ann": lambda b: ann_step(b), "snn_conv": lambda b: snn_step(models["snn_conv"]["timesteps"], b),
            "snn_bp": lambda b: snn_step(models["snn_bp"]["timesteps"], b)}
    n_train = data.get("train_count") or TRAIN_SET.get(data["dataset"], 50_000)
    layers = len(build_classifier(models["arch"], data["dataset"], "snn").neurons())
    costs = {"fixed (install, compile, decode)": OVERHEAD_S}

    def train(recipe, t=None) -> float:
        count, batch = recipe.get("train_count") or n_train, recipe["batch_size"]
        per_step = 1.5 * (ann_step(batch) if t is None else snn_step(t, batch))
        return recipe["epochs"] * math.ceil(count / batch) * per_step

    calibration = models["snn_conv"]
    costs["training: ANN, SNN-conv, SNN-BP (main and source)"] = 2 * (
        train(models["ann"]) + train(models["snn_bp"], models["snn_bp"]["timesteps"])
        + layers * math.ceil(calibration["calibration_count"] / calibration.get("calibration_batch_size", 100))
        * snn_step(calibration["timesteps"], calibration.get("calibration_batch_size", 100)) / 3)
    batch, seeds = config["eval_batch_size"], len(config["eval_seeds"])
    studies = config["studies"]
    if "robustness" in studies:
        section = studies["robustness"]
        batches = math.ceil((section.get("test_count") or data["test_count"] or TEST_SET) / batch)
        scored = {kind: seeds * step[kind](batch) / 3 for kind in step}  # one batch on every seed, one model
        craft = lambda kind, a: a.get("steps", 1) * step[kind](batch)  # noqa: E731
        attacks, every = section["attacks"], sum(scored.values())
        costs["robustness"] = batches * (every + sum(craft(k, a) + scored[k] for a in attacks for k in step)
                                         + sum(craft(s, a) + every for a in attacks for s in section.get("sources", step)))
    if "timesteps" in studies:
        section = studies["timesteps"]
        batches = math.ceil((section.get("test_count") or data["test_count"] or TEST_SET) / batch)
        total = 0.0
        for t in section["timesteps"]:
            if section.get("retrain", True) and t != models["snn_bp"]["timesteps"]:
                total += train(models["snn_bp"], t)
            for _ in section["levels"]:
                total += batches * seeds * snn_step(t, batch) / 3  # clean, once per point
                for attack in section["attacks"]:
                    steps = attack.get("steps", 1)
                    total += batches * (steps * snn_step(t, batch) + seeds * snn_step(t, batch) / 3)  # whitebox
                    total += batches * (steps * ann_step(batch) + seeds * snn_step(t, batch) / 3)  # from the ANN
        costs["timesteps"] = total
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a preset name or a JSON config")
    parser.add_argument("--benchmark", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "gpu" / "benchmark.json")
    args = parser.parse_args()
    costs = estimate(load_config(config_path(args.config)), args.benchmark)
    for part, seconds in costs.items():
        print(f"{part:55s} {seconds:7.0f} s")
    print(f"{'total':55s} {sum(costs.values()):7.0f} s ({sum(costs.values()) / 60:.1f} min)")


if __name__ == "__main__":
    main()
