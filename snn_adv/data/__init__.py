"""Datasets: CIFAR-10/100, Fashion-MNIST and MNIST (torchvision or a local idx folder), CIFAR-10 (JPEG copy), users'
own image folders, and a small Fashion-MNIST subset shipped with the package for offline use.

Every loader yields images as float tensors ``[C, H, W]`` in [0, 1] and integer labels: normalisation is the
classifier's first step (:class:`~snn_adv.classifier.ImageClassifier`), so attacks live in [0, 1] image space.
Each dataset carries its normalisation in :class:`DatasetInfo` (the paper: mean = std = 0.5 per channel, so the
encoder sees [-1, 1]). A dataset is named by a spec (:mod:`snn_adv.data.registry`): a registered name, or for a
user's folder an image-folder dict (:func:`image_folder` builds it).

Where the data is read from: :mod:`snn_adv.data.sources` (one search order for the loaders and
:func:`dataset_fingerprint`); a missing dataset gets one message (:func:`where_to_put`) naming the layout to
provide and the download option where torchvision has one. JPEG datasets are decoded once into a cache
(:mod:`snn_adv.data.folders`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from ..validation import check_choice, check_positive_int
from .files import read_idx
from .fingerprint import dataset_fingerprint
from .folders import decoded_cache_dir, load_archive_split, load_tree_split
from .registry import (CIFAR10_CLASSES, CIFAR100_CLASSES, DATASETS, DatasetInfo, DatasetSpec, PathLike,
                       dataset_info, default_data_root, image_folder, parse_dataset_spec, where_to_put)
from .sources import JPEG_ARCHIVES, SPLITS, TORCHVISION_CLASSES, bundled_path, locate, read_idx_split, split_folder

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "DATASETS",
    "DatasetInfo",
    "DatasetSpec",
    "ImageArrayDataset",
    "bundled_path",
    "dataset_fingerprint",
    "dataset_info",
    "decoded_cache_dir",
    "default_data_root",
    "image_folder",
    "load_dataset",
    "load_tensors",
    "make_loader",
    "parse_dataset_spec",
    "read_idx",
    "read_idx_split",
    "stratified_indices",
    "where_to_put",
]


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------
class ImageArrayDataset(Dataset):
    """uint8 images ``[N, H, W]`` or ``[N, H, W, C]`` and labels as a dataset of (float ``[C, H, W]`` in [0, 1], label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[Callable] = None):
        if images.ndim == 3:
            images = images[..., None]
        self.images = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)  # [N, C, H, W] uint8
        self.targets = torch.as_tensor(labels, dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index].float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def _augmentation(info: DatasetInfo) -> List[Callable]:
    """Random crop with padding ``min(H, W) / 8`` (4 for 32x32 and 28x28), and a horizontal flip for datasets
    where mirror images are natural."""
    steps: List[Callable] = [transforms.RandomCrop(info.input_size, padding=round(min(info.input_size) / 8))]
    if info.flip:
        steps.append(transforms.RandomHorizontalFlip())
    return steps


def _read_bundled(split: str) -> Tuple[np.ndarray, np.ndarray]:
    with np.load(bundled_path()) as archive:
        return archive[f"x_{split}"], archive[f"y_{split}"].astype(np.int64)


def _torchvision_dataset(name: str, split: str, root: Path, download: bool, transform: Callable) -> Dataset:
    import torchvision.datasets as tvd

    tv_class = getattr(tvd, TORCHVISION_CLASSES[name])
    try:
        return tv_class(str(root), train=split == "train", transform=transform, download=download)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        if download:
            raise
        raise FileNotFoundError(where_to_put(name, root, "not found (or corrupt)")) from error


