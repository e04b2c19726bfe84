"""Adversarial attacks through the temporal unrolling of spiking networks (and on ANNs), with selectable gradient
modes for SNN sources, a worst-case ensemble, and an adapter for torchattacks.

One file per attack family: :mod:`.fgsm`, :mod:`.pgd`, :mod:`.apgd` (APGD, APGD-T), :mod:`.sapgd` (SA-PGD),
:mod:`.square` (gradient-free), :mod:`.ensemble`; shared machinery in :mod:`.base`;
gradient rules in :mod:`.gradients`; torchattacks adapter in :mod:`.adapter`; minimal-norm attacks at a budget
and the gradient rescaler in :mod:`.budget`.
"""
from ..module_state import frozen_parameters, preserved_modes
from .adapter import AdaptedSpikingClassifier, adapt, neurons_in_training_mode
from .apgd import APGD
from .base import VANISHING_RATIO, Attack, GradientMaskingWarning, NoInputGradientError, project
from .budget import BudgetedAttack, GradientScaled, perturbation_norm, within_budget
from .ensemble import WorstCase, gradient_mode_ensemble
from .fgsm import FGSM
from .gradients import (ASSG, BPTT, GRADIENT_MODES, HART, PDSG, CyclingGradient, GradientMode, RateGradient,
                        gradient_mode, resolve_gradient_mode)
from .pgd import PGD
from .sapgd import SAPGD
from .square import Square

__all__ = [
    "APGD",
    "ASSG",
    "AdaptedSpikingClassifier",
    "Attack",
    "BPTT",
    "BudgetedAttack",
    "CyclingGradient",
    "FGSM",
    "GRADIENT_MODES",
    "GradientMode",
    "GradientMaskingWarning",
    "GradientScaled",
    "HART",
    "NoInputGradientError",
    "PDSG",
    "PGD",
    "RateGradient",
    "SAPGD",
    "VANISHING_RATIO",
    "Square",
    "WorstCase",
    "adapt",
    "frozen_parameters",
    "gradient_mode",
    "gradient_mode_ensemble",
    "neurons_in_training_mode",
    "perturbation_norm",
    "preserved_modes",
    "project",
    "resolve_gradient_mode",
    "within_budget",
]
