"""Image files -> uint8 arrays, decoded once: the CIFAR-10 (JPEG copy) archives and image trees in torchvision's
``ImageFolder`` layout (the extracted CIFAR-10 (JPEG copy) and users' own folders share this code).

Decoding 60,000 JPEGs takes tens of seconds, so each split is decoded once into an ``.npz`` in
:func:`decoded_cache_dir`, named and keyed by the hash of what it was decoded from (the archive's sha256, checked
against ``SHA256SUMS``; for a tree, the relative paths and contents of its files) and the decoding settings
(size, channels). The cache file also stores that key and the sha256 of its arrays: a cache whose key or content
does not match is rebuilt (with a warning), never trusted. Images are sorted by their path inside the split, so
an archive and its extracted tree give the same arrays.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..io import atomic_write
from .files import SUMS_FILE, file_sha256, verify_sha256
from .registry import DatasetInfo

__all__ = ["CACHE_FORMAT", "decoded_cache_dir", "load_archive_split", "load_tree_split", "read_archive_split",
           "read_tree_split", "tree_digests"]

CACHE_FORMAT = 1  # bump when the decoding changes: every cached array is then rebuilt
Arrays = Tuple[np.ndarray, np.ndarray]


def decoded_cache_dir() -> Path:
    """``$SNN_ADV_CACHE/decoded`` (default ``~/.cache/snn-adv/decoded``): decoded image arrays."""
    return Path(os.environ.get("SNN_ADV_CACHE", "~/.cache/snn-adv")).expanduser() / "decoded"


def _image_array(image: Image.Image, info: DatasetInfo) -> np.ndarray:
    """``image`` as uint8 ``[H, W, C]`` at ``info.input_size``: scaled so that it covers the size, then centre-cropped."""
    image = image.convert("RGB" if info.in_channels == 3 else "L")
    height, width = info.input_size
    if image.size != (width, height):
        scale = max(height / image.height, width / image.width)
        image = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                             Image.BILINEAR)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _decode(data: bytes, info: DatasetInfo, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _image_array(image, info)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{where} is not a readable image ({error}): the data is corrupt") from error


def _stack(items: List[Tuple[str, int, np.ndarray]], where: str) -> Arrays:
    if not items:
        raise ValueError(f"{where} holds no images")
    items.sort(key=lambda item: item[0])
    return np.stack([item[2] for item in items]), np.asarray([item[1] for item in items], dtype=np.int64)


def _tar_bytes(archive: Path) -> bytes:
    """The whole decompressed tar stream of a ``.tar.gz``, read to its end so that gzip checks its CRC-32 and
    length (``tarfile`` alone stops at the end-of-archive marker and never reads the trailer)."""
    try:
        return gzip.decompress(archive.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"archive {str(archive)!r} is corrupt or truncated ({type(error).__name__}: {error}): copy or "
                         "download it again") from error


def read_archive_split(archive: Path, split: str, info: DatasetInfo) -> Arrays:
    """Decode every ``<split>/<class>/<file>`` member of a ``.tar.gz``; the label is the class's index in
    ``info.classes``. A damaged archive or image, or an unknown class, is a ``ValueError`` naming the archive (and
    the member): the gzip CRC and length are checked, every image is decoded in full, and everything after the last
    member must be the tar's zero padding (``tarfile`` takes a damaged header for the end of the archive, which would
    silently drop the members after it)."""
    stream = _tar_bytes(archive)
    items: List[Tuple[str, int, np.ndarray]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) != 3 or parts[0] != split:
                    continue
                if parts[1] not in info.classes:
                    raise ValueError(f"archive {str(archive)!r}: member {member.name!r} is in class folder {parts[1]!r}, "
                                     f"not one of {', '.join(info.classes)}")
                data = tar.extractfile(member).read()
                where = f"member {member.name!r} of archive {str(archive)!r}"
                items.append((member.name, info.classes.index(parts[1]), _decode(data, info, where)))
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"archive {str(archive)!r} is corrupt or truncated ({type(error).__name__}: {error}): copy or "
                         "download it again") from error
    if stream[end:].count(0) != len(stream) - end:
        raise ValueError(f"archive {str(archive)!r} is corrupt: its tar stream ends at byte {end} of {len(stream)}, "
                         "before data that is not padding (a damaged member header): copy or download it again")
    return _stack(items, f"archive {str(archive)!r} ({split}/<class>/...)")


def _tree_files(folder: Path, info: DatasetInfo) -> List[Tuple[str, int, Path]]:
    """(path relative to ``folder``, label, path) of every image in ``folder/<class>/``, via torchvision's own
    ``ImageFolder`` rules (sorted class folders, its image extensions). The class folders must be ``info.classes``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, _ = find_classes(str(folder))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"folder {str(folder)!r} has no class subfolders (<class>/<image>)") from error
    if tuple(classes) != info.classes:
        raise ValueError(f"folder {str(folder)!r} has class folders {classes}, expected {list(info.classes)} (the "
                         "dataset's classes, in label order)")
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(info.classes)}, IMG_EXTENSIONS, allow_empty=True)
    return [(Path(path).relative_to(folder).as_posix(), label, Path(path)) for path, label in samples]


