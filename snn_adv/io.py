"""Crash-safe files and provenance.

Every checkpoint and result goes through :func:`atomic_write`: write a temporary file in the same directory,
flush and fsync it, then ``os.replace`` it over the target (atomic on POSIX) and fsync the directory. A process
killed at any moment leaves either the old complete file or the new complete file, never half of one.

:func:`provenance` ties a result to its code twice: the git commit (``-dirty`` when tracked files differ from it)
and :func:`source_digest`, a hash of the package's own source files, which still names the code where the git
metadata does not (a copied tree, a commit with uncommitted edits).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import secrets
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch

from .version import __version__

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "provenance", "source_digest"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Context manager yielding a file object whose content replaces ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _exclusive_temporary(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline (diff-friendly results files)."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def _exclusive_temporary(path: Path) -> Tuple[int, str]:
    """A new ``.<name>.<random>.tmp`` beside ``path``, opened exclusively with mode 0666 less the process umask
    (mkstemp's 0600 would make every result private to its writer; reading the umask would mean setting it)."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: the files of the package that :func:`source_digest` hashes (relative to the package folder)
SOURCE_PATTERNS = ("**/*.py", "configs/*.json")


def source_digest(package: Optional[PathLike] = None) -> str:
    """``sha256:<hex>`` of the package's source: every file matching :data:`SOURCE_PATTERNS` under ``package``
    (default: this package's folder), in sorted order of its relative POSIX path, each hashed as
    ``path NUL length NUL bytes`` (so neither a renamed nor a moved byte goes unnoticed)."""
    root = Path(package) if package is not None else Path(__file__).resolve().parent
    files = sorted({p for pattern in SOURCE_PATTERNS for p in root.glob(pattern)
                    if p.is_file()}, key=lambda p: p.relative_to(root).as_posix())
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return f"sha256:{digest.hexdigest()}"


def provenance(**extra: Any) -> Dict[str, Any]:
    """Where a result came from: git commit, :func:`source_digest`, package versions, hardware, plus ``extra``
    (seed, config...)."""
    from importlib import metadata

    import numpy


    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        "git_commit": _git_commit(),
        "source_digest": source_digest(),
        "snn_adv": __version__,
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "spikingjelly": version("spikingjelly"),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }
