"""The model zoo: config recipes -> trained models (ANN -> SNN-conv -> SNN-BP), cached as checkpoints by recipe.

A config's ``models`` section holds one recipe per kind (see ``snn_adv/configs/*.json``)::

    ann       arch, arch_kwargs, seeds {main, source}, epochs, lr, batch_size, [optimizer, schedule, ...]
    snn_conv  timesteps, percentile, calibration_count, [method, calibration_batch_size]   from: the ANN
    snn_bp    timesteps, leak, threshold_scale, epochs, lr, batch_size, train_count, [micro_batch,
              learnable_thresholds]  from: SNN-conv

``ModelZoo.get(kind, role)`` returns the trained model of ``kind`` in ``role`` ``main`` (the targets) or ``source``
(the blackbox sources, trained alike with another seed). A config's ``models.defences`` names variants of the recipes
(``{"AT": {"ann": {"adversarial": {...}}, "snn_bp": {"adversarial": {...}}}}``): ``get(kind, defence="AT")`` applies
the defence's section of every kind along the chain (an SNN-BP under ``AT`` is fine-tuned adversarially from the
conversion of the ``AT`` ANN). Each model records its training wall time (``training_seconds``).

The config's ``device`` (``auto``: CUDA when there is one) is where models are trained and evaluated, and
``models.backend`` the spiking neurons' (``torch``, the default; ``cupy``, SpikingJelly's CUDA kernels; ``auto``:
CuPy where it can run): neither is part of a recipe, like the hardware, and a cell's provenance records the device. The full recipe of a model (its section, the architecture,
the role's seed, the config ``seed``, the training data as a content fingerprint with its subset seed and size, and
the recipe it starts from) is its key: a checkpoint is reused only for exactly that recipe, so changing any input
that can change the weights trains a new model.

Under ``torchrun`` training is data-parallel (:mod:`snn_adv.distributed`: DDP, one shard of every global batch per
rank); alone it is the same code with one rank.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from . import checkpoints
from .cells import cell_key
from .classifier import AnnClassifier, ImageClassifier, SpikingClassifier
from .conversion import CONVERT_FIELDS, HYBRID_FIELDS, convert as convert_ann, hybrid_init
from .data import make_loader
from .data.fingerprint import dataset_fingerprint
from .distributed import dist_info, distributed_loader, wrap_ddp
from .encoding import PoissonEncoder
from .io import PathLike
from .models import build_classifier
from .module_state import reset_states
from .neurons import cupy_available
from .seeds import derive_seed
from .schema import COUNT, POSITIVE_INT
from .training import TRAIN_FIELDS, seed_everything, train
from .validation import check_choice

__all__ = ["BACKENDS", "DEVICES", "KINDS", "LABELS", "MODEL_FIELDS", "MODEL_REQUIRED", "ROLES", "ModelZoo", "apply_knobs",
           "data_recipe", "reset", "resolve_device"]

KINDS = ("ann", "snn_conv", "snn_bp")
LABELS = {"ann": "ANN", "snn_conv": "SNN-conv", "snn_bp": "SNN-BP"}
ROLES = ("main", "source")

#: where models run (``device``) and on which spiking backend (``models.backend``): :func:`resolve_device`
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("torch", "cupy", "auto")
#: the keys of each kind's recipe (a config's ``models.<kind>``): its trainer's or converter's own, and the zoo's
#: data keys (training batch and subset, calibration images)
_DATA_FIELDS = {"batch_size": POSITIVE_INT, "train_count": COUNT}
MODEL_FIELDS = {
    "ann": {**TRAIN_FIELDS, **_DATA_FIELDS},
    "snn_conv": {**CONVERT_FIELDS, "calibration_count": POSITIVE_INT, "calibration_batch_size": POSITIVE_INT},
    "snn_bp": {**TRAIN_FIELDS, **HYBRID_FIELDS, **_DATA_FIELDS},
}
#: the keys a kind's recipe must give
MODEL_REQUIRED = {"ann": ("epochs", "lr", "batch_size"), "snn_conv": ("timesteps", "calibration_count"),
                  "snn_bp": ("timesteps", "epochs", "batch_size")}


def data_recipe(data: Mapping[str, Any]) -> Dict[str, Any]:
    """What of a config's ``data`` section can change a trained model: the dataset, a fingerprint of its content
    (never its path), the training subset's size and seed."""
    return {"dataset": data["dataset"], "fingerprint": dataset_fingerprint(data["dataset"], data.get("root")),
            "train_count": data.get("train_count"), "subset_seed": data.get("subset_seed", 0)}


def reset(model: nn.Module) -> nn.Module:
    """Clear neuron state left by the last forward (it may hold an autograd graph, which deepcopy refuses)."""
    reset_states(model)
    return model


