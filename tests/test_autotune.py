"""torchmf.autotune: trials table, reproducibility, the time budget (on a simulated clock), refit, CLI --auto."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import torchmf
from torchmf.evaluation import tuner as tuner_module
from torchmf.evaluation.tuner import settled_epoch
from torchmf.solvers import get_solver
from torchmf.training import monitor as monitor_module

# the module (torchmf.evaluation.autotune the attribute is the function)
autotune_module = importlib.import_module("torchmf.evaluation.autotune")


@pytest.fixture(scope="module")
def ratings() -> torchmf.Interactions:
    return torchmf.datasets.synthetic(n_users=60, n_items=40, n_interactions=1500, rank=3, seed=0)[0]


@pytest.fixture(scope="module")
def plays() -> torchmf.Interactions:
    return torchmf.datasets.synthetic(n_users=60, n_items=40, n_interactions=1200, rank=3, implicit=True, seed=1)[0]


def _tune(data: torchmf.Interactions, loss: str | torchmf.MatrixFactorization = "mse",
          **kw) -> torchmf.MatrixFactorization:
    kw = {"budget_s": 600, "n_trials": 5, "max_epochs": 6, "verbose": False, **kw}
    return torchmf.autotune(loss, data, **kw)


def test_trials_table_and_refit(ratings: torchmf.Interactions) -> None:
    model = _tune(ratings, torchmf.MatrixFactorization(solver="als"))
    table = model.tuning_
    space = get_solver("mse", "als").search_space
    assert list(table.columns) == ["trial", "solver", *space, "rmse", "rmse_recheck", "epochs", "state", "seconds"]
    assert list(table["trial"]) == list(range(5))
    assert set(table["solver"]) == {"als"}  # an estimator that names its solver tunes only that one
    assert set(table["state"]) <= {"complete", "pruned", "failed"}
    assert (table["epochs"] >= 1).all() and (table["epochs"] <= 6).all()
    # the refit is the chosen finalist's setting, for its epoch count, on all the data
    info = model.extras_["autotune"]
    chosen = table[table["rmse_recheck"].notna()]
    best = chosen.loc[((chosen["rmse"] + 2 * chosen["rmse_recheck"]) / 3).idxmin()]  # the mean of 3 splits
    assert info["params"] == {"solver": "als", **{name: best[name].item() for name in space}}
    assert info["validation"] == pytest.approx(best["rmse"]) and info["recheck"] == pytest.approx(best["rmse_recheck"])
    hp = model.effective_params
    assert hp["factors"] == best["factors"] and hp["reg"] == pytest.approx(best["reg"])
    assert len(model.history_) == best["epochs"] == hp["epochs"]
    assert len(model.user_map) == ratings.n_users and len(model.item_map) == ratings.n_items
    for name, (kind, *bounds) in space.items():
        if kind in ("int", "float"):
            assert table[name].between(bounds[0], bounds[1]).all(), name


def test_finalists_are_rechecked_on_more_splits(ratings: torchmf.Interactions) -> None:
    table = _tune(ratings, torchmf.MatrixFactorization(solver="als"), n_trials=7).tuning_
    rechecked = table[table["rmse_recheck"].notna()]
    # exactly the five best scored trials of the first split (pruned ones included), of those no worse than
    # their median, were scored again
    scored = table[table["rmse"].notna()]
    top = scored[scored["rmse"] <= scored["rmse"].median()].nsmallest(5, "rmse")
    assert sorted(rechecked["trial"]) == sorted(top["trial"])
    assert (rechecked["rmse_recheck"] != rechecked["rmse"]).all()


def test_recheck_fits_use_other_init_seeds(ratings: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = []

    def fake_evaluate(model, test, train=None, k=10):  # records the re-check fits' seeds
        seeds.append(model.get_params()["seed"])
        return {"rmse": 1.0}

    monkeypatch.setattr(autotune_module, "evaluate", fake_evaluate)
    _tune(ratings, torchmf.MatrixFactorization(solver="als"), n_trials=4, seed=7)
    assert seeds and set(seeds) == {8, 9}  # one per re-check split, never the trials' seed 7


def test_a_loss_name_searches_its_solvers(ratings: torchmf.Interactions) -> None:
    """For a loss name the solver is part of the search: every solver of "mse" with a search_space."""
    model = _tune(ratings, n_trials=12, max_epochs=4)
    table = model.tuning_
    assert set(table["solver"]) == {"als", "sgd", "gibbs"}  # the seeded TPE start is random over the three
    for solver in ("als", "sgd", "gibbs"):
        rows = table[table["solver"] == solver]
        own = set(get_solver("mse", solver).search_space)
        # each solver's rows fill its own parameters only
        for name in {"factors", "lr", "reg_exponent", "samples", "implicit_features"}:
            assert rows[name].notna().all() == (name in own), (solver, name)
    assert model.effective_params["solver"] == model.extras_["autotune"]["params"]["solver"]


def test_gibbs_trials_run_their_chain(ratings: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sampler's trials are neither early-stopped nor pruned; the refit runs the chosen trial's chain."""
    short = {"factors": ("int", 2, 4), "samples": ("int", 3, 8), "burn_in": ("int", 2, 6),
             "implicit_features": ("categorical", (False, True))}  # short chains keep the test quick
    monkeypatch.setattr(get_solver("mse", "gibbs"), "search_space", short)
    model = torchmf.autotune(torchmf.MatrixFactorization(solver="gibbs"), ratings, budget_s=600, n_trials=7,
                             verbose=False, seed=1)
    table = model.tuning_
    assert (table["state"] == "complete").all()  # 7 trials: median pruning would be live from the 5th on
    chains = table["burn_in"] + table["samples"] * 2  # thin 2 (the solver's default): the whole chain ran
    assert (table["epochs"] == chains).all()
    info = model.extras_["autotune"]
    assert info["params"]["solver"] == "gibbs"
    assert len(model.history_) == info["epochs"] == info["params"]["burn_in"] + info["params"]["samples"] * 2
    assert model.effective_params["samples"] == info["params"]["samples"]


