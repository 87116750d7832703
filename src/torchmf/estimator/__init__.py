"""The estimator layer: :class:`MatrixFactorization`, :class:`ModelState` and their persistence."""

from torchmf.estimator.mf import MatrixFactorization
from torchmf.estimator.persistence import load_state, save_state
from torchmf.estimator.state import ModelState

__all__ = ["MatrixFactorization", "ModelState", "load_state", "save_state"]
