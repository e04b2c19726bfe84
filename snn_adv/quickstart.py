"""``snn-adv quickstart``: the paper's robustness table end to end, offline, in minutes on a laptop CPU.

On the Fashion-MNIST subset shipped in the package it trains a small VGG (ANN) and a separately seeded copy (the
blackbox source), converts both to SNNs (SNN-conv, IF neurons, threshold balancing), fine-tunes both with
surrogate-gradient BPTT (SNN-BP, LIF neurons), attacks every model whitebox and blackbox with FGSM and PGD, and
writes the table (markdown, CSV, JSON with provenance), a bar plot and every result cell to ``out``.

It is the ``robustness`` study of :mod:`snn_adv.studies` with the config :data:`QUICKSTART_CONFIG`, so it resumes
after an interruption (finished models and cells are kept) and gives the same numbers on a rerun.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .io import PathLike
from .config import merge

__all__ = ["QUICKSTART_CONFIG", "TEST_BUDGET", "quickstart"]

_EPS = 8 / 255
QUICKSTART_CONFIG: Dict[str, Any] = {
    "preset": "quickstart",
    "description": "offline demo: bundled Fashion-MNIST subset (6000 train / 1000 test), a small VGG, small T",
    "seed": 0,
    "eval_seeds": [0, 1, 2],
    "eval_batch_size": 100,
    "data": {"dataset": "fashion-mnist-bundled", "root": None, "train_count": None, "test_count": 300, "subset_seed": 0},
    "models": {
        "arch": "vgg-tiny",
        "arch_kwargs": {"hidden": 128},
        "seeds": {"main": 1, "source": 2},
        "ann": {"epochs": 4, "lr": 0.05, "batch_size": 64},
        "snn_conv": {"timesteps": 16, "percentile": 99.9, "calibration_count": 500},
        "snn_bp": {"timesteps": 8, "leak": 0.99, "threshold_scale": 0.7, "epochs": 1, "lr": 5e-4, "batch_size": 50,
                   "train_count": 2000},
    },
    "studies": {
        "robustness": {
            "attacks": [
                {"name": "fgsm", "eps": _EPS, "label": "FGSM"},
                {"name": "pgd", "eps": _EPS, "alpha": 2 / 255, "steps": 7, "random_start": True, "label": "PGD"},
            ]
        }
    },
}

#: Overrides for a seconds-scale run (the test suite): fewer images, epochs and steps.
TEST_BUDGET: Dict[str, Any] = {
    "eval_seeds": [0, 1],
    "eval_batch_size": 32,
    "data": {"train_count": 1000, "test_count": 32},
    "models": {"ann": {"epochs": 2}, "snn_conv": {"timesteps": 8, "calibration_count": 64},
               "snn_bp": {"timesteps": 4, "train_count": 64, "batch_size": 32}},
    "studies": {"robustness": {"attacks": [
        {"name": "fgsm", "eps": _EPS, "label": "FGSM"},
        {"name": "pgd", "eps": _EPS, "alpha": 2 / 255, "steps": 2, "random_start": True, "label": "PGD"},
    ]}},
}


def quickstart(out: Optional[PathLike] = None, overrides: Optional[Mapping[str, Any]] = None,
               progress: bool = True) -> Path:
    """Run the quickstart into ``out`` (default ``./snn-adv-quickstart``), print the table, return the folder."""
    from .studies import run_study

    out = Path(out if out is not None else "snn-adv-quickstart").resolve()
    config = merge(QUICKSTART_CONFIG, overrides or {})
    start = time.perf_counter()
    print(f"snn-adv quickstart: results go to {out}", flush=True)
    table = run_study("robustness", config, out, progress=progress)
    print()
    print("Accuracy (%) on", config["data"]["test_count"], "test images, mean ± std over",
          len(config["eval_seeds"]), "Poisson seeds (WB whitebox; BB blackbox from a separately trained source):")
    print(table)
    print(f"table: {out / 'robustness' / 'table.md'} (also .csv, .json); plot: {out / 'robustness' / 'accuracy.png'}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return out
