"""The resumable cell runner: one atomic file per result cell, seeds derived from the config, tables.

A *study* is a list of *cells*; a cell is a dict of JSON settings (model, attack, eps, T, leak, data, seeds...)
whose result is a dict of numbers. :func:`run_cells` computes each cell unless a finished file for exactly those
settings already exists, and writes every finished cell at once with :func:`~snn_adv.io.atomic_write_json`, so a
run killed at any moment (SIGKILL included) loses at most the cell in progress, and a rerun redoes only that one.

Reproducibility: before a cell is computed, every global generator is seeded with
``derive_seed(config_seed, cell_key)``, a hash of the run's seed and the cell's settings. A cell's numbers therefore
depend on its settings alone, never on which cells ran before it in the same process, which is what makes a resumed
run identical to an uninterrupted one. The records :func:`run_cells` returns are the ones a resumed run reads back
from disk (JSON round trip), so every table built from them is the same byte for byte.

(Config loading, :func:`load_config`, :func:`merge` and :func:`parse_overrides`, lives here until it moves to its
own module.)
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .io import PathLike, atomic_write, atomic_write_json, provenance
from .seeds import canonical_json, derive_seed
from .training import seed_everything

__all__ = [
    "load_config",
    "merge",
    "parse_overrides",
    "cell_key",
    "CellStore",
    "claim_output_folder",
    "run_cells",
    "write_table",
    "markdown_table",
    "mean_std",
]

Settings = Mapping[str, Any]


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------
def load_config(path: PathLike, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Read a JSON config file; ``overrides`` (nested dicts) are merged over it, key by key. A top-level
    ``"extends": "base.json"`` (path relative to the file) starts from that config instead of from nothing.

    JSON rather than TOML because the stdlib reads it on every supported Python (``tomllib`` is 3.11+).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"argument 'config' = {str(path)!r}: no such file")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"argument 'config' = {str(path)!r}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"argument 'config' = {str(path)!r}: must hold a JSON object at the top level")
    base = config.pop("extends", None)  # "extends": "other.json" (relative to this file): its values, then ours
    if base is not None:
        config = merge(load_config(path.parent / base), config)
    return merge(config, overrides or {})


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge: values of ``override`` win; nested dicts are merged, not replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` -> ``{"a": {"b": 1}, "c": [2, 3]}`` (values are JSON; bare words are strings)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"argument '--set' = {item!r}: must look like KEY=VALUE, e.g. data.test_count=200")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def cell_key(settings: Settings) -> str:
    """16 hex digits identifying a cell's settings (the file name of its result)."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------
class CellStore:
    """One JSON file per finished cell under ``directory/cells/``::

        {"settings": {...}, "result": {...}, "seconds": 12.3, "provenance": {git commit, versions, seed, device}}

    A file is only ever written whole (temporary file, fsync, rename), so any file present is a finished cell.
    """

    def __init__(self, directory: PathLike):
        self.directory = Path(directory)
        self.cells_dir = self.directory / "cells"

    def path(self, settings: Settings) -> Path:
        return self.cells_dir / f"{cell_key(settings)}.json"

    def load(self, settings: Settings) -> Optional[Dict[str, Any]]:
        """The finished record for ``settings``, or None if the cell has not been computed."""
        path = self.path(settings)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if canonical_json(record.get("settings")) != canonical_json(settings):
            raise RuntimeError(f"cell file {path} holds other settings than its name says (hash collision or edit)")
        return record

    def save(self, settings: Settings, result: Mapping[str, Any], seconds: float, seed: int) -> Dict[str, Any]:
        record = {
            "settings": dict(settings),
            "result": dict(result),
            "seconds": round(seconds, 3),
            "provenance": provenance(seed=seed, cell=cell_key(settings)),
        }
        if not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):  # rank 0 writes
            atomic_write_json(self.path(settings), record)
        return record

    def records(self) -> List[Dict[str, Any]]:
        """Every finished cell in the store, sorted by file name."""
        return [json.loads(p.read_text()) for p in sorted(self.cells_dir.glob("*.json"))]


@contextlib.contextmanager
def claim_output_folder(directory: PathLike) -> Iterator[Path]:
    """Hold ``directory`` for a run: create it, and remove the temporary files a killed run left behind.

    Every run holds a shared ``flock`` on ``directory/.lock`` while it works. A run that can take the lock
    exclusively is the only live one, so every ``.*.tmp`` file under the folder (an unfinished
    :func:`~snn_adv.io.atomic_write`) is an orphan of a killed run and is deleted; with another run live, its
    temporary files are left alone. (Without ``fcntl``, e.g. on Windows, nothing is cleaned.)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield directory
        return
    with open(directory / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for orphan in directory.rglob(".*.tmp"):
                orphan.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # another run is live: its temporary files are not orphans
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield directory


def run_cells(
    cells: Sequence[Settings],
    compute: Callable[[Settings], Mapping[str, Any]],
    store: CellStore,
    *,
    seed: int,
    desc: str = "cells",
    progress: bool = True,
) -> List[Dict[str, Any]]:
    """Compute every cell not yet in ``store`` and return all records, in the order of ``cells``.

    ``compute(settings) -> {name: number}`` runs after :func:`seed_everything` ``(derive_seed(seed, key))``; its
    result must be JSON-serialisable. Finished cells are skipped (a resumed run does only the missing ones).
    """
    keys = [cell_key(c) for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError(f"argument 'cells': {len(keys) - len(set(keys))} duplicate cell(s) in study '{desc}'")
    records: List[Dict[str, Any]] = []
    done = 0
    bar = tqdm(cells, desc=desc, unit="cell", disable=not progress, leave=False)
    for settings, key in zip(bar, keys):
        record = store.load(settings)
        if record is None:
            cell_seed = derive_seed(seed, key)
            seed_everything(cell_seed)
            start = time.perf_counter()
            result = compute(settings)
            record = json.loads(json.dumps(store.save(settings, result, time.perf_counter() - start, cell_seed),
                                           sort_keys=True, default=str))  # exactly what a resumed run reads back
        else:
            done += 1
        records.append(record)
        bar.set_postfix(resumed=done)
    return records


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------
def mean_std(values: Iterable[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count: the error bars over Poisson seeds."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise ValueError("argument 'values': need at least one value")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": int(array.size)}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns`` (floats to 4 significant digits)."""
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], stem: PathLike) -> str:
    """Write ``stem.md`` (markdown) and ``stem.csv`` atomically; return the markdown."""
    stem = Path(stem)
    markdown = markdown_table(rows, columns)
    with atomic_write(stem.with_suffix(".md"), "w") as handle:
        handle.write(markdown)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(stem.with_suffix(".csv"), "w") as handle:
        handle.write(buffer.getvalue())
    return markdown

