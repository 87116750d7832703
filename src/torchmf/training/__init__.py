"""Training: the epoch loop, validation and the monitor (history, early stopping)."""

from torchmf.training.loop import fit_model, new_model
from torchmf.training.validation import RankingValidation, Validation

__all__ = ["RankingValidation", "Validation", "fit_model", "new_model"]
