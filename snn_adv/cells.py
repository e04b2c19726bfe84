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
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import torch

from .io import PathLike, atomic_write, atomic_write_json, provenance
from .progress import log, progress as progress_bar
from .seeds import canonical_json, derive_seed
from .training import seed_everything

__all__ = [
    "cell_key",
    "record_digest",
    "CellStore",
    "DamagedCellError",
    "claim_output_folder",
    "run_cells",
    "write_table",
    "markdown_table",
]

Settings = Mapping[str, Any]


def cell_key(settings: Settings) -> str:
    """16 hex digits identifying a cell's settings (the file name of its result)."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------
def record_digest(record: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a cell record's canonical JSON without its ``digest`` entry: any changed value (an
    outcome, a setting, the provenance, the time) changes it, while JSON formatting and key order do not."""
    body = {key: value for key, value in record.items() if key != "digest"}
    return "sha256:" + hashlib.sha256(canonical_json(body).encode()).hexdigest()


class DamagedCellError(ValueError):
    """A result cell file that fails verification (not JSON, no digest, or a digest that does not match)."""


class CellStore:
    """One JSON file per finished cell under ``directory/cells/``::

        {"settings": {...}, "result": {...}, "seconds": 12.3, "provenance": {git commit, versions, seed, device},
         "digest": "sha256:..."}

    A file is only ever written whole (temporary file, fsync, rename), so any file present is a finished cell, and
    it is only ever used after its :func:`record_digest` has been checked: a damaged or edited cell is refused with
    :class:`DamagedCellError` naming the file, or, with ``recompute=True`` (``snn-adv study --recompute``), computed
    again and replaced. Intact cells are reused either way.
    """

    def __init__(self, directory: PathLike, recompute: bool = False):
        self.directory = Path(directory)
        self.cells_dir = self.directory / "cells"
        self.recompute = recompute

    def path(self, settings: Settings) -> Path:
        return self.cells_dir / f"{cell_key(settings)}.json"

    @staticmethod
    def read(path: Path) -> Dict[str, Any]:
        """The record in the cell file ``path``, verified against its digest (:class:`DamagedCellError` if not)."""
        try:
            record = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problem = f"is not valid JSON ({error})"
        else:
            if not isinstance(record, dict) or "digest" not in record:
                problem = "carries no digest (written by an older snn-adv, or edited)"
            elif record["digest"] != record_digest(record):
                problem = "does not match its digest (edited or damaged since it was written)"
            else:
                return record
        raise DamagedCellError(f"result cell {str(path)!r} {problem}, so it is not used: delete it, or rerun with "
                               "`--recompute` (CellStore(recompute=True)) to compute it again")

    def load(self, settings: Settings) -> Optional[Dict[str, Any]]:
        """The verified record for ``settings``, or None if the cell has not been computed (or is damaged and
        ``recompute`` is set)."""
        path = self.path(settings)
        if not path.is_file():
            return None
        try:
            record = self.read(path)
            if canonical_json(record.get("settings")) != canonical_json(settings):
                raise DamagedCellError(f"result cell {str(path)!r} holds other settings than its name says (moved or "
                                       "edited): delete it, or rerun with `--recompute` to compute it again")
        except DamagedCellError:
            if not self.recompute:
                raise
            log(f"result cell {str(path)!r} fails verification: --recompute computes it again")
            return None
        return record

    def save(self, settings: Settings, result: Mapping[str, Any], seconds: float, seed: int) -> Dict[str, Any]:
        """Write the cell's record with its digest; return it as a resumed run reads it back (JSON round trip)."""
        record = json.loads(json.dumps({
            "settings": dict(settings),
            "result": dict(result),
            "seconds": round(seconds, 3),
            "provenance": provenance(seed=seed, cell=cell_key(settings)),
        }, sort_keys=True, default=str))
        record["digest"] = record_digest(record)
        if not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):  # rank 0 writes
            atomic_write_json(self.path(settings), record)
        return record

    def records(self) -> List[Dict[str, Any]]:
        """Every finished cell in the store, verified, sorted by file name."""
        return [self.read(p) for p in sorted(self.cells_dir.glob("*.json"))]


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
    bar = progress_bar(cells, desc, unit="cell", enabled=None if progress else False)
    for settings, key in zip(bar, keys):
        record = store.load(settings)
        if record is None:
            cell_seed = derive_seed(seed, key)
            seed_everything(cell_seed)
            start = time.perf_counter()
            result = compute(settings)
            seconds = time.perf_counter() - start
            record = store.save(settings, result, seconds, cell_seed)  # exactly what a resumed run reads back
            if progress and bar.disable:  # no live bar (a log file): one line per computed cell
                log(f"{desc}: cell {len(records) + 1}/{len(cells)} computed in {seconds:.0f} s")
        else:
            done += 1
        records.append(record)
        bar.set_postfix(resumed=done)
    return records


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _with_interval(columns: Sequence[str]) -> List[str]:
    """The columns ``c`` of ``columns`` that come with ``c_low`` and ``c_high`` (an interval)."""
    return [c for c in columns if f"{c}_low" in columns and f"{c}_high" in columns]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns`` (floats to 4 significant digits). A column ``c``
    with companions ``c_low`` and ``c_high`` is shown as one column ``c [low, high]``."""
    intervals = _with_interval(columns)
    bounds = {f"{c}_{end}" for c in intervals for end in ("low", "high")}
    shown = [c for c in columns if c not in bounds]

    def cell(row: Mapping[str, Any], column: str) -> str:
        if column in intervals and isinstance(row.get(column), (int, float)):
            return f"{_fmt(row[column])} [{_fmt(row[column + '_low'])}, {_fmt(row[column + '_high'])}]"
        return _fmt(row.get(column))

    header = [f"{c} [low, high]" if c in intervals else c for c in shown]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in shown) + " |"]
    lines += ["| " + " | ".join(cell(row, c) for c in shown) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], stem: PathLike,
                markdown: Optional[str] = None) -> str:
    """Write ``stem.md`` (markdown, intervals as ``value [low, high]``) and ``stem.csv`` (every column numeric,
    intervals as ``c, c_low, c_high``) atomically; return the markdown. ``markdown`` replaces the markdown form
    (e.g. a wide table of the same numbers)."""
    stem = Path(stem)
    markdown = markdown_table(rows, columns) if markdown is None else markdown
    with atomic_write(stem.with_suffix(".md"), "w") as handle:
        handle.write(markdown)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(stem.with_suffix(".csv"), "w") as handle:
        handle.write(buffer.getvalue())
    return markdown

