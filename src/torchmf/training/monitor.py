"""Per-epoch bookkeeping shared by every solver: history, progress, early stopping.

A solver runs its own update loop and calls :meth:`Monitor.end_epoch` once an
epoch (or ALS sweep). The monitor records the history, draws the progress bar,
checks for divergence and decides when to stop; the solver's code stays about
the maths.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from torchmf.errors import TrainingError

__all__ = ["Monitor"]

log = logging.getLogger(__name__)


class Monitor:
    """History, progress bar and early stopping for one fit.

    Parameters
    ----------
    epochs : int
        Maximum number of epochs.
    validate : callable, optional
        ``validate() -> dict`` of validation metrics, called after each epoch.
    monitor : str
        Key of ``validate()``'s result that early stopping watches.
    higher_is_better : bool
        Direction of ``monitor`` (False for RMSE, True for NDCG).
    patience : int, optional
        Stop after this many epochs without improvement and restore the best
        epoch's weights; None trains all epochs (still restoring the best one
        when ``validate`` is given).
    snapshot, restore : callable
        Copy out / put back the model's weights.
    divergence_hint : str
        Advice appended to the :class:`TrainingError` raised when the loss is
        not finite, naming the setting to change.
    verbose : bool
        Show a tqdm progress bar.
    """

    def __init__(
        self,
        epochs: int,
        snapshot: Callable[[], Any],
        restore: Callable[[Any], None],
        validate: Callable[[], dict[str, float]] | None = None,
        monitor: str = "rmse",
        higher_is_better: bool = False,
        patience: int | None = None,
        divergence_hint: str = "lower the learning rate",
        verbose: bool = True,
        desc: str = "fit",
    ) -> None:
        self.epochs = epochs
        self.snapshot = snapshot
        self.restore = restore
        self.validate = validate
        self.monitor = monitor
        self.higher_is_better = higher_is_better
        self.patience = patience
        self.divergence_hint = divergence_hint
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self._best_value = -math.inf if higher_is_better else math.inf
        self._best_state: Any = None
        self._bar = tqdm(total=epochs, desc=desc, disable=not verbose, leave=False, unit="epoch")

    def end_epoch(self, epoch: int, train_loss: float) -> bool:
        """Record epoch ``epoch`` (1-based); True means stop training now."""
        if not math.isfinite(train_loss):
            self._bar.close()
            raise TrainingError(
                f"training diverged at epoch {epoch} (loss is {train_loss}); {self.divergence_hint}"
            )
        row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
        stop = False
        if self.validate is not None:
            metrics = self.validate()
            row.update({f"val_{k}": v for k, v in metrics.items()})
            value = metrics[self.monitor]
            better = value > self._best_value if self.higher_is_better else value < self._best_value
            if better:
                self._best_value = value
                self.best_epoch = epoch
                self._best_state = self.snapshot()
            elif self.patience is not None and self.best_epoch is not None and epoch - self.best_epoch >= self.patience:
                stop = True
        self.history.append(row)
        self._bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
        self._bar.update(1)
        log.debug("epoch %d: %s", epoch, row)
        return stop

    def finish(self) -> None:
        """Close the bar and restore the best epoch's weights, if validating."""
        self._bar.close()
        if self._best_state is not None and self.best_epoch != len(self.history):
            log.info("restoring weights of best epoch %d", self.best_epoch)
            self.restore(self._best_state)