def test_each_solver_starts_from_its_defaults(ratings: torchmf.Interactions) -> None:
    table = _tune(ratings, n_trials=3, max_epochs=2).tuning_
    assert list(table["solver"]) == ["als", "sgd", "gibbs"]  # the default solver first
    for row in table.itertuples():
        defaults = torchmf.MatrixFactorization(solver=row.solver).effective_params
        for name, (kind, *bounds) in get_solver("mse", row.solver).search_space.items():
            want = defaults[name] if kind == "categorical" else min(max(defaults[name], bounds[0]), bounds[1])
            assert getattr(row, name) == pytest.approx(want), (row.solver, name)


def test_max_epochs_caps_a_chain(ratings: torchmf.Interactions) -> None:
    table = _tune(ratings, torchmf.MatrixFactorization(solver="gibbs"), n_trials=2, max_epochs=5).tuning_
    assert (table["epochs"] == 5).all()


def test_same_seed_same_trials(ratings: torchmf.Interactions) -> None:
    a, b = _tune(ratings, seed=3).tuning_, _tune(ratings, seed=3).tuning_
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    c = _tune(ratings, seed=4).tuning_
    assert not c["reg"].equals(a["reg"])


def test_implicit_uses_ranking_metric(plays: torchmf.Interactions) -> None:
    model = _tune(plays, "ials", n_trials=3, max_epochs=4)
    assert model.is_ranking
    assert "ndcg@10" in model.tuning_.columns and "alpha" in model.tuning_.columns
    # every value is 1: the confidence transform is only another alpha there, so it is not searched
    assert "confidence" not in model.tuning_.columns
    assert model.tuning_["ndcg@10"].between(0, 1).all()
    assert model.extras_["autotune"]["metric"] == "ndcg@10"


