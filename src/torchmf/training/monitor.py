"""Per-epoch bookkeeping shared by every solver: history, progress, early stopping.

A solver runs its own update loop and calls :meth:`Monitor.end_epoch` once an
epoch (or ALS sweep). The monitor records the history, draws the progress bar,
checks for divergence and decides when to stop; the solver's code stays about
the maths.

Divergence is not only NaN or infinity: an adaptive optimiser with a huge
learning rate keeps the loss finite but astronomically high (1e8 and more
against 0.5 for the mean predictor). Training stops with a
:class:`TrainingError` when the loss

- is not finite;
- exceeds :data:`BLOWUP` times the *baseline*, the training loss of the
  trivial model (the mean predictor for ratings, all-zero scores for ranking
  losses), or :data:`BLOWUP` times the first epoch's loss;
- grew :data:`GROWTH_EPOCHS` epochs in a row while above the baseline.

A fit that ends with its loss above the baseline learned nothing: that is
logged as a warning.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from torchmf.errors import TrainingError
from torchmf.solvers.losses import PAIRWISE

__all__ = ["BLOWUP", "GROWTH_EPOCHS", "Monitor", "baseline_loss", "divergence_cause", "epoch_hook"]

log = logging.getLogger(__name__)

BLOWUP = 1e3
GROWTH_EPOCHS = 3
# a value whose square, summed over the data, no longer fits float32 arithmetic
_HUGE_VALUE = 1e15


def baseline_loss(values: np.ndarray, hp: dict[str, Any], n_items: int, ranking: bool) -> float | None:
    """Training loss of the trivial model, in the units the solvers report.

    Rating losses (``mse``, half squared error per rating): the mean
    predictor's, ``0.5 * var(values)``. Sampled-negative ranking losses (per
    positive): all scores zero, e.g. ``negatives * log 2`` for BPR. None where
    no such reference is defined (iALS, whose loss includes the unobserved
    pairs and regulariser).
    """
    if not ranking:
        return 0.5 * float(np.var(values, dtype=np.float64)) if len(values) else None
    fn = PAIRWISE.get(hp["loss"])
    if fn is None:
        return None
    pos, neg = torch.zeros(1, dtype=torch.float64), torch.zeros(1, max(1, int(hp["negatives"])), dtype=torch.float64)
    loss = fn(pos, neg, n_items)[0] if hp["loss"] == "warp" else fn(pos, neg)[0]
    return float(loss)


def divergence_cause(values: np.ndarray, raw_id: Callable[[int], str], hp: dict[str, Any]) -> str | None:
    """The input value most likely to have made training diverge, in words; None when none stands out.

    Parameters
    ----------
    values : numpy.ndarray, shape (nnz,)
        Training values.
    raw_id : callable
        Interaction index -> "user U, item I" for the message.
    hp : dict
        Effective hyperparameters.
    """
    if len(values) == 0:
        return None
    big = int(np.argmax(np.abs(values)))
    if abs(float(values[big])) > _HUGE_VALUE:
        return (f"value {float(values[big]):g} ({raw_id(big)}) is too large for float32 training; "
                "rescale the values")
    if hp["loss"] == "ials" and float(values.min()) < 0:  # values are confidences only for iALS
        neg = int(np.argmin(values))
        return (f"value {float(values[neg]):g} ({raw_id(neg)}) is negative; loss={hp['loss']!r} needs "
                "non-negative interaction strengths")
    return None

# called with each epoch's history row; True stops the fit (kept as early stopping would keep it)
_EPOCH_HOOK: contextvars.ContextVar[Callable[[dict[str, float]], bool] | None] = contextvars.ContextVar(
    "torchmf_epoch_hook", default=None
)


@contextlib.contextmanager
def epoch_hook(hook: Callable[[dict[str, float]], bool]) -> Iterator[None]:
    """Call ``hook(row)`` after every epoch of every fit inside the ``with`` block.

    ``row`` is the epoch's history row (``epoch``, ``train_loss``, ``val_*``);
    a True return stops that fit after this epoch, keeping the best epoch's
    weights as early stopping does. Used by searches to prune trials and keep
    to a time budget.
    """
    token = _EPOCH_HOOK.set(hook)
    try:
        yield
    finally:
        _EPOCH_HOOK.reset(token)


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
        Advice appended to the :class:`TrainingError` raised when the loss
        diverges, naming the setting to change.
    baseline : float, optional
        Training loss of the trivial model (:func:`baseline_loss`).
    cause : callable, optional
        ``cause() -> str or None``: the input value that made training
        diverge (:func:`divergence_cause`); named first in the error.
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
        baseline: float | None = None,
        cause: Callable[[], str | None] | None = None,
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
        self.baseline = baseline
        self.cause = cause
        self._growing = 0
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self._best_value = -math.inf if higher_is_better else math.inf
        self._best_state: Any = None
        # a bar where someone watches a terminal (or a notebook); one log line per epoch elsewhere, so a
        # fit under a scheduler or with redirected output is not silent
        self._lines = verbose and not sys.stderr.isatty() and "ipykernel" not in sys.modules
        self._bar = tqdm(total=epochs, desc=desc, disable=not verbose or self._lines, leave=False, unit="epoch")
        self._desc = desc
        self._start = time.perf_counter()

    def end_epoch(self, epoch: int, train_loss: float) -> bool:
        """Record epoch ``epoch`` (1-based); True means stop training now."""
        self._check_divergence(epoch, train_loss)
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
        hook = _EPOCH_HOOK.get()
        if hook is not None and hook(row):
            stop = True
        self._bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
        self._bar.update(1)
        if self._lines:
            metrics = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
            log.info("%s epoch %d/%d: %s (%.1f s)", self._desc, epoch, self.epochs, metrics,
                     time.perf_counter() - self._start)
        else:
            log.debug("epoch %d: %s", epoch, row)
        return stop

    def _check_divergence(self, epoch: int, loss: float) -> None:
        why = None
        first = self.history[0]["train_loss"] if self.history else None
        previous = self.history[-1]["train_loss"] if self.history else None
        above = self.baseline is not None and loss > self.baseline
        self._growing = self._growing + 1 if above and previous is not None and loss > previous else 0
        if not math.isfinite(loss):
            why = f"loss is {loss}"
        elif self.baseline is not None and self.baseline > 0 and loss > BLOWUP * self.baseline:
            why = f"loss {loss:.4g} is over {BLOWUP:g} times the {self.baseline:.4g} of a constant prediction"
        elif first is not None and first > 0 and loss > BLOWUP * first:
            why = f"loss {loss:.4g} is over {BLOWUP:g} times the first epoch's {first:.4g}"
        elif self._growing >= GROWTH_EPOCHS:
            why = (f"loss grew {self._growing} epochs in a row to {loss:.4g}, above the {self.baseline:.4g} "
                   "of a constant prediction")
        if why is None:
            return
        self._bar.close()
        cause = self.cause() if self.cause is not None else None
        advice = f"{cause}; otherwise {self.divergence_hint}" if cause else self.divergence_hint
        raise TrainingError(f"training diverged at epoch {epoch} ({why}); {advice}")

    def finish(self) -> None:
        """Close the bar and restore the best epoch's weights, if validating."""
        self._bar.close()
        last = self.history[-1]["train_loss"] if self.history else None
        if self.baseline is not None and last is not None and last > self.baseline:
            log.warning("training loss %.4g ended above the %.4g of a constant prediction: the model learned "
                        "nothing; %s", last, self.baseline, self.divergence_hint)
        if self._best_state is not None and self.best_epoch != len(self.history):
            log.info("restoring weights of best epoch %d", self.best_epoch)
            self.restore(self._best_state)
