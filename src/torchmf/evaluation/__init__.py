"""Evaluation: metrics, ``evaluate`` and model selection."""

from torchmf.evaluation.evaluate import evaluate
from torchmf.evaluation.selection import cross_validate, grid_search, optuna_search

__all__ = ["cross_validate", "evaluate", "grid_search", "optuna_search"]
