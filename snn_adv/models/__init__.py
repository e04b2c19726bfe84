"""The paper's architectures as ANN bodies, their spiking twins, and one factory for whole classifiers.

``build_classifier(arch, dataset, kind)`` returns an :class:`~snn_adv.classifier.AnnClassifier` or a
:class:`~snn_adv.classifier.SpikingClassifier` whose ``.arch`` records how to rebuild it (checkpoints use it)::

    ann = build_classifier("vgg5", "cifar10")                                   # ANN
    snn = build_classifier("vgg5", "cifar10", kind="snn", timesteps=100, leak=0.99, thresholds=[...])
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn

from ..classifier import AnnClassifier, ImageClassifier, SpikingClassifier
from ..data import DatasetSpec, dataset_info
from ..encoding import Encoder, build_encoder
from ..neurons import build_neuron
from ..validation import check_choice
from .folding import fold_batchnorm
from .resnet import BasicBlock, resnet20
from .spiking import get_thresholds, memory_saving_pools, recompute_currents, set_thresholds, spiking_twin
from .vgg import make_vgg, vgg5, vgg11

__all__ = [
    "ARCHITECTURES",
    "BasicBlock",
    "CLASSIFIER_KINDS",
    "build_body",
    "build_classifier",
    "fold_batchnorm",
    "get_thresholds",
    "make_vgg",
    "memory_saving_pools",
    "recompute_currents",
    "resnet20",
    "set_thresholds",
    "snn_from_ann",
    "spiking_twin",
    "vgg5",
    "vgg11",
    "vgg_tiny",
]


def vgg_tiny(in_channels: int = 1, num_classes: int = 10, input_size: Union[int, Tuple[int, int]] = 28, **kwargs) -> nn.Sequential:
    """conv8-avgpool-conv16-avgpool-fc64-fc64-fc(K): a seconds-to-train model for tests and CPU demos."""
    kwargs.setdefault("fc_dropout", 0.0)
    return make_vgg([8, "A", 16, "A"], kwargs.pop("hidden", 64), in_channels, num_classes, input_size, **kwargs)


#: name -> factory ``f(in_channels, num_classes, input_size, **kwargs) -> nn.Module`` (an ANN body).
ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {"vgg5": vgg5, "vgg11": vgg11, "resnet20": resnet20, "vgg-tiny": vgg_tiny}
CLASSIFIER_KINDS = ("ann", "snn")


def build_body(arch: str, dataset: DatasetSpec, **arch_kwargs: Any) -> nn.Module:
    """The ANN body of ``arch`` sized for ``dataset`` (channels, classes, input size; a name, an image-folder spec
    or a :class:`~snn_adv.data.DatasetInfo`)."""
    info = dataset_info(dataset)
    factory = ARCHITECTURES[check_choice("arch", arch, ARCHITECTURES)]
    return factory(in_channels=info.in_channels, num_classes=info.num_classes, input_size=info.input_size, **arch_kwargs)


def build_classifier(
    arch: str,
    dataset: DatasetSpec,
    kind: str = "ann",
    timesteps: int = 100,
    leak: float = 1.0,
    thresholds: Optional[Sequence[float]] = None,
    encoder: Optional[Encoder] = None,
    readout: str = "membrane",
    backend: str = "torch",
    neuron: Optional[Mapping[str, Any]] = None,
    **arch_kwargs: Any,
) -> ImageClassifier:
    """A fresh classifier of ``kind`` ``'ann'`` or ``'snn'`` (the twin of the ANN body: ``leak`` 1 for SNN-conv,
    0.99 for SNN-BP; ``thresholds`` one per neuron layer; default encoder: Poisson). ``neuron``: every neuron's
    :meth:`~snn_adv.neurons.LeakyLIFNode.settings` record (``{"name": "hard_reset_lif", "v_reset": 0.0}``; a name of
    :data:`~snn_adv.neurons.NEURONS`), recorded in ``arch["neuron"]``; default :class:`~snn_adv.neurons.LeakyLIFNode`.

    ``dataset``: a dataset name, a user's image-folder spec or :class:`~snn_adv.data.DatasetInfo` (its
    normalisation, channels, size and classes size the model). ``classifier.arch`` = ``{"name", "dataset",
    "kwargs"}`` (``dataset`` as its JSON spec): with the weights, all a checkpoint needs.
    """
    check_choice("kind", kind, CLASSIFIER_KINDS)
    info = dataset_info(dataset)
    body = build_body(arch, dataset, **arch_kwargs)
    common = dict(mean=info.mean, std=info.std, in_channels=info.in_channels, input_size=info.input_size,
                  arch={"name": arch, "dataset": info.spec(), "kwargs": dict(arch_kwargs)})
    if kind == "ann":
        if neuron is not None:
            raise ValueError("argument 'neuron' is for kind 'snn': an ANN has no spiking neurons")
        return AnnClassifier(body, **common)
    factory = None
    if neuron is not None:
        common["arch"]["neuron"] = dict(neuron)
        build_neuron(neuron, leak=leak, backend=backend)  # an unknown name or setting fails here, named
        factory = lambda: build_neuron(neuron, leak=leak, backend=backend, step_mode="m")  # noqa: E731
    return SpikingClassifier(spiking_twin(body, leak=leak, thresholds=thresholds, backend=backend, neuron_factory=factory),
                             encoder=encoder, timesteps=timesteps, readout=readout, **common)


def snn_from_ann(
    ann: AnnClassifier,
    timesteps: int,
    leak: float = 1.0,
    thresholds: Optional[Sequence[float]] = None,
    encoder: Optional[Encoder] = None,
    backend: str = "torch",
) -> SpikingClassifier:
    """A :class:`SpikingClassifier` on an independent copy of ``ann``'s weights (same normalisation and arch)."""
    if not isinstance(ann, AnnClassifier):
        raise TypeError(f"argument 'ann' must be an AnnClassifier, got {type(ann).__name__}")
    body = spiking_twin(copy.deepcopy(ann.body), leak=leak, thresholds=thresholds, backend=backend)
    return SpikingClassifier(
        body, encoder=encoder if encoder is not None else build_encoder({"name": "poisson"}), timesteps=timesteps,
        mean=ann.mean.flatten().tolist(), std=ann.std.flatten().tolist(), in_channels=ann.in_channels,
        input_size=ann.input_size, arch=copy.deepcopy(ann.arch),
    ).to(ann.mean.device)
