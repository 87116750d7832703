"""The estimator layer: :class:`MatrixFactorization` and its persistence."""

from torchmf.estimator.mf import MatrixFactorization
from torchmf.estimator.persistence import load_model

__all__ = ["MatrixFactorization", "load_model"]
