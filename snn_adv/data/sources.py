"""Where a dataset's files are: one :func:`locate` shared by the loaders and :func:`~snn_adv.data.dataset_fingerprint`,
so that the fingerprint is always of the files the loaders read.

Search order (first hit wins)::

    'fashion-mnist-bundled'             the npz shipped in this package (root ignored, with a warning)
    mnist, fashion-mnist                DIR or DIR/<name> holding the four idx files (SHA256SUMS checked if present)
    cifar10-jpeg                        DIR or DIR/<name> holding cifar10-jpeg-{train,test}.tar.gz + SHA256SUMS,
                                        else the extracted trees DIR[/<name>]/{train,test}/<class>/*.jpg
    cifar100                            torchvision's cifar-100-python/ under DIR, else an ImageFolder copy
                                        DIR[/<name>]/{train,test}/<fine label>/* (for machines without internet)
    imagefolder                         DIR/train/<class>/*, DIR/test/<class>/* (or DIR/val/...)
    otherwise                           torchvision's own layout under DIR (download=True fetches it)

``DIR`` is ``root``, or ``$SNN_ADV_DATA`` / ``~/.cache/snn-adv/datasets`` when no root is given (and, for idx
files, Debian's ``/usr/share/datasets``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set, Tuple

import numpy as np

from .files import SUMS_FILE, read_idx, verify_sha256
from .registry import IMAGE_FOLDER, DatasetInfo, PathLike, default_data_root, where_to_put

__all__ = ["BUNDLED_FILE", "JPEG_ARCHIVES", "Source", "bundled_path", "locate", "read_idx_split", "split_folder",
           "torchvision_files"]

BUNDLED_FILE = "fashion_mnist_subset.npz"
SPLITS = ("train", "test")
#: split -> archive name of the CIFAR-10 (JPEG copy)
JPEG_ARCHIVES = {split: f"cifar10-jpeg-{split}.tar.gz" for split in SPLITS}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: our names -> torchvision's dataset classes
TORCHVISION_CLASSES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "fashion-mnist": "FashionMNIST", "mnist": "MNIST"}


@dataclass(frozen=True)
class Source:
    """The files a dataset reads. ``kind``: ``'bundled'``, ``'idx'``, ``'jpeg-archives'``, ``'image-tree'`` or
    ``'torchvision'``; ``directory`` holds them."""

    kind: str
    directory: Path


def bundled_path() -> Path:
    """Path of the Fashion-MNIST subset shipped in this package."""
    return Path(__file__).resolve().parent / BUNDLED_FILE


def _idx_file(directory: Path, stem: str) -> Optional[Path]:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def idx_files(directory: Path, split: str) -> List[Path]:
    """The image and label idx files of ``split`` in ``directory`` (``.gz`` preferred)."""
    return [_idx_file(directory, stem) for stem in IDX_FILES[split]]


def read_idx_split(directory: PathLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """The ``split`` images (uint8 ``[N, H, W]``) and labels of an idx folder, checked against its SHA256SUMS."""
    directory = Path(directory)
    files = idx_files(directory, split)
    if (directory / SUMS_FILE).is_file():
        verify_sha256(files, directory / SUMS_FILE)
    images, labels = (read_idx(f) for f in files)
    if len(images) != len(labels):
        raise ValueError(f"{str(directory)!r}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels.astype(np.int64)


def split_folder(directory: Path, split: str) -> Optional[Path]:
    """The folder of ``split`` in an image tree: ``train/``; ``test/`` or else ``val/``."""
    for name in ("train",) if split == "train" else ("test", "val"):
        if (directory / name).is_dir():
            return directory / name
    return None


def torchvision_files(name: str, directory: Path) -> List[Path]:
    """The files torchvision's dataset class reads under ``directory`` (both splits)."""
    import torchvision.datasets as tvd

    tv_class = getattr(tvd, TORCHVISION_CLASSES[name])
    if name.startswith("cifar"):
        base = directory / tv_class.base_folder
        return [base / entry[0] for entry in (*tv_class.train_list, *tv_class.test_list)] + [base / tv_class.meta["filename"]]
    raw = directory / tv_class.__name__ / "raw"
    return [raw / Path(url).name.removesuffix(".gz") for url, _ in tv_class.resources]


_IGNORED_ROOTS: Set[str] = set()


def _candidates(name: str, root: Optional[PathLike]) -> List[Path]:
    if root is not None:
        return [Path(root), Path(root) / name]
    return [default_data_root() / name] + ([Path("/usr/share/datasets") / name] if name in ("mnist", "fashion-mnist") else [])


def locate(info: DatasetInfo, root: Optional[PathLike] = None) -> Source:
    """The :class:`Source` of a dataset (module docstring), or ``FileNotFoundError`` with :func:`where_to_put`'s
    message. For torchvision's layout the files are not checked here (torchvision does it, and may download)."""
    name = info.name
    if name == "fashion-mnist-bundled":
        if root is not None and str(root) not in _IGNORED_ROOTS:
            _IGNORED_ROOTS.add(str(root))  # said once per root and process, not for every cell
            warnings.warn(f"argument 'root' = {str(root)!r} is ignored: the dataset 'fashion-mnist-bundled' is read from the "
                          "package", stacklevel=3)
        if not bundled_path().is_file():
            raise FileNotFoundError(f"the bundled subset {str(bundled_path())!r} is missing from this installation; "
                                    "rebuild it with experiments/make_bundled_subset.py or reinstall snn-adv")
        return Source("bundled", bundled_path().parent)
    if name == IMAGE_FOLDER:
        if root is None or split_folder(Path(root), "train") is None or split_folder(Path(root), "test") is None:
            raise FileNotFoundError(where_to_put(name, None if root is None else Path(root)))
        return Source("image-tree", Path(root))
    for directory in _candidates(name, root):
        if name in ("mnist", "fashion-mnist") and all(_idx_file(directory, s) for stems in IDX_FILES.values() for s in stems):
            return Source("idx", directory)
        if name == "cifar10-jpeg" and all((directory / archive).is_file() for archive in JPEG_ARCHIVES.values()):
            return Source("jpeg-archives", directory)
        if name == "cifar100" and (directory / "cifar-100-python").is_dir():
            break  # torchvision's own layout comes first
        if name in ("cifar10-jpeg", "cifar100") and all(split_folder(directory, split) for split in SPLITS):
            return Source("image-tree", directory)
    if name == "cifar10-jpeg":
        raise FileNotFoundError(where_to_put(name, None if root is None else Path(root)))
    return Source("torchvision", Path(root) if root is not None else default_data_root())
