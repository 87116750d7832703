"""Model selection: cross-validation, grid search, and Optuna search.

Every candidate is a fresh estimator built from ``estimator.get_params()`` plus
the candidate's values, so the estimator passed in is never modified. Searches
score candidates on a validation split carved from the training data (never on
a test set) and fit with early stopping where the objective allows it.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pandas as pd

from torchmf.data.interactions import Interactions
from torchmf.data.split import kfold, user_split
from torchmf.errors import TrainingError
from torchmf.estimator.protocol import Recommender
from torchmf.evaluation.evaluate import evaluate
from torchmf.solvers import is_ranking_loss

__all__ = ["cross_validate", "default_metric", "grid_search", "optuna_search"]

log = logging.getLogger(__name__)


def _clone(estimator: Recommender, **overrides: Any) -> Recommender:
    return type(estimator)(**{**estimator.get_params(), **overrides})


def default_metric(estimator: Recommender, k: int = 10) -> str:
    """``"rmse"`` for rating losses, ``"ndcg@k"`` for ranking losses."""
    return f"ndcg@{k}" if is_ranking_loss(estimator.get_params()["loss"]) else "rmse"


def _lower_is_better(metric: str) -> bool:
    return metric in ("rmse", "mae")


def cross_validate(
    estimator: Recommender,
    data: Interactions | None = None,
    folds: int | Sequence[tuple[Interactions, Interactions]] = 5,
    k: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit and evaluate a copy of ``estimator`` on each fold.

    Parameters
    ----------
    estimator : MatrixFactorization
        Its hyperparameters are copied; it is not fitted.
    data : Interactions, optional
        Split into ``folds`` folds with :func:`torchmf.split.kfold` when
        ``folds`` is an int.
    folds : int or sequence of (train, test)
        Number of folds, or explicit splits (then ``data`` may be None).
    k : int
        Cut-off of the ranking metrics.
    seed : int
        Seed of the k-fold split.

    Returns
    -------
    dict
        ``"folds"``: DataFrame with one row of metrics per fold (plus
        ``fit_seconds``); ``"mean"`` and ``"std"``: Series over folds;
        ``"histories"``: each fold's training history.
    """
    if isinstance(folds, int):
        if data is None:
            raise ValueError("cross_validate needs data when folds is a number")
        if folds < 2:
            raise ValueError(f"folds must be >= 2, got {folds}")
        splits = kfold(data, k=folds, seed=seed)
    else:
        splits = list(folds)
        if not splits:
            raise ValueError("folds must not be empty")
    rows, histories = [], []
    for n, (train, test) in enumerate(splits, 1):
        model = _clone(estimator)
        start = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - start
        metrics = evaluate(model, test, k=k)
        rows.append({"fold": n, **metrics, "fit_seconds": seconds})
        histories.append(model.history_)
        log.info("fold %d: %s", n, metrics)
    table = pd.DataFrame(rows).set_index("fold")
    return {"folds": table, "mean": table.mean(), "std": table.std(ddof=0), "histories": histories}


def _search(
    estimator: Recommender,
    train: Interactions,
    validation: Interactions | None,
    candidates: Iterable[dict[str, Any]],
    metric: str | None,
    k: int,
    patience: int | None,
    seed: int,
    on_result: Callable[[float, Recommender], dict[str, Any] | None] | None = None,
    per_epoch: bool = False,
) -> pd.DataFrame:
    """Shared loop of the searches: each candidate is fit with early stopping and scored.

    Rating losses (and every loss when ``per_epoch``) are validated after each
    epoch. ``on_result(value, model)`` sees each candidate's score and may
    return extra columns for its row. A candidate whose training diverges
    scores NaN.
    """
    if validation is None:
        train, validation = user_split(train, test_fraction=0.2, seed=seed)
    metric = metric or default_metric(estimator, k)
    rows = []
    for overrides in candidates:
        params = dict(overrides)
        watch = per_epoch or not is_ranking_loss(estimator.get_params()["loss"])
        if patience is not None and watch and "early_stopping" not in params:
            params["early_stopping"] = patience
        model = _clone(estimator, **params)
        start = time.perf_counter()
        try:
            model.fit(train, validation=validation if watch else None)
            value = float(evaluate(model, validation, k=k)[metric])
        except TrainingError as exc:
            log.info("%s diverged: %s", overrides, exc)
            value = math.nan
        row = {**overrides, metric: value, "best_epoch": model.best_epoch_, "fit_seconds": time.perf_counter() - start}
        log.info("%s -> %s=%.5f", overrides, metric, value)
        if on_result is not None:
            row.update(on_result(value, model) or {})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(metric, ascending=_lower_is_better(metric), ignore_index=True)


