"""Content fingerprints of datasets: what a result depends on is the data's bytes, never the folder it sits in.

(Minimal version: the bundled subset and idx folders are hashed; any other dataset hashes every file of its
resolved folder.)
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import List, Optional, Tuple

from . import PathLike, _IDX_FILES, _find_idx_dir, _idx_file, bundled_path, dataset_info, default_data_root

__all__ = ["dataset_fingerprint"]


def _data_files(name: str, root: Optional[PathLike]) -> Tuple[Path, List[Path]]:
    """(base folder, the files :func:`snn_adv.data.load_dataset` reads for ``name``)."""
    if name == "fashion-mnist-bundled":
        path = bundled_path()
        return path.parent, [path]
    if name in ("fashion-mnist", "mnist"):
        directory = _find_idx_dir(name, root)
        if directory is not None:
            return directory, [_idx_file(directory, stem) for stems in _IDX_FILES.values() for stem in stems]
    folder = Path(root) if root is not None else default_data_root()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"dataset {name!r}: no files under {str(folder)!r} to fingerprint")
    return folder, files


@functools.lru_cache(maxsize=None)
def _hash_files(base: Path, files: Tuple[Tuple[Path, int, int], ...]) -> str:
    """Hash of relative names and contents; cached by (path, size, mtime) so an unchanged file is read once."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def dataset_fingerprint(name: str, root: Optional[PathLike] = None) -> str:
    """16 hex digits of a hash of the content (file names relative to the data folder, and bytes) that
    :func:`snn_adv.data.load_dataset` reads for ``name``; a file is rehashed only when its size or mtime changed."""
    dataset_info(name)
    base, files = _data_files(name, root)
    stats = tuple((path, path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    return _hash_files(base, stats)
