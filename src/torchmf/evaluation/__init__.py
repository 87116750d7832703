"""Evaluation: metrics, ``evaluate`` and model selection."""

from torchmf.evaluation.autotune import autotune
from torchmf.evaluation.evaluate import evaluate
from torchmf.evaluation.selection import cross_validate, grid_search, optuna_search

__all__ = ["autotune", "cross_validate", "evaluate", "grid_search", "optuna_search"]
