"""Distributionally robust (KL-DRO) linear models for scikit-learn.

The risk functions evaluate the exact and the relaxed KL-DRO risk of any loss vector.
"""

from .classification import DROClassifier
from .regression import DRORegressor
from .risk import (
    gradient_factors,
    kl_dro_risk,
    optimal_eta,
    relaxation_offset,
    relaxed_objective,
    worst_case_weights,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "DROClassifier",
    "DRORegressor",
    "gradient_factors",
    "kl_dro_risk",
    "optimal_eta",
    "relaxation_offset",
    "relaxed_objective",
    "worst_case_weights",
]
