"""Cost of the robustness protocol against one APGD-CE run of 100 iterations without EOT on all images.

The protocol's target (issue: a converged protocol): on the CIFAR-10 SNN-BP (T = 8, 1000 images), the whole protocol,
certificate included, costs at most 3x that APGD run, thanks to the cascade. Prints both wall times, their ratio, the
ratio in forward-backward passes per image (a forward alone counts :data:`snn_adv.protocol.report.FORWARD_COST`),
and each stage's share; ``--out`` writes the JSON. The protocol's stages are kept in ``--work`` (resumable).

``--report`` takes the ``report.json`` of a finished protocol run on the same model and images (e.g. the
``protocol`` study's) instead of running it again: its recorded stage times and passes are the protocol's cost.
``--baseline-images N`` measures the baseline on the first N images only and scales it to all of them: APGD
without early stopping runs its 100 iterations on every image, so its cost is linear in the images.

    python experiments/benchmark_protocol.py CHECKPOINT [--source ANN.pt] --data-root DIR [--test-count 1000]
        [--version snn-v2] [--report runs/cifar10_cpu/protocol/snn_bp/report.json] [--baseline-images 200]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from snn_adv import checkpoints, evaluate
from snn_adv.attacks import APGD
from snn_adv.data import load_tensors
from snn_adv.io import atomic_write_json, provenance
from snn_adv.protocol import DEFAULT_VERSION, VERSIONS, robust_accuracy
from snn_adv.protocol.report import FORWARD_COST
from snn_adv.protocol.run import CostMeter


def apgd_baseline(model, images, labels, eps: float, seeds: List[int], total: int) -> Dict[str, float]:
    """One APGD-CE run of 100 iterations, no EOT, on every one of ``images``: passes per image, and seconds scaled
    to ``total`` images (its cost is linear in the images)."""
    start = time.perf_counter()
    with CostMeter([model]) as meter:
        result = evaluate(model, (images, labels), APGD(model, eps=eps, steps=100, eot=1), scoring_seeds=seeds,
                          batch_size=100, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds * total / len(images), "measured_seconds": seconds, "measured_images": len(images),
            "accuracy": result.adversarial_accuracy, "accuracy_interval": list(result.confidence_interval("adversarial")),
            "passes_per_image": (meter.gradient + FORWARD_COST * meter.forward) / len(images)}


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--source", action="append", default=[])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--test-count", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--version", default=DEFAULT_VERSION, choices=sorted(VERSIONS), help="battery version")
    parser.add_argument("--work", default="runs/benchmark_protocol")
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", default=None, help="report.json of a finished protocol run (not rerun)")
    parser.add_argument("--baseline-images", type=int, default=None, help="baseline on the first N images, scaled")
    args = parser.parse_args(argv)
    model = checkpoints.load(args.checkpoint)
    sources = {Path(p).stem: checkpoints.load(p) for p in args.source}
    images, labels = load_tensors(model.arch["dataset"], "test", count=args.test_count, root=args.data_root, seed=0)
    seeds = [0, 1, 2]
    count = args.baseline_images or len(images)
    baseline = apgd_baseline(model, images[:count], labels[:count], args.eps, seeds, len(images))
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        if len(saved["robust"]) != len(images):
            raise SystemExit(f"--report: {len(saved['robust'])} images, --test-count {len(images)}")
        headline, rows, total, seconds = saved["headline"], saved["stages"], saved["total_cost"], saved["seconds"]
    else:
        start = time.perf_counter()
        report = robust_accuracy(model, (images, labels), eps=args.eps, version=args.version, sources=sources,
                                 scoring_seeds=seeds, out=args.work, progress=False)
        seconds = time.perf_counter() - start
        headline, rows, total = report.headline(), report.rows(), report.total_cost()
        print(report.table_markdown())
    summary = {
        "headline": headline, "baseline": baseline, "protocol_seconds": seconds,
        "protocol_passes_per_image": total, "ratio_seconds": seconds / baseline["seconds"],
        "ratio_passes": total / baseline["passes_per_image"],
        "stage_share": {r["stage"]: r["cost"] / total for r in rows},
        "threads": torch.get_num_threads(), "provenance": provenance(),
    }
    print(f"APGD-CE 100 (no EOT): {baseline['seconds']:.0f} s, {baseline['passes_per_image']:.1f} passes/image; "
          f"protocol: {seconds:.0f} s, {total:.1f} passes/image; ratio {summary['ratio_seconds']:.2f} (time), "
          f"{summary['ratio_passes']:.2f} (passes)")
    if args.out:
        atomic_write_json(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
