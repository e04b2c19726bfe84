"""What a model needs to know about a dataset (:class:`DatasetInfo`), the registry of named datasets, users'
image-folder datasets, and the one "where to put the data" message every loader gives.

A dataset is named by a *spec*: a registered name (``'cifar10'``, ``'cifar10-jpeg'``, ...) or, for a user's own
folder in torchvision's ``ImageFolder`` layout, a JSON-friendly dict (a config's ``data.dataset``)::

    {"name": "imagefolder", "classes": ["cat", "dog"], "input_size": 64,        # or [H, W]
     "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],           # optional: 3, the paper's 0.5
     "augment": true, "flip": true}                                            # optional: crop (+ flip) training

The spec holds everything a model needs (no path: the folder is the ``root`` of the loaders), so a checkpoint's
architecture record rebuilds the model without the data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..validation import check_choice, check_positive, check_positive_int

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "DATASETS",
    "IMAGE_FOLDER",
    "DatasetInfo",
    "DatasetSpec",
    "dataset_info",
    "default_data_root",
    "image_folder",
    "parse_dataset_spec",
    "where_to_put",
]

PathLike = Union[str, os.PathLike]
IMAGE_FOLDER = "imagefolder"

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: CIFAR-100's fine labels in label order (alphabetical, as in the dataset's meta file and torchvision)
CIFAR100_CLASSES = ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain",
    "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
    "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    :param mean, std: per-channel normalisation ``(x - mean) / std`` applied by the classifier.
    :param augment: whether training uses augmentation by default (random crop with padding ``input_size / 8``,
        4 for 32x32, plus a horizontal flip when ``flip``).
    """

    name: str
    in_channels: int
    input_size: Tuple[int, int]
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Tuple[str, ...]
    augment: bool = False
    flip: bool = False

    def as_dict(self) -> Dict:
        """JSON-friendly form (checkpoints, results)."""
        return {
            "name": self.name, "in_channels": self.in_channels, "input_size": list(self.input_size),
            "num_classes": self.num_classes, "mean": list(self.mean), "std": list(self.std),
        }

    def spec(self) -> "DatasetSpec":
        """The spec that names this dataset: its registered name, or the image-folder dict (see module docstring)."""
        if self.name != IMAGE_FOLDER:
            return self.name
        return {"name": IMAGE_FOLDER, "classes": list(self.classes), "input_size": list(self.input_size),
                "channels": self.in_channels, "mean": list(self.mean), "std": list(self.std),
                "augment": self.augment, "flip": self.flip}


DatasetSpec = Union[str, Mapping[str, Any], DatasetInfo]


def _info(name: str, channels: int, size: int, classes: Sequence[str], **kw) -> DatasetInfo:
    return DatasetInfo(name, channels, (size, size), len(classes), (0.5,) * channels, (0.5,) * channels, tuple(classes), **kw)


DATASETS: Dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _info("cifar10", 3, 32, CIFAR10_CLASSES, augment=True, flip=True),
        _info("cifar10-jpeg", 3, 32, CIFAR10_CLASSES, augment=True, flip=True),
        _info("cifar100", 3, 32, CIFAR100_CLASSES, augment=True, flip=True),
        _info("fashion-mnist", 1, 28, FASHION_CLASSES),
        _info("fashion-mnist-bundled", 1, 28, FASHION_CLASSES),
        _info("mnist", 1, 28, tuple(str(i) for i in range(10))),
    )
}

_SPEC_KEYS = ("name", "classes", "input_size", "channels", "mean", "std", "augment", "flip")


def _image_folder_info(spec: Mapping[str, Any]) -> DatasetInfo:
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise ValueError(f"dataset spec key {unknown[0]!r} is unknown: an image-folder spec takes {', '.join(_SPEC_KEYS)}")
    for key in ("classes", "input_size"):
        if key not in spec:
            raise ValueError(f"dataset spec {{'name': 'imagefolder', ...}} needs {key!r} (image_folder(root, ...) "
                             "reads the classes from the folder)")
    classes = spec["classes"]
    if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < 2 \
            or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"dataset spec 'classes' = {classes!r}: must be a list of at least 2 distinct folder names")
    size = spec["input_size"]
    size = [size, size] if isinstance(size, int) else list(size) if isinstance(size, Sequence) else size
    if not isinstance(size, list) or len(size) != 2:
        raise ValueError(f"dataset spec 'input_size' = {spec['input_size']!r}: must be an integer or [height, width]")
    size = tuple(check_positive_int("input_size", s) for s in size)
    channels = check_choice("channels", spec.get("channels", 3), (1, 3))
    stats = {}
    for key in ("mean", "std"):
        value = spec.get(key, [0.5] * channels)
        if isinstance(value, (int, float)):
            value = [value] * channels
        if not isinstance(value, Sequence) or len(value) != channels:
            raise ValueError(f"dataset spec {key!r} = {value!r}: must be a number or {channels} numbers (one per channel)")
        stats[key] = tuple(float(v) for v in value)
    for s in stats["std"]:
        check_positive("std", s)
    flags = {}
    for key in ("augment", "flip"):
        flags[key] = spec.get(key, True)
        if not isinstance(flags[key], bool):
            raise ValueError(f"dataset spec {key!r} = {flags[key]!r}: must be true or false")
    return DatasetInfo(IMAGE_FOLDER, channels, size, len(classes), stats["mean"], stats["std"], tuple(classes), **flags)