def tree_digests(folder: Path, info: DatasetInfo) -> Dict[str, str]:
    """``{relative path: sha256}`` of every image file of ``folder/<class>/`` (memoised per file size and mtime)."""
    return {relative: file_sha256(path) for relative, _, path in _tree_files(folder, info)}


def read_tree_split(folder: Path, info: DatasetInfo) -> Arrays:
    """Decode every image of ``folder/<class>/*`` (a split of an image tree)."""
    items = [(relative, label, _decode(path.read_bytes(), info, f"file {str(path)!r}"))
             for relative, label, path in _tree_files(folder, info)]
    return _stack(items, f"folder {str(folder)!r}")


def _arrays_digest(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return digest.hexdigest()


def _cached(tag: str, key: Mapping, build: Callable[[], Arrays]) -> Arrays:
    """``build()``'s arrays, from the cache file of ``key`` when it is intact, else built and cached atomically."""
    key_text = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True)
    path = decoded_cache_dir() / f"{tag}-{hashlib.sha256(key_text.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cache:
                images, labels, stored_key, digest = cache["images"], cache["labels"], str(cache["key"]), str(cache["digest"])
            if stored_key == key_text and digest == _arrays_digest(images, labels):
                return images, labels
            problem = "does not match its source"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            problem = f"is unreadable ({type(error).__name__})"
        warnings.warn(f"decoded cache {str(path)!r} {problem}: rebuilding it", stacklevel=4)
    images, labels = build()
    with atomic_write(path) as handle:
        np.savez(handle, images=images, labels=labels, key=np.asarray(key_text),
                 digest=np.asarray(_arrays_digest(images, labels)))
    return images, labels


def load_archive_split(directory: Path, archive_name: str, split: str, info: DatasetInfo) -> Arrays:
    """A split of an archive in ``directory``, verified against ``directory/SHA256SUMS`` and decoded once."""
    archive = directory / archive_name
    digest = verify_sha256([archive], directory / SUMS_FILE)[archive.name]
    key = {"archive_sha256": digest, "split": split, "size": list(info.input_size), "channels": info.in_channels,
           "classes": list(info.classes)}
    return _cached(f"{info.name}-{split}", key, lambda: read_archive_split(archive, split, info))


def load_tree_split(folder: Path, split: str, info: DatasetInfo) -> Arrays:
    """A split of an image tree (``folder/<class>/*``), decoded once per content of its files."""
    tree = hashlib.sha256(json.dumps(tree_digests(folder, info), sort_keys=True).encode()).hexdigest()
    key = {"tree_sha256": tree, "split": split, "size": list(info.input_size), "channels": info.in_channels,
           "classes": list(info.classes)}
    return _cached(f"{info.name}-{split}", key, lambda: read_tree_split(folder, info))