def _arrays(info: DatasetInfo, split: str, root: Optional[PathLike]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """uint8 images and labels of ``split`` for every source but torchvision's layout (None there)."""
    source = locate(info, root)
    if source.kind == "bundled":
        return _read_bundled(split)
    if source.kind == "idx":
        return read_idx_split(source.directory, split)
    if source.kind == "jpeg-archives":
        return load_archive_split(source.directory, JPEG_ARCHIVES[split], split, info)
    if source.kind == "image-tree":
        return load_tree_split(split_folder(source.directory, split), split, info)
    return None


def load_dataset(
    name: DatasetSpec,
    split: str = "train",
    root: Optional[PathLike] = None,
    download: bool = False,
    augment: Optional[bool] = None,
) -> Dataset:
    """A dataset of (image ``[C, H, W]`` in [0, 1], label).

    :param name: a dataset spec: one of :data:`DATASETS`, an image-folder dict or :class:`DatasetInfo`.
    :param split: ``'train'`` or ``'test'``.
    :param root: data folder (see :mod:`snn_adv.data.sources`); default :func:`default_data_root`.
    :param download: let torchvision download the data if it is not found.
    :param augment: training augmentation; ``None`` uses the dataset's default (on for CIFAR training only).
    """
    info = dataset_info(name)
    check_choice("split", split, SPLITS)
    if augment is None:
        augment = info.augment and split == "train"
    extra = _augmentation(info) if augment else []
    arrays = _arrays(info, split, root)
    if arrays is not None:
        return ImageArrayDataset(*arrays, transform=transforms.Compose(extra) if extra else None)
    root_path = Path(root) if root is not None else default_data_root()
    return _torchvision_dataset(info.name, split, root_path, download, transforms.Compose([transforms.ToTensor(), *extra]))


def _targets(dataset: Dataset) -> np.ndarray:
    return np.asarray(torch.as_tensor(dataset.targets), dtype=np.int64)


def stratified_indices(labels: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """``count`` indices with the classes as balanced as possible (round-robin over shuffled per-class lists).

    Deterministic for a given seed; returned in increasing order.
    """
    count = check_positive_int("count", count)
    labels = np.asarray(labels)
    if count > len(labels):
        raise ValueError(f"argument 'count' = {count}: must be <= the dataset size {len(labels)}")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: List[int] = []
    depth = 0
    while len(chosen) < count:
        layer = [idx[depth] for idx in per_class if depth < len(idx)]
        chosen.extend(layer[: count - len(chosen)])
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


def make_loader(
    name: DatasetSpec,
    split: str = "train",
    batch_size: int = 128,
    root: Optional[PathLike] = None,
    download: bool = False,
    augment: Optional[bool] = None,
    subset: Optional[int] = None,
    shuffle: Optional[bool] = None,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A seeded :class:`~torch.utils.data.DataLoader` over :func:`load_dataset`.

    :param subset: keep a stratified subset of this many examples (chosen with ``seed``).
    :param shuffle: default: shuffle the training split only. The order is drawn from a generator seeded with
        ``seed``, so two runs with the same seed see the same batches.
    """
    dataset = load_dataset(name, split, root=root, download=download, augment=augment)
    if subset is not None:
        dataset = Subset(dataset, stratified_indices(_targets(dataset), subset, seed).tolist())
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=check_positive_int("batch_size", batch_size),
        shuffle=split == "train" if shuffle is None else shuffle,
        generator=generator,
        num_workers=num_workers,
    )


def load_tensors(
    name: DatasetSpec,
    split: str = "test",
    count: Optional[int] = None,
    root: Optional[PathLike] = None,
    download: bool = False,
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A whole split (or a stratified subset of ``count`` examples) as tensors: images ``[N, C, H, W]`` in [0, 1]
    and int64 labels ``[N]``, without augmentation. Handy for evaluations and attacks on a fixed set."""
    dataset = load_dataset(name, split, root=root, download=download, augment=False)
    if count is not None:
        dataset = Subset(dataset, stratified_indices(_targets(dataset), count, seed).tolist())
    images, labels = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    return images, labels