def test_params_restrict_the_search(plays: torchmf.Interactions) -> None:
    model = _tune(plays, "ials", n_trials=4, max_epochs=3, params=["confidence", "alpha"])
    table = model.tuning_
    assert {"confidence", "alpha"} <= set(table.columns)
    assert not {"factors", "reg", "unobserved_weight"} & set(table.columns)
    assert table["alpha"].nunique() > 1  # searched (the first trial is the default, then TPE)
    assert set(model.extras_["autotune"]["params"]) == {"solver", "confidence", "alpha"}
    default = torchmf.MatrixFactorization(loss="ials").fit(plays).effective_params
    for name in ("factors", "reg", "unobserved_weight"):  # not searched: the defaults
        assert model.effective_params[name] == default[name]


def test_counts_search_the_confidence_transform(plays: torchmf.Interactions) -> None:
    counts = torchmf.Interactions.from_arrays(plays.user_map.raw(plays.users), plays.item_map.raw(plays.items),
                                              np.random.default_rng(0).zipf(2.0, len(plays)).astype(float))
    model = _tune(counts, "ials", n_trials=2, max_epochs=2)
    assert "confidence" in model.tuning_.columns


def test_params_leave_out_solvers_without_them(ratings: torchmf.Interactions) -> None:
    spaces = autotune_module.search_spaces(torchmf.MatrixFactorization(), ["lr", "reg"])
    assert set(spaces) == {"als", "sgd"} and spaces["als"] == {"reg": get_solver("mse", "als").search_space["reg"]}
    assert set(spaces["sgd"]) == {"lr", "reg"}
    with pytest.raises(ValueError, match="params: 'alpha' not searched"):
        torchmf.autotune("mse", ratings, params=["alpha"])
    for bad in ("reg", [], [1]):
        with pytest.raises(ValueError, match="params must be"):
            torchmf.autotune("mse", ratings, params=bad)  # type: ignore[arg-type]


def _ratings_only() -> torchmf.MatrixFactorization:
    """An ALS estimator whose fits train one model (no interaction ranker where the estimator has one)."""
    extra = {"rank_by": "scores"} if "rank_by" in torchmf.MatrixFactorization().get_params() else {}
    return torchmf.MatrixFactorization(solver="als", **extra)


def test_budget_on_a_simulated_clock(ratings: torchmf.Interactions, simulated_clock: dict[str, float]) -> None:
    """Each epoch of any fit (trials and refit) costs one simulated second; the total must stay in budget."""
    clock = simulated_clock
    model = torchmf.autotune(_ratings_only(), ratings, budget_s=120, max_epochs=8, verbose=False)
    table = model.tuning_
    # the search stopped on its own (no n_trials), used most of the budget, and the refit still fit in it
    assert len(table) >= 3
    assert clock["t"] <= 120 * 1.1
    info = model.extras_["autotune"]
    assert table["seconds"].sum() + info["recheck_seconds"] + len(model.history_) == clock["t"]
    assert info["recheck_seconds"] > 0  # the finalists were re-checked within the budget too
    assert clock["t"] >= 120 * 0.5


@pytest.fixture
def simulated_clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Each epoch of any fit costs one simulated second on autotune's clock."""
    clock = {"t": 0.0}
    original = monitor_module.Monitor.end_epoch

    def end_epoch(self, epoch: int, train_loss: float) -> bool:
        clock["t"] += 1.0
        return original(self, epoch, train_loss)

    monkeypatch.setattr(monitor_module.Monitor, "end_epoch", end_epoch)
    monkeypatch.setattr(autotune_module, "_clock", lambda: clock["t"])
    return clock


def test_budget_with_every_solver_on_a_simulated_clock(ratings: torchmf.Interactions,
                                                       simulated_clock: dict[str, float]) -> None:
    model = torchmf.autotune("mse", ratings, budget_s=120, max_epochs=12, verbose=False)
    assert list(model.tuning_["solver"][:3]) == ["als", "sgd", "gibbs"]
    assert 120 * 0.5 <= simulated_clock["t"] <= 120 * 1.1


def test_budget_cuts_a_gibbs_chain(ratings: torchmf.Interactions, simulated_clock: dict[str, float]) -> None:
    """The default chain (100 + 2 * 200 sweeps) does not fit 100 s with its refit: the trial is cut short."""
    model = torchmf.autotune(torchmf.MatrixFactorization(solver="gibbs"), ratings, budget_s=100, verbose=False)
    first = model.tuning_.iloc[0]
    assert (first["burn_in"], first["samples"]) == (100, 200) and first["epochs"] < 500
    assert len(model.history_) == model.extras_["autotune"]["epochs"]
    assert simulated_clock["t"] <= 100 * 1.1