def apply_knobs(model: SpikingClassifier, timesteps: Optional[int] = None, levels: Optional[int] = None,
                rate: Optional[float] = None, leak: Optional[float] = None, quantise: bool = False) -> SpikingClassifier:
    """Change a spiking classifier's T, Poisson quantisation levels / rate and leak in place.

    ``levels`` is applied only when ``quantise`` is true, so ``levels=None`` can mean "no quantisation".
    """
    if timesteps is not None:
        model.timesteps = timesteps
    if quantise or rate is not None:
        old = model.encoder
        model.encoder = PoissonEncoder(rate=rate if rate is not None else getattr(old, "rate", 1.0),
                                       levels=levels if quantise else getattr(old, "levels", None))
    if leak is not None:
        model.set_leak(leak)
    return model


# ---------------------------------------------------------------- training steps of a recipe
def _train_set(data: Mapping[str, Any], count: Optional[int]) -> Dataset:
    """The stratified training subset (``count`` examples, None for all) of the config's dataset."""
    return make_loader(data["dataset"], "train", batch_size=1, root=data.get("root"), subset=count,
                       seed=data.get("subset_seed", 0)).dataset


def _fit(model: ImageClassifier, recipe: Mapping[str, Any], data: Mapping[str, Any], seed: int, progress: bool,
         checkpoint: Path) -> None:
    """Train ``model`` in place on the recipe's subset with :func:`snn_adv.training.train` (DDP under torchrun),
    resumable after each epoch from ``checkpoint``."""
    dataset = _train_set(data, recipe.get("train_count", data.get("train_count")))
    loader, sampler = distributed_loader(dataset, recipe["batch_size"], seed=seed)
    net = wrap_ddp(model)
    kwargs = {k: v for k, v in recipe.items() if k in TRAIN_FIELDS}
    train(net, loader, seed=seed, progress=progress, on_epoch_start=lambda epoch: sampler.set_epoch(epoch - 1),
          checkpoint=checkpoint, **kwargs)
    model.eval()


def _train_ann(recipe: Mapping[str, Any], data: Mapping[str, Any], seed: int, progress: bool,
               checkpoint: Path, device: torch.device) -> AnnClassifier:
    """A freshly initialised ANN of ``recipe['arch']`` trained on ``device`` with SGD (or the recipe's optimizer)."""
    model = build_classifier(recipe["arch"], data["dataset"], "ann", **recipe.get("arch_kwargs", {})).to(device)
    _fit(model, recipe, data, seed, progress, checkpoint)
    return model


def _convert(ann: AnnClassifier, recipe: Mapping[str, Any], data: Mapping[str, Any], seed: int,
             progress: bool, backend: str) -> SpikingClassifier:
    """SNN-conv: threshold balancing on ``calibration_count`` training images (:func:`snn_adv.conversion.convert`)."""
    loader = make_loader(data["dataset"], "train", batch_size=recipe.get("calibration_batch_size", 100),
                         root=data.get("root"), subset=recipe["calibration_count"], shuffle=False,
                         seed=data.get("subset_seed", 0))
    return convert_ann(ann, loader, recipe["timesteps"], method=recipe.get("method", "threshold-balancing"),
                       percentile=recipe.get("percentile", 99.9), seed=seed, backend=backend, progress=progress)


def _finetune(snn_conv: SpikingClassifier, recipe: Mapping[str, Any], data: Mapping[str, Any], seed: int,
              progress: bool, checkpoint: Path) -> SpikingClassifier:
    """SNN-BP: :func:`snn_adv.conversion.hybrid_init` (thresholds x scale, leak, T), then surrogate-gradient BPTT."""
    model = hybrid_init(snn_conv, recipe["timesteps"], recipe.get("threshold_scale", 0.7), recipe.get("leak", 0.99),
                        recipe.get("learnable_thresholds", False))
    recipe = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "schedule": "constant", **recipe}
    _fit(model, recipe, data, seed, progress, checkpoint)
    return model


def resolve_device(device: str = "auto", backend: str = "torch") -> Tuple[torch.device, str]:
    """The config's ``device`` and ``models.backend`` as they will run here: ``auto`` devices are CUDA when one is
    present, ``auto`` backends CuPy when it can run (CuPy importable, the device CUDA); an explicit request that
    cannot be met is refused now, not at the first forward."""
    check_choice("device", device, DEVICES)
    check_choice("models.backend", backend, BACKENDS)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device' = 'cuda': no CUDA device here (use 'auto' or 'cpu')")
    resolved = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    can_cupy = resolved.type == "cuda" and cupy_available()
    if backend == "cupy" and not can_cupy:
        raise ValueError("config key 'models.backend' = 'cupy': needs CuPy and the CUDA device (device "
                         f"{resolved.type} here{'' if resolved.type == 'cpu' else ', CuPy not importable'}); use "
                         "'auto' or 'torch'")
    return resolved, "cupy" if backend == "cupy" or (backend == "auto" and can_cupy) else "torch"


