"""The bookkeeping of one :func:`~torchmf.evaluation.autotune.autotune` run: trial feed, epoch hook, re-check.

:class:`Tuner` asks Optuna for each trial (a solver, when there are several,
then that solver's values, each solver's values their own dimensions of the
search), watches every epoch of the running trial (median pruning among the
complete trials of the same solver; the time budget), records each trial and,
after the search, re-scores the finalists on more validation splits. A trial may
be scored on several splits (``more_splits``): the first one's per-epoch scores
prune it; a complete trial is then fitted on the others and its score, and the
curve its epoch count is read from, are the means over all of them.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchmf.evaluation.selection import _lower_is_better, _suggest

__all__ = ["FINALISTS", "RECHECKS", "SAFETY", "TrialRecord", "Tuner", "settled_epoch"]

log = logging.getLogger(__name__)

# margin on the estimated time of the re-check and the refit (timings on a shared machine vary)
SAFETY = 1.25
# how many of the best trials are scored again, on how many more validation splits, before one is
# chosen, and the share of the budget that re-check may spend at most (fewer finalists when they cost more)
FINALISTS, RECHECKS, RECHECK_SHARE = 5, 2, 0.3
# median pruning per solver: from this many complete trials of the solver on, after this many epochs
PRUNE_STARTUP, PRUNE_WARMUP = 4, 2


def settled_epoch(curve: dict[int, float], lower: bool) -> int | None:
    """The epoch whose validation score, averaged with its neighbours', is best; None below 3 epochs.

    The single best epoch of a noisy per-epoch curve is a winner's-curse pick. On ML-100k an iALS trial
    (256 factors) validated at 0.1751, 0.2045, 0.2022, 0.2033, 0.2021 over five sweeps: refitted for the
    spike's 2 sweeps, far from converged, it tested at 0.447; for 3 to 16 sweeps at 0.4514-0.4531
    (benchmarks/RESULTS.md section 8.6). The centred mean of three epochs (the first and the last with
    their one neighbour) passes over a lone spike and keeps the optimum of a curve that rises and then
    falls (an overfitting SGD run, explicit ALS): there the neighbours of the best epoch are its runners-up.

    Parameters
    ----------
    curve : dict of int to float
        Epoch (1-based) to the validation score after it.
    lower : bool
        Whether lower scores are better (RMSE).

    Returns
    -------
    int or None
        The epoch; the earliest on a tie.
    """
    if len(curve) < 3:
        return None

    def smoothed(epoch: int) -> float:
        near = [curve[e] for e in (epoch - 1, epoch, epoch + 1) if e in curve]
        return sum(near) / len(near)

    return (min if lower else max)(sorted(curve), key=smoothed)


@dataclass
class TrialRecord:
    """One trial's record: its setting, scores and what a fit of it costs."""

    number: int
    params: dict[str, Any]  # "solver" and the searched values
    value: float = math.nan  # the metric's mean over the trial's validation splits
    splits: int = 1  # how many validation splits `value` is the mean of
    recheck: float = math.nan  # the mean metric on the re-check splits (finalists only)
    epochs: int = 0  # the epoch count a refit uses
    seconds: float = 0.0
    cost: float = 0.0  # estimated seconds of a fit of `epochs` epochs on the trial's rows
    state: str = ""
    curve: dict[int, float] = field(default_factory=dict)  # per-epoch validation on the first split, for pruning
    more_curves: list[dict[int, float]] = field(default_factory=list)  # the same on the trial's other splits