def dataset_info(dataset: DatasetSpec) -> DatasetInfo:
    """The :class:`DatasetInfo` of a spec: a registered name (``ValueError`` listing them otherwise), an
    image-folder dict (module docstring) or a :class:`DatasetInfo` (returned as is)."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    if isinstance(dataset, Mapping):
        if dataset.get("name") != IMAGE_FOLDER:
            raise ValueError(f"argument 'dataset' = {dict(dataset)!r}: a dict spec must have 'name': {IMAGE_FOLDER!r}")
        return _image_folder_info(dataset)
    if dataset == IMAGE_FOLDER:
        raise ValueError("argument 'dataset' = 'imagefolder': give the spec dict {'name': 'imagefolder', 'classes': [...], "
                         "'input_size': ..., 'mean': [...], 'std': [...]} or snn_adv.data.image_folder(root, ...)")
    return DATASETS[check_choice("dataset", dataset, DATASETS)]


def parse_dataset_spec(text: str) -> DatasetSpec:
    """A dataset spec from a command-line value: a registered name, an image-folder spec as a JSON object, or the
    path of a ``.json`` file holding one (validated with :func:`dataset_info`)."""
    import json

    stripped = text.strip()
    if stripped.startswith("{") or stripped.endswith(".json"):
        source = "JSON" if stripped.startswith("{") else f"file {stripped!r}"
        try:
            spec = json.loads(stripped if stripped.startswith("{") else Path(stripped).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"argument 'dataset' = {text!r}: cannot read the {source} ({error})") from error
        dataset_info(spec)
        return spec
    return dataset_info(text).name


def image_folder(
    root: PathLike,
    input_size: Union[int, Sequence[int]],
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    channels: int = 3,
    augment: bool = True,
    flip: bool = True,
) -> DatasetInfo:
    """The :class:`DatasetInfo` of a user's folder ``root/train/<class>/*``, ``root/test/<class>/*`` (torchvision's
    ``ImageFolder`` layout per split; ``val/`` is accepted for ``test/``): classes are the sorted subfolders of
    ``train/``. Images are resized (shorter side, then centre crop) to ``input_size`` and normalised with the
    per-channel ``mean``/``std`` (default 0.5). Pass the result (or its :meth:`DatasetInfo.spec`) wherever a
    dataset name goes, with ``root=root``.
    """
    from torchvision.datasets.folder import find_classes

    train = Path(root) / "train"
    if not train.is_dir():
        raise FileNotFoundError(where_to_put(IMAGE_FOLDER, Path(root)))
    classes, _ = find_classes(str(train))
    spec = {"name": IMAGE_FOLDER, "classes": classes, "input_size": input_size, "channels": channels,
            "augment": augment, "flip": flip}
    spec.update({k: v for k, v in (("mean", mean), ("std", std)) if v is not None})
    return _image_folder_info(spec)


def default_data_root() -> Path:
    """``$SNN_ADV_DATA`` if set, else ``~/.cache/snn-adv/datasets``."""
    return Path(os.environ.get("SNN_ADV_DATA", "~/.cache/snn-adv/datasets")).expanduser()


_IDX_LAYOUT = ("four idx files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
               "t10k-labels-idx1-ubyte.gz (optionally with a SHA256SUMS manifest)")
#: name -> (layout of the folder the user provides, whether torchvision can download it)
_LAYOUTS: Dict[str, Tuple[str, bool]] = {
    "cifar10": ("the extracted folder 'cifar-10-batches-py/' of cifar-10-python.tar.gz", True),
    "cifar100": ("the extracted folder 'cifar-100-python/' of cifar-100-python.tar.gz, or an ImageFolder copy "
                 "train/<class>/<image> and test/<class>/<image> whose 100 class folders are the fine-label names "
                 "(apple, aquarium_fish, ..., worm)", True),
    "cifar10-jpeg": ("cifar10-jpeg-train.tar.gz, cifar10-jpeg-test.tar.gz and their SHA256SUMS, or their extracted "
                     "trees train/<class>/*.jpg and test/<class>/*.jpg", False),
    "fashion-mnist": (_IDX_LAYOUT, True),
    "mnist": (_IDX_LAYOUT, True),
    IMAGE_FOLDER: ("train/<class>/<image> and test/<class>/<image> (torchvision's ImageFolder layout per split; "
                   "val/ is accepted for test/)", False),
}


def where_to_put(name: str, root: Optional[Path], problem: str = "not found") -> str:
    """The one message for a dataset that is missing: where it was looked for, the layout to provide, how to point
    snn-adv at it, and the download option where torchvision can download it."""
    layout, downloadable = _LAYOUTS[name]
    where = (f"under {str(root)!r}" if root is not None
             else f"under $SNN_ADV_DATA or {str(default_data_root())!r} (no root given)")
    folder = "DIR" if name == IMAGE_FOLDER else f"DIR or DIR/{name}"
    get = ("; or let torchvision download it: download=True (--download)" if downloadable
           else "; snn-adv cannot download it" + ("" if name != "cifar10-jpeg" else " (the real CIFAR-10: dataset 'cifar10' "
                                                   "with download=True / --download)"))
    return (f"dataset {name!r} {problem} {where}. Put {layout} in {folder} and pass root=DIR (--data-root DIR, or "
            f"set SNN_ADV_DATA){get}. For an offline demo use the dataset 'fashion-mnist-bundled'.")
