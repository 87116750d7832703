"""Evaluation: metrics, ``evaluate`` and model selection."""

from torchmf.evaluation.evaluate import evaluate
from torchmf.evaluation.metrics import coverage, mae, ranking_metrics, rmse
from torchmf.evaluation.selection import cross_validate, grid_search, optuna_search

__all__ = ["coverage", "cross_validate", "evaluate", "grid_search", "mae", "optuna_search", "ranking_metrics", "rmse"]
