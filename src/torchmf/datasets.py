"""Public datasets namespace: ``torchmf.datasets.load_movielens``, ``synthetic``, ..."""

from torchmf.data.datasets import (
    SyntheticTruth,
    data_home,
    load_movielens,
    load_movielens_fold,
    synthetic,
    synthetic_counts,
)
from torchmf.data.demo import GENRES, load_demo

__all__ = [
    "GENRES",
    "SyntheticTruth",
    "data_home",
    "load_demo",
    "load_movielens",
    "load_movielens_fold",
    "synthetic",
    "synthetic_counts",
]
