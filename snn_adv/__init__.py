"""snn-adv: adversarial robustness of spiking neural networks, a SpikingJelly plugin.

Reproduces Sharmin et al., "Inherent Adversarial Robustness of Deep Spiking Neural Networks" (ECCV 2020) and
tests its claims under strong adaptive attacks. The public API, by room:

- neurons and encoding: :class:`LeakyLIFNode`, :class:`PiecewiseLinear`, :class:`PoissonEncoder`, :class:`DirectEncoder`
- classifiers (images in [0, 1] -> logits): :class:`AnnClassifier`, :class:`SpikingClassifier`
- models, data, training, conversion, checkpoints: :func:`build_classifier`, :func:`vgg5`, :func:`vgg11`,
  :func:`resnet20`, :func:`spiking_twin`, :func:`load_tensors`, :func:`make_loader`, :func:`train`,
  :func:`convert`, :func:`hybrid_init`, :mod:`checkpoints`
- attacks and evaluation: :class:`FGSM`, :class:`PGD`, :class:`WorstCase`, :func:`gradient_mode`, :func:`adapt`,
  :func:`evaluate` (:class:`EvaluationResult` with intervals; paired tests between results in
  :mod:`snn_adv.evaluation`), :mod:`stats` (the array-level tests and intervals),
  :func:`sanity_checks`, :func:`fixed_noise`, :func:`is_stochastic`, :func:`check_attack_protocol`
- the robustness protocol (versioned battery, cascade, certificate): :mod:`protocol`
  (``snn_adv.protocol.robust_accuracy``)
- experiments: :func:`run_study`, :func:`quickstart`
"""
from .version import __version__

import warnings as _warnings

with _warnings.catch_warnings():
    # SpikingJelly 0.0.0.0.14 compiles a few functions with torch.jit.script when imported, which torch
    # >= 2.10 deprecates with a FutureWarning: import the modules this package uses once, here, without it.
    _warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from spikingjelly.activation_based import functional as _functional  # noqa: F401  (imports neuron, surrogate)
    from spikingjelly.activation_based import layer as _layer  # noqa: F401
del _functional, _layer

from . import checkpoints
from .attacks import FGSM, PGD, WorstCase, adapt, gradient_mode, gradient_mode_ensemble
from .classifier import AnnClassifier, ImageClassifier, SpikingClassifier
from .conversion import convert, hybrid_init
from .data import dataset_info, load_tensors, make_loader
from . import stats
from .encoding import DirectEncoder, PoissonEncoder, fixed_noise, is_stochastic
from .evaluation import Check, EvaluationResult, GradientMaskingWarning, check_attack_protocol, evaluate, sanity_checks
from .models import build_classifier, resnet20, spiking_twin, vgg5, vgg11
from .neurons import LeakyLIFNode, PiecewiseLinear, set_leak
from . import protocol
from .quickstart import quickstart
from .studies import STUDIES, run_studies, run_study
from .training import seed_everything, train, train_ann, train_snn

__all__ = [
    "__version__",
    "AnnClassifier",
    "Check",
    "DirectEncoder",
    "EvaluationResult",
    "FGSM",
    "GradientMaskingWarning",
    "ImageClassifier",
    "LeakyLIFNode",
    "PGD",
    "PiecewiseLinear",
    "PoissonEncoder",
    "STUDIES",
    "SpikingClassifier",
    "WorstCase",
    "adapt",
    "build_classifier",
    "check_attack_protocol",
    "checkpoints",
    "convert",
    "dataset_info",
    "evaluate",
    "fixed_noise",
    "gradient_mode",
    "gradient_mode_ensemble",
    "hybrid_init",
    "is_stochastic",
    "load_tensors",
    "make_loader",
    "protocol",
    "quickstart",
    "resnet20",
    "run_studies",
    "run_study",
    "sanity_checks",
    "seed_everything",
    "set_leak",
    "spiking_twin",
    "stats",
    "train",
    "train_ann",
    "train_snn",
    "vgg11",
    "vgg5",
]
