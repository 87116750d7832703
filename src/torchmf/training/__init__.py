"""Training: the epoch loop, validation and the monitor (history, early stopping)."""

from torchmf.training.loop import fit_model, new_model
from torchmf.training.monitor import epoch_hook
from torchmf.training.validation import RankingValidation, Validation

__all__ = ["RankingValidation", "Validation", "epoch_hook", "fit_model", "new_model"]
