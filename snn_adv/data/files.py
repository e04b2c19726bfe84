"""Data files: content hashes, ``SHA256SUMS`` manifests and the idx format of the MNIST family.

Every reader names the file it failed on: a truncated or non-gzip idx file, a malformed ``SHA256SUMS`` line or a
file that fails (or is missing from) its manifest is a ``ValueError`` with the file's path in it.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import numpy as np

__all__ = ["SUMS_FILE", "file_sha256", "read_idx", "read_sha256sums", "verify_sha256"]

PathLike = Union[str, os.PathLike]
SUMS_FILE = "SHA256SUMS"

# path -> ((size, mtime_ns), hex digest): a file is hashed again only when its size or mtime changes
_DIGESTS: Dict[str, Tuple[Tuple[int, int], str]] = {}


def file_sha256(path: PathLike) -> str:
    """SHA-256 hex digest of a file's content, memoised per (path, size, mtime)."""
    path = Path(path)
    stat = path.stat()
    signature = (stat.st_size, stat.st_mtime_ns)
    cached = _DIGESTS.get(str(path))
    if cached is not None and cached[0] == signature:
        return cached[1]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _DIGESTS[str(path)] = (signature, digest.hexdigest())
    return digest.hexdigest()


_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *]?(\S.*)$")


def read_sha256sums(path: PathLike) -> Dict[str, str]:
    """``{file name: lower-case sha256}`` of a manifest in ``sha256sum`` format (``<64 hex>  <name>`` per line;
    blank lines and ``#`` comments allowed). Any other line is a ``ValueError`` naming the file and line."""
    path = Path(path)
    sums: Dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SUMS_LINE.match(line.rstrip())
        if match is None:
            raise ValueError(f"file {str(path)!r} line {number} is not '<64 hex digits>  <file name>': {line[:80]!r}")
        sums[match.group(2)] = match.group(1).lower()
    return sums


def verify_sha256(files: Sequence[Path], sums_file: Path) -> Dict[str, str]:
    """Check every file of ``files`` against the manifest ``sums_file``; returns ``{name: sha256}``.

    A missing manifest, or a file it does not list, is an error (a check that silently skips a file checks nothing).
    """
    if not sums_file.is_file():
        raise FileNotFoundError(f"file {str(sums_file)!r} is missing: the files in {str(sums_file.parent)!r} cannot be "
                                f"verified; put the {SUMS_FILE} shipped with them next to them")
    expected = read_sha256sums(sums_file)
    digests = {}
    for path in files:
        want = expected.get(path.name)
        if want is None:
            raise ValueError(f"file {str(path)!r} is not listed in {str(sums_file)!r}: add its sha256 line (sha256sum "
                             f"{path.name} >> {SUMS_FILE}) or remove the manifest")
        digest = file_sha256(path)
        if digest != want:
            raise ValueError(f"file {str(path)!r} fails its {SUMS_FILE} check (sha256 {digest}, expected {want}): it is "
                             "corrupt or incomplete; copy or download it again")
        digests[path.name] = digest
    return digests


# --------------------------------------------------------------------------------------------------------------
# idx files (the MNIST family's format); torchvision only reads them unzipped inside its own folder layout.
# --------------------------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or plain): magic ``0 0 dtype ndim``, ``ndim`` big-endian uint32 sizes, data."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"file {str(path)!r} is not a complete gzip file ({error}): copy or download it again") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"file {str(path)!r} is not an idx file (bad magic number {data[:4]!r})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"file {str(path)!r} is truncated: its header is cut off")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = len(data) - 4 - 4 * ndim
    expected = int(np.prod(shape))
    if body != expected * dtype.itemsize:
        raise ValueError(f"file {str(path)!r} is truncated or padded: header says shape {shape} ({expected * dtype.itemsize} "
                         f"bytes), found {body} bytes")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
