"""Exception types raised by torchmf.

Every error a user can cause has a type of ours, so callers can catch torchmf
problems without catching unrelated bugs. Each one subclasses the builtin a
Python user would already expect (``ValueError``, ``KeyError``) so generic
handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "ModelFileError",
    "NotFittedError",
    "TorchMFError",
    "TrainingError",
    "UnknownIdError",
]


class TorchMFError(Exception):
    """Base class of every exception torchmf raises on purpose."""


class DataError(TorchMFError, ValueError):
    """Input data is malformed: a missing column, a bad value, an empty set, ..."""


class UnknownIdError(TorchMFError, KeyError):
    """A user or item id that the model (or id map) has never seen."""

    def __init__(self, kind: str, raw_id: object) -> None:
        self.kind = kind
        self.raw_id = raw_id
        super().__init__(f"unknown {kind} id {raw_id!r}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class ModelFileError(TorchMFError, ValueError):
    """A saved model is missing, truncated, tampered with or not a torchmf model."""


class TrainingError(TorchMFError, RuntimeError):
    """Training failed, e.g. the loss diverged to NaN or infinity."""


class NotFittedError(TorchMFError, RuntimeError):
    """A method that needs a trained model was called before ``fit``."""