# ---------------------------------------------------------------- the zoo
class ModelZoo:
    """The trained models of a config, built on first use and cached as checkpoints (keyed by their recipe)."""

    def __init__(self, config: Mapping[str, Any], cache_dir: PathLike, progress: bool = True):
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.progress = progress
        self.device, self.backend = resolve_device(config.get("device", "auto"), config["models"].get("backend", "torch"))
        self._memo: Dict[Tuple[str, str, str], ImageClassifier] = {}
        self._data_recipe: Optional[Dict[str, Any]] = None

    def recipe(self, kind: str, role: str = "main", defence: Optional[str] = None, **overrides: Any) -> Dict[str, Any]:
        """Everything that determines the weights of ``(kind, role)`` (nested: SNN-BP <- SNN-conv <- ANN).

        ``defence``: a name of the config's ``models.defences``, whose section for each kind of the chain replaces
        keys of that kind's section. ``overrides`` replace keys of the kind's own section (e.g. an SNN-BP trained at
        another ``timesteps`` or ``leak`` from the same converted network); the recipes it starts from are unchanged.
        """
        check_choice("kind", kind, KINDS)
        check_choice("role", role, ROLES)
        models = self.config["models"]
        if defence is not None:
            check_choice("defence", defence, models.get("defences", {}))
        for key in overrides:
            check_choice(f"override of models.{kind}", key, models[kind])
        changes = {} if defence is None else models["defences"][defence].get(kind, {})
        recipe = {"kind": kind, **models[kind], **changes, **overrides}
        if kind == "ann":
            if self._data_recipe is None:
                self._data_recipe = data_recipe(self.config["data"])
            recipe.update(arch=models["arch"], arch_kwargs=models.get("arch_kwargs", {}), data=self._data_recipe,
                          seed=models["seeds"][role], config_seed=self.config["seed"])
        else:
            recipe["from"] = self.recipe("ann" if kind == "snn_conv" else "snn_conv", role, defence)
        return recipe

    def key(self, kind: str, role: str = "main", defence: Optional[str] = None, **overrides: Any) -> str:
        """Short id of a model's recipe (part of every cell's settings, so a new recipe means new cells)."""
        return cell_key(self.recipe(kind, role, defence, **overrides))

    def path(self, kind: str, role: str = "main", defence: Optional[str] = None, **overrides: Any) -> Path:
        return self.cache_dir / f"{kind}-{role}-{self.key(kind, role, defence, **overrides)}.pt"

    def get(self, kind: str, role: str = "main", defence: Optional[str] = None, **overrides: Any) -> ImageClassifier:
        """The trained model (in eval mode): memoised, else loaded from the cache, else trained and cached.
        ``defence`` and ``overrides``: see :meth:`recipe` (an override equal to the section's value changes
        nothing)."""
        memo = (kind, role, self.key(kind, role, defence, **overrides))
        if memo in self._memo:
            return self._memo[memo]
        path = self.path(kind, role, defence, **overrides)
        if path.is_file():
            try:
                model = checkpoints.load(path, map_location=self.device, backend=self.backend)
            except checkpoints.VersionMismatchError as error:
                raise checkpoints.VersionMismatchError(f"{error}; in the model cache: delete the file to retrain it "
                                                       "under this version") from error
        else:
            started = time.perf_counter()
            recipe = self.recipe(kind, role, defence, **overrides)
            seed = derive_seed(self.config["seed"], cell_key(recipe))
            seed_everything(seed)
            data = self.config["data"]
            partial = path.with_name(path.name + ".partial")  # the training state after each epoch
            parent_seconds = 0.0

            def parent(parent_kind: str) -> ImageClassifier:  # got where it always was: the RNG sees no change
                nonlocal parent_seconds
                began = time.perf_counter()
                model = reset(self.get(parent_kind, role, defence))
                parent_seconds += time.perf_counter() - began
                return model

            if kind == "ann":
                model = _train_ann(recipe, data, seed, self.progress, partial, self.device)
            elif kind == "snn_conv":
                model = _convert(parent("ann"), recipe, data, seed, self.progress, self.backend)
            else:
                model = _finetune(parent("snn_conv"), recipe, data, seed, self.progress, partial)
            if dist_info().is_main:  # this step's own wall time (a resumed training: since it resumed)
                seconds = round(time.perf_counter() - started - parent_seconds, 1)
                checkpoints.save(model, path, recipe=recipe, training_seconds=seconds)
                partial.unlink(missing_ok=True)
        model.eval()
        self._memo[memo] = model
        return model

    def variant(self, kind: str, role: str = "main", train: Optional[Mapping[str, Any]] = None,
                **knobs: Any) -> ImageClassifier:
        """An independent copy of a model with SNN knobs changed (:func:`apply_knobs`: ``timesteps``, ``levels``,
        ``quantise``, ``rate``, ``leak``). ANNs ignore the knobs (they have none). ``train``: recipe overrides of
        the model to copy (:meth:`get`), e.g. ``{"timesteps": 4}`` for an SNN-BP trained at T = 4."""
        model = copy.deepcopy(reset(self.get(kind, role, **(train or {}))))
        if isinstance(model, SpikingClassifier):
            apply_knobs(model, **knobs)
        return model
