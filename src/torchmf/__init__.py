"""torchmf: collaborative filtering by matrix factorization on PyTorch.

Quick start::

    import torchmf
    ratings = {"user1": {"item1": 5, "item2": 3}, "user2": {"item1": 2, "item3": 5}}
    model = torchmf.MatrixFactorization(factors=8).fit(ratings)
    model.predict("user2", "item2")
    model.recommend("user1", k=2)
"""

import logging

from torchmf import datasets, metrics, split
from torchmf.data import IdMap, Interactions, read_ratings
from torchmf.errors import (
    DataError,
    ModelFileError,
    NotFittedError,
    TorchMFError,
    TrainingError,
    UnknownIdError,
)
from torchmf.estimator import MatrixFactorization
from torchmf.evaluation import cross_validate, evaluate, grid_search, optuna_search
from torchmf.nn import MFModel

load = MatrixFactorization.load

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "IdMap",
    "Interactions",
    "MFModel",
    "MatrixFactorization",
    "ModelFileError",
    "NotFittedError",
    "TorchMFError",
    "TrainingError",
    "UnknownIdError",
    "__version__",
    "cross_validate",
    "datasets",
    "evaluate",
    "grid_search",
    "load",
    "metrics",
    "optuna_search",
    "read_ratings",
    "split",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
