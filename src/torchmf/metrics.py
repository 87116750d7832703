"""Metrics; see :mod:`torchmf.evaluation.metrics`."""
from torchmf.evaluation.metrics import coverage, mae, ranking_metrics, rmse

__all__ = ["coverage", "mae", "ranking_metrics", "rmse"]
