"""Provenance: the source digest that ties a result to its code where git metadata cannot."""
import shutil
from pathlib import Path

import snn_adv
from snn_adv.io import provenance, source_digest


def _package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "b.py").write_text("y = 2\n")
    (root / "configs" / "c.json").write_text("{}\n")
    return root


def test_source_digest_sees_every_source_byte_and_nothing_else(tmp_path):
    root = _package(tmp_path)
    digest = source_digest(root)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert source_digest(shutil.copytree(root, tmp_path / "copy")) == digest  # a copied tree: same code, same digest
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (root / "notes.txt").write_text("not source")
    (root / "sub" / "data.npz").write_bytes(b"\1")
    assert source_digest(root) == digest
    for change in (lambda: (root / "sub" / "b.py").write_text("y = 3\n"),          # one byte of a module
                   lambda: (root / "configs" / "c.json").write_text("{ }\n"),      # a preset
                   lambda: (root / "sub" / "b.py").rename(root / "b.py"),          # a module moved
                   lambda: (root / "sub" / "new.py").write_text("")):              # a new, empty module
        change()
        assert source_digest(root) != digest
        digest = source_digest(root)


def test_provenance_records_the_digest_of_this_package():
    assert provenance()["source_digest"] == source_digest(Path(snn_adv.__file__).parent)