def test_budget_stops_a_long_first_trial(ratings: torchmf.Interactions, simulated_clock: dict[str, float]) -> None:
    clock = simulated_clock
    # 20 epochs a trial would not fit a 10-second budget with its refit: the first trial is cut short
    model = torchmf.autotune(_ratings_only(), ratings, budget_s=10, max_epochs=20, verbose=False)
    assert len(model.tuning_) == 1
    assert clock["t"] <= 10 * 1.1


def test_diverging_trials_are_failed_not_fatal(ratings: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    # SGD with a learning rate far too high diverges; the trial is recorded as failed
    monkeypatch.setattr(get_solver("mse", "sgd"), "search_space", {"lr": ("float", 50.0, 100.0)})
    base = torchmf.MatrixFactorization(solver="sgd")
    with pytest.raises(ValueError, match="every trial failed"):
        torchmf.autotune(base, ratings, budget_s=600, n_trials=2, max_epochs=3, verbose=False)


def test_bad_arguments(ratings: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="budget_s"):
        torchmf.autotune("mse", ratings, budget_s=0)
    with pytest.raises(ValueError, match="n_trials"):
        torchmf.autotune("mse", ratings, n_trials=0)
    with pytest.raises(TypeError, match="estimator_or_loss"):
        torchmf.autotune(42, ratings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss"):
        torchmf.autotune("nope", ratings)
    with pytest.raises(ValueError, match="metric"):
        torchmf.autotune("mse", ratings, metric="ndcg@5")  # k is 10
    monkeypatch.delattr(get_solver("mse", "als"), "search_space")
    with pytest.raises(ValueError, match=r"'als'.*search_space"):
        torchmf.autotune(torchmf.MatrixFactorization(solver="als"), ratings)
    for solver in ("sgd", "gibbs"):
        monkeypatch.delattr(get_solver("mse", solver), "search_space")
    with pytest.raises(ValueError, match="no solver of loss='mse'"):
        torchmf.autotune("mse", ratings)


def test_estimator_values_outside_the_space_are_kept(ratings: torchmf.Interactions) -> None:
    base = torchmf.MatrixFactorization(init_std=0.05, cg_steps=0)
    model = torchmf.autotune(base, ratings, budget_s=600, n_trials=2, max_epochs=3, verbose=False)
    assert model.effective_params["init_std"] == 0.05 and model.effective_params["cg_steps"] == 0
    assert base.get_params()["epochs"] is None  # the estimator passed in is not modified


def test_every_solver_declares_a_valid_space() -> None:
    est = torchmf.MatrixFactorization()
    names = set(est.get_params())
    for loss, solver in (("mse", "als"), ("mse", "sgd"), ("mse", "gibbs"), ("ials", None), ("bpr", None)):
        space = get_solver(loss, solver).search_space
        assert set(space) <= names, loss
        for spec in space.values():
            assert spec[0] in ("int", "float", "categorical")
            if spec[0] != "categorical":
                assert spec[1] < spec[2] and (len(spec) == 3 or spec[3] == "log")
                assert len(spec) == 3 or spec[1] > 0


# ---------------------------------------------------------------------- CLI
def _write(path: Path, data: torchmf.Interactions) -> Path:
    users, items = data.user_map.raw(data.users), data.item_map.raw(data.items)
    pd.DataFrame({"user": users, "item": items, "rating": np.round(data.values, 2)}).to_csv(path, index=False)
    return path


def test_cli_train_auto(tmp_path: Path, ratings: torchmf.Interactions) -> None:
    from test_cli import torchmf as run_cli  # tests/ is on sys.path under pytest

    data = _write(tmp_path / "r.csv", ratings)
    res = run_cli("train", data, "-o", tmp_path / "m", "--auto", "2", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "trials" in res.stdout and "best:" in res.stdout
    model = torchmf.load(tmp_path / "m")
    assert model.extras_["autotune"]["budget_s"] == 2.0
    assert math.isfinite(model.extras_["autotune"]["validation"])


def test_cli_train_auto_ensemble(tmp_path: Path, plays: torchmf.Interactions) -> None:
    from test_cli import torchmf as run_cli  # tests/ is on sys.path under pytest

    data = _write(tmp_path / "p.csv", plays)
    res = run_cli("train", data, "-o", tmp_path / "m", "--loss", "ials", "--auto", "4", "--auto-ensemble", "2",
                  "--no-progress")
    assert res.returncode == 0, res.stderr
    members = torchmf.load(tmp_path / "m").extras_["autotune"]["members"]
    assert len(members) <= 2
    assert ("averaged with the next 1 finalists" in res.stdout) == (len(members) == 2)


def test_cli_train_auto_params(tmp_path: Path, ratings: torchmf.Interactions) -> None:
    from test_cli import torchmf as run_cli  # tests/ is on sys.path under pytest

    data = _write(tmp_path / "r.csv", ratings)
    res = run_cli("train", data, "-o", tmp_path / "m", "--solver", "als", "--auto", "2", "--auto-params", "reg",
                  "--no-progress")
    assert res.returncode == 0, res.stderr
    assert set(torchmf.load(tmp_path / "m").extras_["autotune"]["params"]) == {"solver", "reg"}


@pytest.mark.parametrize("args, fragment", [
    (["--auto", "0"], "--auto"),
    (["--auto", "5", "--auto-params", "alpha"], "--auto-params: 'alpha'"),
    (["--auto-params", "reg"], "--auto-params goes with --auto"),
    (["--auto", "5", "--validation", "0.2"], "--validation"),
    (["--auto-ensemble", "2"], "--auto-ensemble goes with --auto"),
    (["--auto", "5", "--auto-ensemble", "0"], "--auto-ensemble must be a positive number"),
    (["--auto", "5", "--auto-ensemble", "2"], "pass rank_by='scores'"),
])
def test_cli_train_auto_errors(tmp_path: Path, ratings: torchmf.Interactions, args: list[str], fragment: str) -> None:
    from test_cli import assert_user_error
    from test_cli import torchmf as run_cli  # tests/ is on sys.path under pytest

    data = _write(tmp_path / "r.csv", ratings)
    assert_user_error(run_cli("train", data, "-o", tmp_path / "m", *args), fragment)


def test_settled_epoch_passes_over_a_lone_spike() -> None:
    # the ML-100k iALS curve of RESULTS.md 8.6: centred means (hand-worked) are
    # e1 (.1751+.2045)/2=.1898, e2 .19393, e3 (.2045+.2022+.2033)/3=.20333, e4 .20253, e5 (.2033+.2021)/2=.2027
    curve = {1: 0.1751, 2: 0.2045, 3: 0.2022, 4: 0.2033, 5: 0.2021}
    assert settled_epoch(curve, lower=False) == 3
    # an RMSE curve that falls then rises keeps its optimum: e2 .96, e3 .94, e4 .94333
    assert settled_epoch({1: 1.0, 2: 0.95, 3: 0.93, 4: 0.94, 5: 0.96}, lower=True) == 3
    # a tie goes to the earlier epoch; under three epochs there is nothing to smooth
    assert settled_epoch({1: 0.25, 2: 0.25, 3: 0.25}, lower=False) == 1
    assert settled_epoch({1: 0.1, 2: 0.2}, lower=False) is None


def test_trial_epochs_come_from_the_smoothed_curve(plays: torchmf.Interactions,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the wiring: each iterative trial's refit epochs are settled_epoch of its own per-epoch curve
    calls: list[dict[int, float]] = []

    def fake(curve: dict[int, float], lower: bool) -> int | None:
        calls.append(dict(curve))
        return 2 if len(curve) >= 3 else None

    monkeypatch.setattr(tuner_module, "settled_epoch", fake)
    model = torchmf.autotune("ials", plays, budget_s=600, n_trials=4, seed=0, verbose=False)
    assert len(calls) == 4 and any(len(c) >= 3 for c in calls)
    expected = [2 if len(c) >= 3 else None for c in calls]
    for want, got in zip(expected, model.tuning_["epochs"], strict=True):
        if want is not None:
            assert got == want


def test_reserve_counts_only_finalists_that_can_be_refitted() -> None:
    # budget 100 s: the re-check may spend 30 s, two fits per finalist; refit on 1.0x the trial rows.
    # Finalist costs, best first: 1, 1, 1, 1, 40 s. The re-check affords the first four (2 s each, 8 s),
    # not the fifth (80 s), which therefore can never be refitted: reserve = 1.25 * (8 + 1) = 11.25 s
    # (it was 1.25 * (8 + 40) = 60 s when the costliest finalist set the refit's share).
    tuner = tuner_module.Tuner(None, {"als": {}}, {"als": {}}, {}, 0.0, 100.0, None, 1.0, "rmse", None, None,
                               lambda: 0.0)
    costs = [1.0, 1.0, 1.0, 1.0, 40.0]
    tuner.trials = [tuner_module.TrialRecord(n, {"solver": "als"}, value=0.9 + n / 100, cost=c, state="complete")
                    for n, c in enumerate(costs)] + _worse_trials()
    assert tuner.reserve() == pytest.approx(11.25)
    # when no two finalists fit the re-check, the best first-split trial is the refit: 1.25 * 20 = 25 s
    tuner.trials = [tuner_module.TrialRecord(n, {"solver": "als"}, value=0.9 + n / 100, cost=c, state="complete")
                    for n, c in enumerate([20.0, 20.0, 1.0])]
    assert tuner.reserve() == pytest.approx(25.0)


def test_ranking_trials_are_scored_on_two_splits(plays: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    # the wiring: a complete implicit trial's score is the mean of its first split's score (the trial loop's
    # evaluate) and its second split's (autotune's evaluate, in a fit seeded seed + 1000); a pruned one keeps
    # its first score
    from torchmf.evaluation import selection

    scored: list[tuple[str, int, float]] = []

    def recording(where: str, real):
        def evaluate(model, test, train=None, k=10):
            result = real(model, test, k=k)
            scored.append((where, model.get_params()["seed"], float(result["ndcg@10"])))
            return result
        return evaluate

    monkeypatch.setattr(selection, "evaluate", recording("first", selection.evaluate))
    monkeypatch.setattr(autotune_module, "evaluate", recording("other", autotune_module.evaluate))
    model = torchmf.autotune("ials", plays, budget_s=600, n_trials=6, max_epochs=6, seed=2, verbose=False)
    table = model.tuning_
    search = [s for s in scored if not (s[0] == "other" and s[1] in (3, 4))]  # leave out the re-check's fits
    assert {seed for where, seed, _ in search if where == "other"} == {1002}
    per_trial: list[list[float]] = []
    for where, _, value in search:
        if where == "first":
            per_trial.append([value])
        else:
            per_trial[-1].append(value)
    assert len(per_trial) == len(table) == 6
    for row, values in zip(table.itertuples(), per_trial, strict=True):
        assert len(values) == (2 if row.state == "complete" else 1)
        assert row._7 == pytest.approx(sum(values) / len(values))  # the ndcg@10 column
    assert (table["state"] == "complete").any()


def test_ratings_trials_keep_one_split(ratings: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[int] = []
    real = autotune_module.evaluate

    def evaluate(model, test, train=None, k=10):
        seeds.append(model.get_params()["seed"])
        return real(model, test, k=k)

    monkeypatch.setattr(autotune_module, "evaluate", evaluate)
    _tune(ratings, torchmf.MatrixFactorization(solver="als"), n_trials=4, seed=7)
    assert set(seeds) == {8, 9}  # only the re-check's fits: a random 20% of ratings is one split


def test_a_setting_that_fails_on_the_second_split_fails(plays: torchmf.Interactions,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = autotune_module.evaluate

    def evaluate(model, test, train=None, k=10):  # the second split's fits score NaN, as a diverged fit does
        result = real(model, test, k=k)
        return {**result, "ndcg@10": math.nan} if model.get_params()["seed"] == 1000 else result

    monkeypatch.setattr(autotune_module, "evaluate", evaluate)
    # every trial's first split scores normally; none is pruned (too few complete trials to compare with)
    with pytest.raises(ValueError, match="every trial failed"):
        _tune(plays, "ials", n_trials=3, max_epochs=5)


def test_trials_on_two_splits_mean_curves_and_choice() -> None:
    t = tuner_module.TrialRecord(0, {"solver": "als"}, curve={1: 0.1, 2: 0.2, 3: 0.3},
                                 more_curves=[{1: 0.3, 2: 0.2}])
    # hand-worked: epoch 1 (0.1 + 0.3) / 2 = 0.2, epoch 2 0.2; epoch 3 is on the first split only
    assert tuner_module.Tuner._mean_curve(t) == pytest.approx({1: 0.2, 2: 0.2})
    # budget 100 s, costs 1 s: both finalists are re-checked. Hand-worked means of all the splits' scores:
    # A (two splits, 0.200; re-checks 0.190): (2 * 0.200 + 2 * 0.190) / 4 = 0.1950
    # B (pruned, one split, 0.2115; re-checks 0.186): (0.2115 + 2 * 0.186) / 3 = 0.1945 -> A wins;
    # weighing every trial's search score as one split ((v + 2 r) / 3) gave A 0.1933 and chose B.
    tuner = tuner_module.Tuner(None, {"als": {}}, {"als": {}}, {}, 0.0, 100.0, None, 1.0, "ndcg@10", None, None,
                               lambda: 0.0, more_splits=[lambda params: (0.0, 1)])
    a = tuner_module.TrialRecord(0, {"solver": "als"}, value=0.200, splits=2, cost=1.0, state="complete")
    b = tuner_module.TrialRecord(1, {"solver": "als"}, value=0.2115, splits=1, cost=1.0, state="pruned")
    c = tuner_module.TrialRecord(2, {"solver": "als"}, value=0.199, splits=2, cost=1.0, state="complete")
    d = tuner_module.TrialRecord(3, {"solver": "als"}, value=0.150, splits=2, cost=1.0, state="complete")
    tuner.trials = [a, b, c, d]
    # while any trial has both splits' scores, only those are finalists (B's one score is on the first carve);
    # d is below their median (0.199)
    assert tuner.finalists() == [a, c]
    tuner.trials = [a, b]
    tuner.finalists = lambda: [b, a]  # as when the pruned trial competes (a single-split run)
    assert tuner.choose(lambda t: {0: 0.190, 1: 0.186}[t.number]) == [a, b]


def test_reserve_counts_every_member_of_the_refit() -> None:
    # as in the test above (budget 100 s, costs 1, 1, 1, 1, 40; the re-check affords the first four, 8 s), but
    # the refit fits the three costliest of those four: reserve = 1.25 * (8 + 3 * 1) = 13.75 s
    tuner = tuner_module.Tuner(None, {"als": {}}, {"als": {}}, {}, 0.0, 100.0, None, 1.0, "rmse", None, None,
                               lambda: 0.0, members=3)
    tuner.trials = [tuner_module.TrialRecord(n, {"solver": "als"}, value=0.9 + n / 100, cost=c, state="complete")
                    for n, c in enumerate([1.0, 1.0, 1.0, 1.0, 40.0])] + _worse_trials()
    assert tuner.reserve() == pytest.approx(13.75)


def _worse_trials() -> list:
    """Five cheap trials worse than any above (RMSE 0.99): the five above are then all above the median."""
    return [tuner_module.TrialRecord(10 + n, {"solver": "als"}, value=0.99, cost=1.0, state="complete")
            for n in range(5)]


def test_finalists_are_no_worse_than_the_median() -> None:
    # the complete trials of the 30-second seed-0 run of RESULTS.md 8.7 (NDCG@10, higher is better; costs in s):
    # median 0.1895, so the finalists are the four at or above it; the slow 0.1796 trial (3.3 s) is not one
    values = [0.2017, 0.1856, 0.1647, 0.1796, 0.2037, 0.1895, 0.1979]
    costs = [0.5, 0.4, 0.6, 3.3, 0.4, 0.1, 0.1]
    tuner = tuner_module.Tuner(None, {"als": {}}, {"als": {}}, {}, 0.0, 30.0, None, 1.0, "ndcg@10", None, None,
                               lambda: 0.0)
    tuner.trials = [tuner_module.TrialRecord(n, {"solver": "als"}, value=v, cost=c, state="complete")
                    for n, (v, c) in enumerate(zip(values, costs, strict=True))]
    assert [t.number for t in tuner.finalists()] == [4, 0, 6, 5]
    # re-check of all four (2 fits each: 0.8 + 1.0 + 0.2 + 0.2 = 2.2 s) and the costliest refit (0.5 s):
    # 1.25 * 2.7 = 3.375 s; with the 0.1796 trial among them it was 1.25 * (2.2 + 6.6 + 3.3) = 15.125 s
    assert tuner.reserve() == pytest.approx(3.375)


def test_ranking_refit_averages_the_best_finalists(plays: torchmf.Interactions) -> None:
    model = torchmf.autotune("ials", plays, budget_s=600, n_trials=8, max_epochs=6, seed=1, verbose=False)
    info = model.extras_["autotune"]
    members = info["members"]
    assert len(members) == 3  # the default for ranking losses (five finalists were re-checked)
    table = model.tuning_.set_index("trial")
    # the members are the three best re-checked trials by the mean of all their splits' scores
    checked = table[table["ndcg@10_recheck"].notna()]
    score = (2 * checked["ndcg@10"] + 2 * checked["ndcg@10_recheck"]) / 4
    assert [m["trial"] for m in members] == list(score.sort_values(ascending=False).index[:3])
    assert info["params"] == members[0]["params"] and info["epochs"] == members[0]["epochs"]
    assert model.effective_params["factors"] == sum(m["factors"] for m in members)
    # its scores are the mean of the members' refits (each on all the data, the run's seed, its epochs)
    fits = [torchmf.MatrixFactorization(loss="ials", **{k: v for k, v in m["params"].items() if k != "solver"},
                                        epochs=m["epochs"], seed=1).fit(plays) for m in members]
    users, items = plays.user_map.raw(plays.users[:50]), plays.item_map.raw(plays.items[:50])
    mean = np.mean([f.predict(users, items) for f in fits], axis=0)
    np.testing.assert_allclose(model.predict(users, items), mean, rtol=1e-4, atol=1e-5)
    single = torchmf.autotune("ials", plays, budget_s=600, n_trials=8, max_epochs=6, seed=1, verbose=False,
                              ensemble=1)
    assert [m["trial"] for m in single.extras_["autotune"]["members"]] == [members[0]["trial"]]
    np.testing.assert_allclose(single.predict(users, items), fits[0].predict(users, items), rtol=1e-5, atol=1e-6)


def test_rating_refit_is_one_model(ratings: torchmf.Interactions) -> None:
    model = _tune(ratings, torchmf.MatrixFactorization(solver="als"))
    members = model.extras_["autotune"]["members"]
    assert len(members) == 1 and model.effective_params["factors"] == members[0]["factors"]
    with pytest.raises(ValueError, match="ensemble must be"):
        _tune(ratings, ensemble=0)
    # rating models rank by a second, interaction model unless told otherwise: nothing to average
    with pytest.raises(ValueError, match="pass rank_by='scores'"):
        _tune(ratings, ensemble=2)
    averaged = _tune(ratings, torchmf.MatrixFactorization(solver="als", rank_by="scores"), ensemble=2)
    assert len(averaged.extras_["autotune"]["members"]) == 2


def test_a_gibbs_winner_is_refitted_alone(ratings: torchmf.Interactions, caplog: pytest.LogCaptureFixture) -> None:
    base = torchmf.MatrixFactorization(solver="gibbs", rank_by="scores")
    model = _tune(ratings, base, n_trials=3, max_epochs=8, ensemble=3)
    assert len(model.extras_["autotune"]["members"]) == 1
    assert model.effective_params["factors"] == model.extras_["autotune"]["params"]["factors"]
    assert "refitting it alone" in caplog.text
