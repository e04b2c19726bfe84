"""Content fingerprints of datasets: what a result depends on is the data's bytes, never the folder it sits in.

``dataset_fingerprint(spec, root)`` hashes the dataset's spec and, for every file the loaders read (found by the
same :func:`snn_adv.data.sources.locate`), its name relative to the data folder and its sha256:

    bundled subset          the package's npz
    idx folder              the four idx files (checked against SHA256SUMS when present)
    CIFAR-10 (JPEG copy)    the two archives, checked against SHA256SUMS
    image tree              every image file of train/ and test/ (or val/): relative path and content
    torchvision layout      the files torchvision's dataset class reads

File hashes are memoised per (path, size, mtime) (:func:`snn_adv.data.files.file_sha256`), so a fingerprint asked
for every cell costs a ``stat`` per file; a file changed in place is hashed again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Optional

from .files import SUMS_FILE, file_sha256, verify_sha256
from .folders import tree_digests
from .registry import DatasetSpec, PathLike, dataset_info, where_to_put
from .sources import JPEG_ARCHIVES, SPLITS, bundled_path, idx_files, locate, split_folder, torchvision_files

__all__ = ["dataset_fingerprint"]


def _file_digests(files, base: Path) -> Dict[str, str]:
    return {path.relative_to(base).as_posix(): file_sha256(path) for path in files}


def dataset_fingerprint(name: DatasetSpec, root: Optional[PathLike] = None) -> str:
    """16 hex digits of a hash of the dataset's spec and the content of the files :func:`snn_adv.data.load_dataset`
    reads for it (module docstring): equal for equal data wherever it lies, different when a byte changes.

    :param name: a dataset spec (registered name, image-folder dict or :class:`~snn_adv.data.DatasetInfo`).
    :param root: the data folder, as given to the loaders.
    """
    info = dataset_info(name)
    source = locate(info, root)
    directory = source.directory
    if source.kind == "bundled":
        digests = _file_digests([bundled_path()], directory)
    elif source.kind == "idx":
        files = [path for split in SPLITS for path in idx_files(directory, split)]
        if (directory / SUMS_FILE).is_file():
            verify_sha256(files, directory / SUMS_FILE)
        digests = _file_digests(files, directory)
    elif source.kind == "jpeg-archives":
        digests = verify_sha256([directory / JPEG_ARCHIVES[split] for split in SPLITS], directory / SUMS_FILE)
    elif source.kind == "image-tree":
        digests = {}
        for split in SPLITS:
            folder = split_folder(directory, split)
            digests.update({f"{split}/{path}": digest for path, digest in tree_digests(folder, info).items()})
    else:
        files = torchvision_files(info.name, directory)
        missing = [path for path in files if not path.is_file()]
        if missing:
            raise FileNotFoundError(where_to_put(info.name, Path(root) if root is not None else None,
                                                 f"not found (no file {str(missing[0])!r})"))
        digests = _file_digests(files, directory)
    text = json.dumps({"dataset": info.spec(), "files": digests}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