def grid_search(
    estimator: Recommender,
    train: Interactions,
    grid: dict[str, Sequence[Any]],
    validation: Interactions | None = None,
    metric: str | None = None,
    k: int = 10,
    patience: int | None = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Try every combination in ``grid``; no extra dependency needed.

    Parameters
    ----------
    estimator : MatrixFactorization
        Base hyperparameters.
    train : Interactions
    grid : dict of str -> list
        Hyperparameter name to the values to try.
    validation : Interactions, optional
        Defaults to a per-user 20% split carved from ``train``.
    metric : str, optional
        Key of :func:`evaluate`'s result; ``rmse`` for rating losses and
        ``ndcg@k`` for ranking losses by default.
    k : int
    patience : int, optional
        Early-stopping patience for rating losses (validation RMSE).
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per combination, best first.
    """
    if not grid:
        raise ValueError("grid must name at least one hyperparameter")
    names = list(grid)
    valid = set(estimator.get_params())
    for name in names:
        if name not in valid:
            raise ValueError(f"grid names unknown hyperparameter {name!r}")
        if not isinstance(grid[name], (list, tuple)) or not grid[name]:
            raise ValueError(f"grid[{name!r}] must be a non-empty list")

    combos = (dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names)))
    return _search(estimator, train, validation, combos, metric, k, patience, seed)


class _OptunaFeed:
    """Asks Optuna for trials and reports their scores back (ask/tell interface)."""

    def __init__(self, study: Any, space: dict[str, Any], n_trials: int) -> None:
        self.study, self.space, self.n_trials = study, space, n_trials
        self.trial = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.n_trials):
            self.trial = self.study.ask()
            yield {name: _suggest(self.trial, name, spec) for name, spec in self.space.items()}

    def report(self, value: float, model: Recommender | None = None) -> None:
        self.study.tell(self.trial, value if math.isfinite(value) else None, skip_if_finished=True)


def _suggest(trial: Any, name: str, spec: Any) -> Any:
    """One value for ``name``: ``spec`` is a list of choices, ``(low, high)``, or typed.

    Typed specs (the solvers' ``search_space``): ``("int", low, high[, "log"])``,
    ``("float", low, high[, "log"])`` or ``("categorical", [choices])``.
    """
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    if spec and isinstance(spec[0], str):
        kind, *rest = spec
        if kind == "categorical":
            return trial.suggest_categorical(name, list(rest[0]))
        log_scale = len(rest) > 2 and rest[2] == "log"
        if kind == "int":
            return trial.suggest_int(name, int(rest[0]), int(rest[1]), log=log_scale)
        if kind == "float":
            return trial.suggest_float(name, float(rest[0]), float(rest[1]), log=log_scale)
        raise ValueError(f"search space entry {name!r}: unknown kind {kind!r} (int, float or categorical)")
    low, high = spec
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(name, low, high, log=high / max(low, 1) >= 8)
    return trial.suggest_float(name, float(low), float(high), log=low > 0 and high / low >= 10)


def optuna_search(
    estimator: Recommender,
    train: Interactions,
    space: dict[str, Any],
    n_trials: int = 20,
    validation: Interactions | None = None,
    metric: str | None = None,
    k: int = 10,
    patience: int | None = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Bayesian search with Optuna (``pip install 'torchmf[tune]'``).

    Parameters
    ----------
    space : dict
        Name to ``(low, high)`` (ints or floats; log scale when wide) or a
        list of choices.
    n_trials : int
    Others as in :func:`grid_search`.

    Returns
    -------
    pandas.DataFrame
        One row per trial, best first.
    """
    try:
        import optuna
    except ImportError as exc:
        raise ImportError("optuna_search needs optuna: pip install 'torchmf[tune]'") from exc
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    metric = metric or default_metric(estimator, k)
    direction = "minimize" if _lower_is_better(metric) else "maximize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    feed = _OptunaFeed(study, space, n_trials)
    return _search(estimator, train, validation, feed, metric, k, patience, seed, on_result=feed.report)
