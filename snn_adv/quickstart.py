"""``snn-adv quickstart``: the paper's robustness table end to end, offline, in about a minute on a laptop CPU.

It is the ``robustness`` study of the preset ``quickstart`` (``snn_adv/configs/quickstart.json``): on the
Fashion-MNIST subset shipped in the package it trains a small VGG (ANN) and a separately seeded copy (the blackbox
source), converts both to SNNs (SNN-conv, IF neurons, threshold balancing), fine-tunes both with surrogate-gradient
BPTT (SNN-BP, LIF neurons), attacks every model whitebox and blackbox with FGSM and PGD, and writes the table
(markdown, CSV, JSON with provenance), a bar plot and every result cell to ``out``. It resumes after an
interruption (finished models and cells are kept) and gives the same numbers on a rerun.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional

from .io import PathLike

__all__ = ["quickstart"]


def quickstart(out: Optional[PathLike] = None, overrides: Optional[Mapping[str, Any]] = None,
               progress: bool = True, recompute: bool = False) -> Path:
    """Run the quickstart preset (with ``overrides`` merged over it) into ``out`` (default
    ``./snn-adv-quickstart``), print the table, return the folder. ``recompute``: recompute result cells that fail
    verification instead of refusing them (:class:`~snn_adv.cells.CellStore`)."""
    from .config import load_config
    from .configs import config_path
    from .studies import run_study

    out = Path(out if out is not None else "snn-adv-quickstart")
    config = load_config(config_path("quickstart"), overrides)
    start = time.perf_counter()
    print(f"snn-adv quickstart: results go to {out}", flush=True)
    table = run_study("robustness", config, out, progress=progress, recompute=recompute)
    print()
    print(f"Accuracy (%) [95 % interval over {config['data']['test_count']} test images and "
          f"{len(config['eval_seeds'])} Poisson seeds] (WB whitebox; BB blackbox from a separately trained source):")
    print(table)
    folder = out / "robustness"
    print(f"table: {folder / 'table.md'} (also .csv, .json); self-checks: {folder / 'checks.md'}; paired "
          f"comparisons: {folder / 'comparisons.md'}; plot: {folder / 'accuracy.png'}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return out
