"""Automatic tuning: Optuna over the solvers' search spaces within a time budget, then a refit.

``autotune`` carves a validation split out of the training data and lets
Optuna's TPE sampler propose a solver (a categorical of the search when the
estimator names none and several solvers of its loss declare a
``search_space``) and that solver's settings. Trials of iterative solvers
(ALS, SGD, iALS, ...) are validated after every epoch, stop early, and are
pruned when they trail the median of the complete trials of the same solver
at the same epoch. Trials of samplers (a solver class with ``sampler = True``:
Gibbs) run their whole chain: their per-epoch validation scores a single draw,
not the averaged prediction the fit ends with, so it neither stops nor prunes
them, and their epoch count is the chain length they ran. Trials stop being
started when the time left would not fit one more, the re-check and the
refit. A complete trial of a ranking loss is fitted on a second validation
carve too and scored by the mean of both (one carve's luck steers the search).
The re-check scores the few best trials again on two more validation splits
(the top scores of the search are often closer than their noise) and the trial
with the best mean of all its scores is refitted on all the training data. The
trial loop is :mod:`torchmf.evaluation.selection`'s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from torchmf.data.convert import as_interactions
from torchmf.data.interactions import Interactions
from torchmf.data.profile import value_profile
from torchmf.data.split import random_split, user_split
from torchmf.errors import TrainingError
from torchmf.estimator import MatrixFactorization
from torchmf.estimator.ensemble import average_models
from torchmf.estimator.params import Params, resolve
from torchmf.evaluation.evaluate import evaluate
from torchmf.evaluation.selection import _clone, _lower_is_better, _search, default_metric
from torchmf.evaluation.tuner import RECHECKS, SAFETY, TrialRecord, Tuner
from torchmf.metrics import RANKING_METRICS
from torchmf.solvers import get_solver, is_ranking_loss, solvers_for
from torchmf.training import epoch_hook
from torchmf.training.validation import VAL_K

__all__ = ["autotune", "search_spaces"]

log = logging.getLogger(__name__)

# share of the training data held out to score trials: for ranking losses 10% of each user's
# interactions, so trials train on 90% like the refit's 100% (with 20% held out, validation on ML-100k
# preferred smaller models that lost after the refit: benchmarks/RESULTS.md section 8); 20% of the ratings
VALIDATION_FRACTION = {"ranking": 0.1, "ratings": 0.2}
# validation splits each complete trial is scored on (the first one prunes). For ranking losses two: on
# ML-100k the per-user 10% carve is the noisiest part of a trial's score (the paired gap between two iALS
# settings varies by 0.002-0.003 from carve to carve, as large as their gap on the test split), and one
# carve's luck steered the search into a region that lost 0.005-0.01 NDCG@10 after the refit
# (benchmarks/RESULTS.md section 8.7). The random 20% of ratings is a larger sample: one split.
SPLITS = {"ranking": 2, "ratings": 1}
# how many of the best re-checked finalists the refit fits and averages (one MF model of their factors
# side by side, estimator.ensemble) unless the caller says: for ranking losses three. The finalists'
# validation scores lie within their noise of each other while their test scores differ by up to 0.009
# NDCG@10 (ML-100k); their mean scores above the single best and never far below the best of them
# (benchmarks/RESULTS.md section 8.7). Rating losses refit the one best (their 20% split separates them).
MEMBERS = {"ranking": 3, "ratings": 1}
# early-stopping patience of each trial, in epochs
PATIENCE = 3
# the clock the budget is measured with (tests replace it with a simulated one)
_clock = time.perf_counter


def search_spaces(
    estimator: MatrixFactorization, params: Sequence[str] | None = None,
) -> dict[str, dict[str, tuple]]:
    """Solver name to ``search_space`` of every solver ``autotune`` searches for ``estimator``.

    The estimator's ``solver`` alone when it names one; otherwise every solver
    registered for its loss that declares a ``search_space`` (default first).
    With ``params``, each space keeps only those names, and a solver none of
    whose names are listed is left out.

    Raises
    ------
    ValueError
        For an unknown loss or solver, when none of those solvers declares a
        search space, or when ``params`` names a value none of them searches.
    """
    p = estimator.get_params()
    named = get_solver(p["loss"], p["solver"])  # checks the loss and the pair
    names = (named.name,) if p["solver"] is not None else solvers_for(p["loss"])
    spaces = {name: dict(space) for name in names
              if (space := getattr(get_solver(p["loss"], name), "search_space", None))}
    if not spaces:
        if p["solver"] is not None:
            raise ValueError(f"solver {named.name!r} (loss={p['loss']!r}) declares no search_space to tune")
        raise ValueError(f"no solver of loss={p['loss']!r} ({', '.join(names)}) declares a search_space to tune")
    if params is None:
        return spaces
    if isinstance(params, str) or not all(isinstance(name, str) for name in params) or not params:
        raise ValueError(f"params must be a non-empty list of hyperparameter names, got {params!r}")
    searched = {name for space in spaces.values() for name in space}
    unknown = [name for name in params if name not in searched]
    if unknown:
        raise ValueError(f"params: {', '.join(map(repr, unknown))} not searched for loss={p['loss']!r} "
                         f"(the search space has {', '.join(sorted(searched))})")
    return {solver: kept for solver, space in spaces.items()
            if (kept := {name: spec for name, spec in space.items() if name in params})}


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
    params: Sequence[str] | None = None,
    ensemble: int | None = None,
) -> MatrixFactorization:
    """Tune the solver and its hyperparameters with Optuna within a time budget; return the refitted best model.

    Needs optuna (``pip install 'torchmf[tune]'``). A validation split is
    carved from ``data`` only (a random 20% of the ratings for rating losses,
    10% of each user's interactions for ranking losses). For ranking losses a
    trial that is not pruned is fitted on a second such carve (its own seed
    for the split and the initialisation) and scored by the mean of the two;
    the first carve's per-epoch scores prune.

    What is searched: an estimator that names its ``solver`` tunes that
    solver only; a loss name (or an estimator with ``solver=None``) searches
    every solver registered for the loss that declares a ``search_space``
    (``"mse"``: ALS, SGD and Gibbs), the solver being a categorical of the
    search and each solver's values their own dimensions. Each solver's first
    trial is its defaults (the estimator's values where it sets them); then
    Optuna's TPE sampler (seeded) proposes. Names a solver declares moot for
    the training values are not searched (iALS's ``confidence`` on binary
    data: there the transform is only another ``alpha``) unless ``params``
    names them. Trials of iterative solvers are
    validated after every epoch, stop early (patience 3), are pruned when they
    trail the median of the complete trials of the same solver at the same
    epoch, and keep the epoch count validation chose: the best of the
    per-epoch scores (the mean over the trial's carves) each averaged with
    its neighbours' (a lone spike on a plateau is luck; refitted for a
    2-sweep spike, an iALS setting lost 0.004 NDCG@10 on ML-100k). Trials of samplers
    (Gibbs) are neither stopped early nor pruned (their per-epoch validation
    scores one draw, not the averaged prediction they end with) and keep the
    chain length they ran.

    Choice: the 5 best trials (complete, or pruned and scored at their best
    epoch; for ranking losses only trials scored on both carves) are scored
    again on two more validation splits (other seeds for the split and for
    the initialisation; at most 30% of the budget, fewer finalists when they
    cost more) and the one with the best mean of all its scores wins (top
    scores of the search are often closer than their noise); with fewer than
    two re-checked, the best of the search. It is refitted on all of
    ``data`` for its epoch count (for ranking losses with the next two,
    averaged: see ``ensemble``). Budget: no trial starts when the time left
    would not fit one more (the median so far), the re-check and the refit,
    and a running trial stops at the epoch where it would overrun.

    Parameters
    ----------
    estimator_or_loss : MatrixFactorization or str
        Base hyperparameters (its values for the searched names are replaced),
        or a loss name (``"mse"``, ``"ials"``, ...) for that loss's defaults.
    data : Interactions or mapping
        Training data, n interactions.
    budget_s : float
        Wall-clock seconds for the search, the re-check and the refit together.
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
        Epoch cap of each trial; 4 times the solver's default epochs (at least
        20) by default, a sampler's whole chain.
    verbose : bool
        Show a progress bar over the budget.
    params : list of str, optional
        Search only these names of the solvers' search spaces (e.g.
        ``["confidence", "alpha"]`` for iALS's confidence setting); every
        other value stays the estimator's (its defaults where it sets none).
        The epoch count is still chosen by validation. A solver with none of
        these names in its space is not searched.
    ensemble : int, optional
        Refit this many of the best re-checked finalists (of the winner's
        solver) and return their average: one MF model whose factors are
        theirs side by side, each scaled by ``1/sqrt(m)``, so its scores are
        the mean of theirs (:func:`torchmf.estimator.ensemble.average_models`).
        3 for ranking losses (validation cannot tell their top settings apart;
        averaging them is steadier than picking one), 1 for rating losses and
        whenever ``params`` restricts the search (only those values of the
        estimator are tuned; the rest of it, its factors included, stays). Fewer
        when fewer were re-checked or the budget runs out; 1 turns it off.

    Returns
    -------
    MatrixFactorization
        Fitted on all of ``data``. ``tuning_`` is the trials table (a
        DataFrame, one row per trial in trial order: ``solver``, the searched
        parameters (NaN where another solver's), the validation ``metric``
        (the mean over the trial's carves),
        ``<metric>_recheck`` (the mean over the re-check splits, finalists only),
        ``epochs`` (what the refit of that trial would run), ``state``
        (complete, pruned or failed) and ``seconds``);
        ``extras_["autotune"]`` records the chosen setting (with its solver)
        and the ``members`` refitted (each one's trial, setting, epochs and
        factors) and is saved with the model. With several members the model
        has their summed factors and ``get_params()`` is the best one's
        otherwise: fitting those params again trains one model, not the average.
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
    if ensemble is not None and (isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1):
        raise ValueError(f"ensemble must be None or a positive integer, got {ensemble!r}")
    data = as_interactions(data, "train")
    spaces = search_spaces(base, params)
    hp = base.get_params()
    ranking = is_ranking_loss(hp["loss"])
    if (ensemble or 1) > 1 and (hp["rank_by"] or ("scores" if ranking else "interactions")) == "interactions":
        raise ValueError(f"ensemble={ensemble} averages dot-product models; these rank by a second, interaction "
                         "model (rank_by='interactions', the default for rating losses): pass rank_by='scores'")
    metric = metric or default_metric(base, k)
    known = ["rmse", "mae", *(f"{m}@{k}" for m in (*RANKING_METRICS, "coverage"))]
    if metric not in known:
        raise ValueError(f"metric must be one of {known} (with k={k}), got {metric!r}")
    data_profile = value_profile(data.values)
    for name in spaces:  # leave out what cannot change the model on these values (unless asked for)
        moot = getattr(get_solver(hp["loss"], name), "moot_for", lambda _: ())(data_profile)
        drop = [key for key in moot if key in spaces[name] and (params is None or key not in params)]
        if drop and len(drop) < len(spaces[name]):
            log.info("autotune: not searching %s for %s (no effect on %s values)", ", ".join(drop), name,
                     data_profile.kind)
            spaces[name] = {key: spec for key, spec in spaces[name].items() if key not in drop}
    fixed: dict[str, dict[str, Any]] = {}
    samplers: dict[str, int | None] = {}
    for name in spaces:
        cls = get_solver(hp["loss"], name)
        if getattr(cls, "sampler", False):  # the whole chain, no early stopping; a max_epochs cap cuts it
            fixed[name], samplers[name] = {"epochs": None, "early_stopping": None}, max_epochs
        else:
            fixed[name] = {"epochs": max_epochs or max(20, 4 * int(cls.defaults[hp["loss"]]["epochs"]))}
    trial_base = _clone(base, seed=seed, verbose=False, early_stopping=PATIENCE)
    if "rank_by" in hp and metric in ("rmse", "mae"):
        # trials scored on ratings need no interaction ranker; the refit keeps the estimator's choice
        trial_base = _clone(trial_base, rank_by="scores")

    split = user_split if ranking else random_split
    kind = "ranking" if ranking else "ratings"
    fraction = VALIDATION_FRACTION[kind]
    train, validation = split(data, fraction, seed=seed)
    # each further split has its own carve and initialisation seed (drawn from the run's seed)
    further = [(seed + 1000 * n, *split(data, fraction, seed=np.random.default_rng([seed, n])))
               for n in range(1, SPLITS[kind])]

    def fit_on(other_seed: int, part: Interactions, held: Interactions) -> Callable[[dict[str, Any]], tuple]:
        def fit(params: dict[str, Any]) -> tuple[float, int]:
            model = _clone(trial_base, **{"early_stopping": PATIENCE, **params, **fixed[params["solver"]]},
                           seed=other_seed)
            try:
                model.fit(part, validation=held)
            except TrainingError as exc:
                log.info("autotune: %s diverged on another validation split: %s", params, exc)
                return math.nan, len(model.history_)
            return float(evaluate(model, held, k=k)[metric]), len(model.history_)
        return fit
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if _lower_is_better(metric) else "maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    bar = tqdm(total=float(budget_s), desc="torchmf autotune", unit="s", disable=not verbose, leave=False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")
    # pruning compares the per-epoch validation metric (NDCG@10 or RMSE), when it runs the metric's way
    watch = f"val_ndcg@{VAL_K}" if ranking else "val_rmse"
    watch = watch if ranking != _lower_is_better(metric) else None
    tuner = Tuner(study, spaces, fixed, samplers, start, float(budget_s), n_trials,
                   len(data) / max(len(train), 1), metric, watch, bar, _clock,
                   more_splits=[fit_on(*other) for other in further],
                   # a search of a few named values keeps the estimator's shape: one refit unless asked
                   members=ensemble or (MEMBERS[kind] if params is None else 1))
    profile = value_profile(train.values)  # what the fit of each solver's defaults would see
    tuner.start_from({name: resolve(Params(**{**hp, "solver": name}), profile) for name in spaces})
    try:
        with epoch_hook(tuner.on_epoch):
            _search(trial_base, train, validation, tuner, metric, k, PATIENCE, seed,
                    on_result=tuner.on_result, per_epoch=True)
        # each re-check split with its own initialisation seed too: a trial's first-split score
        # includes the luck of its initialisation, which the re-check must not inherit
        others = [(seed + n, *split(data, fraction, seed=seed + n)) for n in range(1, RECHECKS + 1)]

        def recheck(t: TrialRecord) -> float:
            scores = []
            for other_seed, part, held in others:
                model = _clone(trial_base, **t.params, epochs=t.epochs, early_stopping=None, seed=other_seed)
                try:
                    model.fit(part)
                except TrainingError as exc:
                    log.info("autotune: re-check of trial %d diverged: %s", t.number, exc)
                    return math.nan
                scores.append(float(evaluate(model, held, k=k)[metric]))
            return sum(scores) / len(scores)

        ranked = tuner.choose(recheck)
        if not ranked:
            raise ValueError(f"autotune: every trial failed (diverged); the search space of {hp['loss']!r} "
                             "needs narrower ranges")
        best = ranked[0]
        alike = [t for t in ranked if t.params["solver"] == best.params["solver"]]
        if tuner.members > 1 and best.params["solver"] in samplers:
            log.warning("autotune: ensemble=%d, but the winner is a %s chain, whose factors are its draws: "
                        "refitting it alone", tuner.members, best.params["solver"])
            alike = alike[:1]
        members = _refit(base, data, alike, tuner, seed)
        final = members[0][1] if len(members) == 1 else average_models([m for _, m in members])
    finally:
        bar.close()
    names = list(dict.fromkeys(name for space in spaces.values() for name in space))
    table = pd.DataFrame(
        [{"trial": t.number, **t.params, metric: t.value, f"{metric}_recheck": t.recheck, "epochs": t.epochs,
          "state": t.state, "seconds": t.seconds} for t in tuner.trials],
        columns=["trial", "solver", *names, metric, f"{metric}_recheck", "epochs", "state", "seconds"],
    )
    final.tuning_ = table
    final.extras_["autotune"] = {
        "budget_s": float(budget_s), "seconds": _clock() - tuner.start, "trials": len(table),
        "metric": metric, "validation": best.value, "recheck": None if math.isnan(best.recheck) else best.recheck,
        "recheck_seconds": tuner.recheck_seconds, "params": best.params, "epochs": best.epochs,
        "members": [{"trial": t.number, "params": t.params, "epochs": t.epochs,
                     "factors": int(m.effective_params["factors"])} for t, m in members],
    }
    log.info("autotune: %d trials, best %s=%.5f (re-check %.5f) with %s, %d epochs; refitted on %d interactions"
             "%s", len(table), metric, best.value, best.recheck, best.params, best.epochs, len(data),
             f", averaged with the next {len(members) - 1} finalists" if len(members) > 1 else "")
    return final


def _refit(base: MatrixFactorization, data: Interactions, ranked: list[TrialRecord], tuner: Tuner,
           seed: int) -> list[tuple[TrialRecord, MatrixFactorization]]:
    """Fit the best ``tuner.members`` of ``ranked`` on all of ``data``, while the budget allows (the best always)."""
    fitted: list[tuple[TrialRecord, MatrixFactorization]] = []
    for t in ranked[:tuner.members]:
        if fitted and _clock() + SAFETY * t.cost * tuner.refit_scale > tuner.deadline:
            log.info("autotune: no time left to refit finalist %d; averaging %d", t.number, len(fitted))
            break
        model = _clone(base, **t.params, epochs=t.epochs, early_stopping=None, seed=seed)
        fitted.append((t, model.fit(data)))
    return fitted
