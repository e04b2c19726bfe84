"""Add the content digest (``snn_adv.cells.record_digest``) to result cells written before cells carried one.

Cells written by snn-adv since the digest was introduced are sealed at save; this script seals the older ones (the
committed results, or a user's output folder from an older snn-adv) so that they are verified when read, and
refuses a file whose digest is present but wrong (damaged: recompute it instead)::

    python experiments/seal_cells.py experiments/results/*/*/cells/*.json

Sealing vouches for nothing by itself: it only freezes a file's content from now on. The committed cells were
checked first by regenerating every committed table and comparison from them (``tests/test_committed_results.py``,
slow tests).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from snn_adv.cells import CellStore, DamagedCellError, record_digest
from snn_adv.io import atomic_write_json


def seal(path: Path) -> bool:
    """Seal one cell file; True if it was changed, False if it already verified."""
    record = json.loads(path.read_text())
    if "digest" in record:
        CellStore.read(path)  # raises DamagedCellError naming the file when the digest does not match
        return False
    record["digest"] = record_digest(record)
    atomic_write_json(path, record)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", type=Path, help="cell files (<out>/<study>/cells/<key>.json)")
    args = parser.parse_args()
    try:
        sealed = sum(seal(path) for path in args.cells)
    except DamagedCellError as error:
        raise SystemExit(f"seal_cells: {error}") from None
    print(f"sealed {sealed} of {len(args.cells)} cell files (the others already carried a valid digest)")


if __name__ == "__main__":
    main()
