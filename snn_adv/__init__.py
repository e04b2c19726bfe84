"""snn-adv: adversarial robustness of spiking neural networks, a SpikingJelly plugin.

Reproduces Sharmin et al., "Inherent Adversarial Robustness of Deep Spiking Neural Networks" (ECCV 2020) and
tests its claims under strong adaptive attacks. The package root holds the names of the main jobs (``__all__``);
everything else lives in the subpackage that owns it, as SpikingJelly exposes ``neuron``, ``surrogate`` and
``functional``:

- :mod:`snn_adv.neurons` (LIF neuron, surrogates, backward rules, ``NEURONS`` registry),
  :mod:`snn_adv.encoding` (Poisson and direct encoders, ``fixed_noise``, ``is_stochastic``);
- :mod:`snn_adv.classifier` (the [0, 1]-images-in, logits-out contract), :mod:`snn_adv.models` (VGG5/VGG11/ResNet20
  and their spiking twins), :mod:`snn_adv.data`, :mod:`snn_adv.checkpoints`;
- :mod:`snn_adv.training`, :mod:`snn_adv.conversion`, :mod:`snn_adv.adversarial_training`;
- :mod:`snn_adv.attacks` (attacks, gradient modes, torchattacks adapter), :mod:`snn_adv.attack_specs` (the attack
  registry), :mod:`snn_adv.evaluation` (engine, results, paired comparisons, self-checks), :mod:`snn_adv.stats`;
- :mod:`snn_adv.protocol` (the versioned, cascaded, self-certifying battery), :mod:`snn_adv.studies`.

Names the root exported in 0.1.0 and no longer does still resolve, with a :class:`DeprecationWarning` naming their
home (:data:`MOVED`), until 0.3.0.
"""
from .version import __version__

import importlib as _importlib
import warnings as _warnings
from typing import Any as _Any

with _warnings.catch_warnings():
    # SpikingJelly 0.0.0.0.14 compiles a few functions with torch.jit.script when imported, which torch
    # >= 2.10 deprecates with a FutureWarning: import the modules this package uses once, here, without it.
    _warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from spikingjelly.activation_based import functional as _functional  # noqa: F401  (imports neuron, surrogate)
    from spikingjelly.activation_based import layer as _layer  # noqa: F401
del _functional, _layer

from .attacks import FGSM, PGD, adapt, gradient_mode
from .classifier import AnnClassifier, SpikingClassifier
from .conversion import convert, hybrid_init
from .encoding import DirectEncoder, PoissonEncoder, fixed_noise
from .evaluation import evaluate, sanity_checks
from .models import build_classifier
from .neurons import LeakyLIFNode, PiecewiseLinear
from .protocol import robust_accuracy
from .studies import run_study
from .training import train

__all__ = [
    "__version__",
    # neurons and encoders
    "LeakyLIFNode", "PiecewiseLinear", "PoissonEncoder", "DirectEncoder", "fixed_noise",
    # classifiers and models
    "AnnClassifier", "SpikingClassifier", "adapt", "build_classifier",
    # training and conversion
    "train", "convert", "hybrid_init",
    # attacks and evaluation
    "FGSM", "PGD", "gradient_mode", "evaluate", "sanity_checks",
    # the protocol and the studies
    "robust_accuracy", "run_study",
]

#: A name the root exported in 0.1.0 -> the module that owns it (the root resolves it with a DeprecationWarning).
MOVED = {
    "Check": "snn_adv.evaluation",
    "EvaluationResult": "snn_adv.evaluation",
    "GradientMaskingWarning": "snn_adv.attacks",
    "ImageClassifier": "snn_adv.classifier",
    "STUDIES": "snn_adv.studies",
    "WorstCase": "snn_adv.attacks",
    "check_attack_protocol": "snn_adv.evaluation",
    "dataset_info": "snn_adv.data",
    "gradient_mode_ensemble": "snn_adv.attacks",
    "is_stochastic": "snn_adv.encoding",
    "load_tensors": "snn_adv.data",
    "make_loader": "snn_adv.data",
    "resnet20": "snn_adv.models",
    "run_studies": "snn_adv.studies",
    "seed_everything": "snn_adv.training",
    "set_leak": "snn_adv.neurons",
    "spiking_twin": "snn_adv.models",
    "train_ann": "snn_adv.training",
    "train_snn": "snn_adv.training",
    "vgg11": "snn_adv.models",
    "vgg5": "snn_adv.models",
}


def __getattr__(name: str) -> _Any:
    """Resolve a name of :data:`MOVED` from its home, warning once per call site (PEP 562)."""
    if name not in MOVED:
        raise AttributeError(f"module 'snn_adv' has no attribute {name!r}")
    home = MOVED[name]
    _warnings.warn(f"snn_adv.{name} moved to {home}.{name} in 0.2.0; the root's alias goes in 0.3.0",
                   DeprecationWarning, stacklevel=2)
    return getattr(_importlib.import_module(home), name)