class Tuner:
    """The trial feed, the epoch hook (pruning, budget), the re-check and the bookkeeping of one run."""

    def __init__(self, study: Any, spaces: dict[str, dict[str, tuple]], fixed: dict[str, dict[str, Any]],
                 samplers: dict[str, int | None], start: float, budget_s: float, n_trials: int | None,
                 refit_scale: float, metric: str, watch: str | None, bar: Any, clock: Callable[[], float],
                 more_splits: Sequence[Callable[[dict[str, Any]], tuple[float, int]]] = (),
                 members: int = 1) -> None:
        self.clock = clock
        self.members = members  # how many of the best finalists the refit fits (and averages)
        # fits of a complete trial on its other validation splits: each returns the metric (NaN when the fit
        # diverged) and the epochs it ran
        self.more_splits = list(more_splits)
        self.other_split = False  # the running fit is of a complete trial on one of its other splits
        self.study, self.spaces, self.n_trials = study, spaces, n_trials
        self.fixed = fixed  # solver -> overrides of each of its trials (epoch cap, early stopping)
        self.samplers = samplers  # sampler solver -> its epoch cap (None: the whole chain)
        self.start = start
        self.deadline = self.start + budget_s
        self.recheck_budget = RECHECK_SHARE * budget_s
        self.refit_scale = refit_scale  # refit rows / trial rows
        self.metric, self.bar = metric, bar
        self.watch = watch  # the per-epoch validation column pruning reads (None: no pruning)
        self.watch_lower = watch == "val_rmse"
        self.trial: Any = None
        self.current: TrialRecord | None = None
        self.trial_start = self.fit_start = 0.0
        self.pruned = False
        self.cut = False  # the running trial was stopped by the time budget
        self.trials: list[TrialRecord] = []
        self.recheck_seconds = 0.0
        self.lower = _lower_is_better(metric)

    def _order(self, t: TrialRecord) -> float:
        return t.value if self.lower else -t.value

    def finalists(self) -> list[TrialRecord]:
        """The best scored trials so far, best first.

        Only trials at least as good as the median of the candidates count. Pruned trials count
        (scored at their best epoch), unless trials are scored on several
        validation splits: then only those scored on all of them, while there are any. A pruned
        trial's one score is noisier (the best of many such is a winner's-curse pick) and on the
        first carve alone, whose level differs from the others' (0.21 against 0.196 NDCG@10 on
        ML-100k for one seed): the finalists were all pruned trials, whichever setting was better.
        """
        done = [t for t in self.trials if math.isfinite(t.value)]
        pool = [t for t in done if t.splits == 1 + len(self.more_splits)] or done
        # and none below the median of those, the bar pruning sets: early in a search (or with a small
        # budget) "the five best" included trials no re-check could lift to a win, and their costs (a slow
        # 232-factor one) made the re-check's and the refit's reserve stop the search at 12 s of 30
        if pool:
            bar = statistics.median(self._order(t) for t in pool)
            pool = [t for t in pool if self._order(t) <= bar]
        return sorted(pool, key=self._order)[:FINALISTS]

    def _checkable(self, costs: list[float]) -> list[float]:
        """The leading finalists' costs the re-check can afford (none unless two fit: nothing to compare)."""
        out: list[float] = []
        for cost in costs:
            if sum(out) + RECHECKS * cost > self.recheck_budget:
                break
            out.append(RECHECKS * cost)
        return out if len(out) > 1 else []

    def reserve(self, running: float | None = None) -> float:
        """Seconds to keep for the re-check and the refit (``running``: the running trial's cost, as a finalist)."""
        costs = [t.cost for t in self.finalists()]
        if running is not None:
            costs = [running, *costs[:FINALISTS - 1]]
        if not costs:
            return 0.0
        checks = self._checkable(costs)
        # the refit is of re-checked finalists, or of the best one when fewer than two are re-checked:
        # a costly finalist the re-check cannot afford can never be refitted, so it reserves nothing
        return SAFETY * (sum(checks) + self._refit_seconds(costs[:max(len(checks), 1)]))

    def _refit_seconds(self, costs: list[float]) -> float:
        """Seconds of the refit when it may be of any of these finalists (the costliest ``members`` of them)."""
        return sum(sorted(costs, reverse=True)[:self.members]) * self.refit_scale

    def start_from(self, settings: dict[str, dict[str, Any]]) -> None:
        """Make each solver's ``settings`` (its resolved defaults) its first trial, in ``spaces`` order.

        Numbers are clipped into the space; a choice the space lacks is left to the sampler.
        """
        several = len(self.spaces) > 1
        for solver, space in self.spaces.items():
            prefix = f"{solver}." if several else ""
            first: dict[str, Any] = {"solver": solver} if several else {}
            for name, spec in space.items():
                value = settings[solver].get(name)
                if value is None or not spec or not isinstance(spec[0], str):
                    continue
                if spec[0] == "categorical":
                    if value in spec[1]:
                        first[prefix + name] = value
                else:
                    value = min(max(value, spec[1]), spec[2])
                    first[prefix + name] = int(value) if spec[0] == "int" else float(value)
            self.study.enqueue_trial(first)

    # -- the candidates -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        several = len(self.spaces) > 1
        while self.n_trials is None or len(self.trials) < self.n_trials:
            if self.trials:
                left = self.deadline - self.clock()
                if left < statistics.median(t.seconds for t in self.trials) + self.reserve():
                    log.info("autotune: %.1f s left, not enough for another trial, the re-check and the refit", left)
                    break
            self.trial = self.study.ask()
            solver = self.trial.suggest_categorical("solver", list(self.spaces)) if several else next(iter(self.spaces))
            prefix = f"{solver}." if several else ""  # each solver's values are its own dimensions of the search
            params = {"solver": solver}
            for name, spec in self.spaces[solver].items():
                params[name] = _suggest(self.trial, prefix + name, spec)
            self.current = TrialRecord(self.trial.number, params)
            self.pruned = self.cut = False
            self.trial_start = self.fit_start = self.clock()
            yield {**params, **self.fixed[solver]}

    # -- after every epoch of a trial ---------------------------------------------------------------------
    def on_epoch(self, row: dict[str, float]) -> bool:
        if not any(key.startswith("val_") for key in row) or self.current is None:
            return False  # a fit inside the trial that is not the validated one (e.g. an interaction ranker)
        epoch = int(row["epoch"])
        now = self.clock()
        per_epoch = (now - self.fit_start) / epoch
        solver = self.current.params["solver"]
        sampler = solver in self.samplers
        value = row.get(self.watch) if self.watch and not sampler else None
        if value is not None and math.isfinite(value) and self.other_split:
            self.current.more_curves[-1][epoch] = value  # another split of a complete trial: no pruning
        elif value is not None and math.isfinite(value):
            self.trial.report(value, epoch)
            self.current.curve[epoch] = value
            if self._trails(solver, epoch, value):
                self.pruned = True
                return True
        if sampler and self.samplers[solver] is not None and epoch >= self.samplers[solver]:
            return True  # the epoch cap of a chain
        # this trial, should it be a finalist, costs its own epochs again and on more rows
        if now + per_epoch + self.reserve(running=per_epoch * epoch) > self.deadline:
            log.info("autotune: trial %d stopped at epoch %d by the time budget", self.trial.number, epoch)
            self.cut = True
            return True
        return False

    def _trails(self, solver: str, epoch: int, value: float) -> bool:
        """Median pruning among the complete trials of the same solver, as Optuna's MedianPruner."""
        done = [t for t in self.trials if t.state == "complete" and t.params["solver"] == solver]
        there = [t.curve[epoch] for t in done if epoch in t.curve]
        if epoch <= PRUNE_WARMUP or len(done) < PRUNE_STARTUP or not there:
            return False
        median = statistics.median(there)
        return value > median if self.watch_lower else value < median

    # -- after every trial -----------------------------------------------------------------------------------
    def on_result(self, value: float, model: Any) -> dict[str, Any]:
        import optuna

        t = self.current
        ran = len(model.history_)
        values = [value]
        if self.more_splits and not self.pruned and not self.cut and math.isfinite(value):
            values, ran = self._more_splits(t, value, ran)
        t.seconds = self.clock() - self.trial_start
        # a sampler's refit runs the chain the trial ran; an iterative solver's the epochs validation chose,
        # read from the smoothed curve (over the trial's splits) when there is one: a lone spike is luck
        if t.params["solver"] in self.samplers:
            t.epochs = len(model.history_)
        else:
            t.epochs = settled_epoch(self._mean_curve(t), self.watch_lower) or model.best_epoch_ or len(model.history_)
        t.cost = t.seconds / max(ran, 1) * t.epochs
        t.value, t.splits = sum(values) / len(values), len(values)
        value = t.value
        if self.pruned:
            self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        elif math.isfinite(value):
            self.study.tell(self.trial, value)
        else:
            self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)
        t.state = "pruned" if self.pruned else ("complete" if math.isfinite(value) else "failed")
        self.trials.append(t)
        best = self.finalists()
        self.bar.update(min(self.clock() - self.start, self.bar.total) - self.bar.n)
        self.bar.set_postfix({"trials": len(self.trials),
                              f"best {self.metric}": f"{best[0].value:.4f}" if best else "-"})
        return {"trial": t.number, "epochs": t.epochs, "state": t.state, "seconds": t.seconds}

    def _more_splits(self, t: TrialRecord, value: float, ran: int) -> tuple[list[float], int]:
        """Fit a complete trial on the other validation splits; its scores and the epochs all its fits ran."""
        values = [value]
        self.other_split = True
        try:
            for fit in self.more_splits:
                t.more_curves.append({})
                self.fit_start = self.clock()
                score, epochs = fit(t.params)
                ran += epochs
                values.append(score)
                if not math.isfinite(score):  # diverged on another split: the setting is not safe to refit
                    return [math.nan], ran
            return values, ran
        finally:
            self.other_split = False

    @staticmethod
    def _mean_curve(t: TrialRecord) -> dict[int, float]:
        """The per-epoch validation averaged over the trial's splits, at the epochs every split reached."""
        curves = [t.curve, *t.more_curves]
        return {e: sum(c[e] for c in curves) / len(curves) for e in t.curve if all(e in c for c in curves)}

    # -- after the search ------------------------------------------------------------------------------------
    def choose(self, recheck: Callable[[TrialRecord], float]) -> list[TrialRecord]:
        """Re-check the finalists (best first, while the budget allows) and rank them, best first.

        Finalists are ranked by the mean of all their splits' scores (the search's and the
        re-check's); only the best of the search when fewer than two of them fit in the re-check's
        share of the budget or the time left. Empty when no trial completed.
        """
        finalists = self.finalists()
        checkable = finalists[:len(self._checkable([t.cost for t in finalists]))]
        # the refit is of these (see reserve)
        refit = SAFETY * self._refit_seconds([t.cost for t in checkable or finalists[:1]])
        checked = []
        for t in checkable:
            if self.clock() + SAFETY * RECHECKS * t.cost + refit > self.deadline:
                log.info("autotune: no time left to re-check trial %d", t.number)
                break
            began = self.clock()
            t.recheck = recheck(t)
            self.recheck_seconds += self.clock() - began
            if math.isfinite(t.recheck):
                checked.append(t)
        if len(checked) < 2:
            return finalists[:1]
        sign = 1.0 if self.lower else -1.0
        return sorted(checked, key=lambda t: sign * (t.splits * t.value + RECHECKS * t.recheck) / (t.splits + RECHECKS))
