"""Distributionally robust (KL-DRO) linear models for scikit-learn.

:class:`DRORegressor` and :class:`DROClassifier` minimise the KL-DRO risk of a linear model
through the softplus relaxation of LogSumExp. The risk functions evaluate the exact and the
relaxed KL-DRO risk of any loss vector, and the model selection metrics of
:mod:`sklearn_lse.metrics` are also importable from here.
"""

# First: Numba must have a writable cache location before any kernel module is imported.
from . import _numba_cache  # noqa: F401
from .classification import DROClassifier
from .metrics import make_robust_scorer, robust_risk_score, worst_class_recall_score
from .regression import DRORegressor
from .risk import (
    gradient_factors,
    kl_ball_risk,
    kl_dro_risk,
    optimal_eta,
    relaxation_offset,
    relaxed_objective,
    worst_case_weights,
)
from .transport import EntropicTransport

__version__ = "0.1.0.dev0"

__all__ = [
    "DROClassifier",
    "DRORegressor",
    "EntropicTransport",
    "gradient_factors",
    "kl_ball_risk",
    "kl_dro_risk",
    "make_robust_scorer",
    "optimal_eta",
    "relaxation_offset",
    "relaxed_objective",
    "robust_risk_score",
    "worst_case_weights",
    "worst_class_recall_score",
]
