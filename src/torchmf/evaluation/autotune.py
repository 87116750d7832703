"""Automatic tuning: Optuna over the solver's search space within a time budget, then a refit.

``autotune`` carves a validation split out of the training data, lets Optuna's
TPE sampler propose settings from the ``search_space`` the solver class
declares, fits each with per-epoch validation (early stopping, and median
pruning of trials that trail earlier ones at the same epoch), and stops
starting trials when the time left would not fit one more plus the refit.
It then refits the best setting on all the training data for the epoch count
validation chose. The trial loop is :mod:`torchmf.evaluation.selection`'s.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterator, Mapping
from typing import Any

from tqdm.auto import tqdm

from torchmf.data.convert import as_interactions
from torchmf.data.interactions import Interactions
from torchmf.data.split import random_split, user_split
from torchmf.estimator import MatrixFactorization
from torchmf.evaluation.selection import _clone, _lower_is_better, _search, _suggest, default_metric
from torchmf.metrics import RANKING_METRICS
from torchmf.solvers import get_solver, is_ranking_loss
from torchmf.training import epoch_hook
from torchmf.training.validation import VAL_K

__all__ = ["autotune", "search_space"]

log = logging.getLogger(__name__)

# share of the training data held out to score trials
VALIDATION_FRACTION = 0.2
# early-stopping patience of each trial, in epochs
PATIENCE = 3
# margin on the refit's estimated time (timings on a shared machine vary)
SAFETY = 1.25
# the clock the budget is measured with (tests replace it with a simulated one)
_clock = time.perf_counter


def search_space(estimator: MatrixFactorization) -> dict[str, tuple]:
    """The ``search_space`` of the solver class that trains ``estimator``'s loss.

    Raises
    ------
    ValueError
        When that solver declares no search space.
    """
    p = estimator.get_params()
    cls = get_solver(p["loss"], p["solver"])
    space = getattr(cls, "search_space", None)
    if not space:
        raise ValueError(f"solver {cls.name!r} (loss={p['loss']!r}) declares no search_space to tune")
    return dict(space)


class _Tuner:
    """The trial feed, the epoch hook (pruning, budget) and the bookkeeping of one ``autotune`` run."""

    def __init__(self, study: Any, space: dict[str, tuple], start: float, budget_s: float, n_trials: int | None,
                 refit_scale: float, metric: str, watch: str | None, bar: Any) -> None:
        self.study, self.space, self.n_trials = study, space, n_trials
        self.start = start
        self.deadline = self.start + budget_s
        self.refit_scale = refit_scale  # refit rows / trial rows
        self.metric, self.bar = metric, bar
        self.watch = watch  # the per-epoch validation column pruning reads (None: no pruning)
        self.trial: Any = None
        self.trial_start = 0.0
        self.pruned = False
        self.seconds: list[float] = []
        self.refit_estimate = 0.0  # of the best trial so far
        self.best = math.nan
        self.lower = _lower_is_better(metric)

    # -- the candidates -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.n_trials is None or len(self.seconds) < self.n_trials:
            if self.seconds:
                left = self.deadline - _clock()
                if left < statistics.median(self.seconds) + SAFETY * self.refit_estimate:
                    log.info("autotune: %.1f s left, not enough for another trial and the refit", left)
                    break
            self.trial = self.study.ask()
            self.pruned = False
            self.trial_start = _clock()
            yield {name: _suggest(self.trial, name, spec) for name, spec in self.space.items()}

    # -- after every epoch of a trial ---------------------------------------------------------------------
    def on_epoch(self, row: dict[str, float]) -> bool:
        if not any(key.startswith("val_") for key in row):
            return False  # a fit inside the trial that is not the validated one (e.g. an interaction ranker)
        epoch = int(row["epoch"])
        now = _clock()
        per_epoch = (now - self.trial_start) / epoch
        value = row.get(self.watch) if self.watch else None
        if value is not None and math.isfinite(value):
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                self.pruned = True
                return True
        # this trial's refit, should it win, costs about its own epochs on more rows
        refit = max(self.refit_estimate, per_epoch * epoch * self.refit_scale)
        if now + per_epoch + SAFETY * refit > self.deadline:
            log.info("autotune: trial %d stopped at epoch %d by the time budget", self.trial.number, epoch)
            return True
        return False

    # -- after every trial -----------------------------------------------------------------------------------
    def on_result(self, value: float, model: Any) -> dict[str, Any]:
        import optuna

        seconds = _clock() - self.trial_start
        self.seconds.append(seconds)
        ran = len(model.history_)
        epochs = model.best_epoch_ or ran
        if self.pruned:
            self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        elif math.isfinite(value):
            self.study.tell(self.trial, value)
        else:
            self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
        if math.isfinite(value) and (math.isnan(self.best) or (value < self.best if self.lower else value > self.best)):
            self.best = value
            self.refit_estimate = seconds / max(ran, 1) * epochs * self.refit_scale
        state = "pruned" if self.pruned else ("complete" if math.isfinite(value) else "failed")
        self.bar.update(min(_clock() - self.start, self.bar.total) - self.bar.n)
        self.bar.set_postfix({"trials": len(self.seconds), f"best {self.metric}": f"{self.best:.4f}"})
        return {"trial": self.trial.number, "epochs": epochs, "state": state, "seconds": seconds}


def autotune(
    estimator_or_loss: MatrixFactorization | str,
    data: Interactions | Mapping,
    budget_s: float = 60,
    seed: int = 0,
    metric: str | None = None,
    k: int = 10,
    n_trials: int | None = None,
    max_epochs: int | None = None,
    verbose: bool = True,
) -> MatrixFactorization:
    """Tune hyperparameters with Optuna within a time budget and return the refitted best model.

    Needs optuna (``pip install 'torchmf[tune]'``). A validation split is
    carved from ``data`` only (a random 20% of the ratings for rating losses,
    20% of each user's interactions for ranking losses). Optuna's TPE sampler
    (seeded) proposes settings from the solver class's ``search_space``; each
    trial trains with validation after every epoch, early stopping (patience
    3) and median pruning against earlier trials. Trials stop being started
    when the time left would not fit one more (the median trial so far) plus
    the refit, and a running trial is stopped at the epoch where it would
    overrun. The best setting is then refitted on all of ``data`` for the
    epoch count its validation chose.

    Parameters
    ----------
    estimator_or_loss : MatrixFactorization or str
        Base hyperparameters (its values for the searched names are replaced),
        or a loss name (``"mse"``, ``"ials"``, ...) for that loss's defaults.
    data : Interactions or mapping
        Training data, n interactions.
    budget_s : float
        Wall-clock seconds for the search and the refit together.
    seed : int
        Seeds the split, the sampler and every trial's initialisation.
    metric : str, optional
        Key of :func:`torchmf.evaluate`'s result that trials are scored by;
        ``rmse`` for rating losses, ``ndcg@k`` for ranking losses by default.
        Pruning watches the per-epoch validation metric (RMSE or NDCG@10).
    k : int
        Cut-off of the ranking metrics.
    n_trials : int, optional
        Stop after this many trials even with time left. With it and a budget
        that is not reached, two runs with the same seed give the same trials
        table except for its ``seconds`` column; a run cut by its budget has
        a prefix of that table (its last trial possibly stopped earlier).
    max_epochs : int, optional
        Epoch cap of each trial; 4 times the loss's default epochs (at least
        20) by default.
    verbose : bool
        Show a progress bar over the budget.

    Returns
    -------
    MatrixFactorization
        Fitted on all of ``data``. ``tuning_`` is the trials table (a
        DataFrame, one row per trial in trial order: the searched parameters,
        the validation ``metric``, ``epochs`` (the epoch count validation
        chose), ``state`` (complete, pruned or failed) and ``seconds``);
        ``extras_["autotune"]`` records the best setting and is saved with
        the model.
    """
    start = _clock()  # the budget counts from the call: reading, splitting and importing optuna included
    try:
        import optuna
    except ImportError as exc:
        raise ImportError("autotune needs optuna: pip install 'torchmf[tune]'") from exc
    if isinstance(estimator_or_loss, str):
        base = MatrixFactorization(loss=estimator_or_loss, seed=seed)
    elif isinstance(estimator_or_loss, MatrixFactorization):
        base = estimator_or_loss
    else:
        raise TypeError(f"estimator_or_loss must be a MatrixFactorization or a loss name, got "
                        f"{type(estimator_or_loss).__name__}")
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0:
        raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"n_trials must be None or a positive integer, got {n_trials!r}")
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1):
        raise ValueError(f"max_epochs must be None or a positive integer, got {max_epochs!r}")
    data = as_interactions(data, "train")
    space = search_space(base)
    params = base.get_params()
    ranking = is_ranking_loss(params["loss"])
    metric = metric or default_metric(base, k)
    known = ["rmse", "mae", *(f"{m}@{k}" for m in (*RANKING_METRICS, "coverage"))]
    if metric not in known:
        raise ValueError(f"metric must be one of {known} (with k={k}), got {metric!r}")
    if max_epochs is None:
        default_epochs = get_solver(params["loss"], params["solver"]).defaults[params["loss"]]["epochs"]
        max_epochs = max(20, 4 * default_epochs)
    trial_base = _clone(base, epochs=max_epochs, seed=seed, verbose=False, early_stopping=PATIENCE)
    if "rank_by" in params and metric in ("rmse", "mae"):
        # trials scored on ratings need no interaction ranker; the refit keeps the estimator's choice
        trial_base = _clone(trial_base, rank_by="scores")

    split = user_split if ranking else random_split
    train, validation = split(data, VALIDATION_FRACTION, seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize" if _lower_is_better(metric) else "maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
    )
    bar = tqdm(total=float(budget_s), desc="torchmf autotune", unit="s", disable=not verbose, leave=False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")
    # pruning compares the per-epoch validation metric (NDCG@10 or RMSE), when it runs the metric's way
    watch = f"val_ndcg@{VAL_K}" if ranking else "val_rmse"
    watch = watch if ranking != _lower_is_better(metric) else None
    tuner = _Tuner(study, space, start, float(budget_s), n_trials, len(data) / max(len(train), 1), metric, watch, bar)
    try:
        with epoch_hook(tuner.on_epoch):
            table = _search(trial_base, train, validation, tuner, metric, k, PATIENCE, seed,
                            on_result=tuner.on_result, per_epoch=True)
        table = table.sort_values("trial", ignore_index=True)
        table = table[["trial", *space, metric, "epochs", "state", "seconds"]]
        done = table[table[metric].notna()]
        if done.empty:
            raise ValueError(f"autotune: every trial failed (diverged); the search space of {params['loss']!r} "
                             "needs narrower ranges")
        best = done.sort_values(metric, ascending=_lower_is_better(metric), kind="stable").iloc[0]
        chosen = {name: _plain(best[name]) for name in space}
        final = _clone(base, **chosen, epochs=int(best["epochs"]), early_stopping=None, seed=seed)
        final.fit(data)
    finally:
        bar.close()
    final.tuning_ = table
    final.extras_["autotune"] = {
        "budget_s": float(budget_s), "seconds": _clock() - tuner.start, "trials": len(table),
        "metric": metric, "validation": float(best[metric]), "params": chosen, "epochs": int(best["epochs"]),
    }
    log.info("autotune: %d trials, best %s=%.5f with %s, %d epochs; refitted on %d interactions",
             len(table), metric, best[metric], chosen, int(best["epochs"]), len(data))
    return final


def _plain(value: Any) -> Any:
    """numpy scalars from the table back to Python ints, floats and strings."""
    return value.item() if hasattr(value, "item") else value

