"""torchmf: collaborative filtering by matrix factorization on PyTorch.

Quick start::

    import torchmf
    ratings = {"user1": {"item1": 5, "item2": 3}, "user2": {"item1": 2, "item3": 5}}
    model = torchmf.MatrixFactorization(factors=8).fit(ratings)
    model.predict("user2", "item2")
    model.recommend("user1", k=2)
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from torchmf.errors import (
    DataError,
    ModelFileError,
    NotFittedError,
    TorchMFError,
    TrainingError,
    UnknownIdError,
)
from torchmf.version import __version__

# Public names resolve on first use (PEP 562), so `import torchmf` and `torchmf --help` stay fast and
# do not import torch; the objects are the same as importing them from their modules.
_LAZY = {
    "IdMap": "torchmf.data",
    "Interactions": "torchmf.data",
    "read_ratings": "torchmf.data",
    "MatrixFactorization": "torchmf.estimator",
    "ModelState": "torchmf.estimator",
    "autotune": "torchmf.evaluation",
    "cross_validate": "torchmf.evaluation",
    "evaluate": "torchmf.evaluation",
    "grid_search": "torchmf.evaluation",
    "optuna_search": "torchmf.evaluation",
    "MFModel": "torchmf.nn",
}
_SUBMODULES = ("datasets", "metrics", "split")

if TYPE_CHECKING:  # pragma: no cover
    from torchmf import datasets, metrics, split
    from torchmf.data import IdMap, Interactions, read_ratings
    from torchmf.estimator import MatrixFactorization, ModelState
    from torchmf.evaluation import autotune, cross_validate, evaluate, grid_search, optuna_search
    from torchmf.nn import MFModel

    load = MatrixFactorization.load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"torchmf.{name}")
    elif name == "load":  # one way to load: the estimator's own classmethod
        value = importlib.import_module("torchmf.estimator").MatrixFactorization.load
    else:
        raise AttributeError(f"module 'torchmf' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DataError",
    "IdMap",
    "Interactions",
    "MFModel",
    "MatrixFactorization",
    "ModelFileError",
    "ModelState",
    "NotFittedError",
    "TorchMFError",
    "TrainingError",
    "UnknownIdError",
    "__version__",
    "autotune",
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
