"""torchmf.autotune: trials table, reproducibility, the time budget (on a simulated clock), refit, CLI --auto."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import torchmf
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


def _tune(data: torchmf.Interactions, loss: str = "mse", **kw) -> torchmf.MatrixFactorization:
    kw = {"budget_s": 600, "n_trials": 5, "max_epochs": 6, "verbose": False, **kw}
    return torchmf.autotune(loss, data, **kw)


def test_trials_table_and_refit(ratings: torchmf.Interactions) -> None:
    model = _tune(ratings)
    table = model.tuning_
    space = get_solver("mse").search_space
    assert list(table.columns) == ["trial", *space, "rmse", "epochs", "state", "seconds"]
    assert list(table["trial"]) == list(range(5))
    assert set(table["state"]) <= {"complete", "pruned", "failed"}
    assert (table["epochs"] >= 1).all() and (table["epochs"] <= 6).all()
    # the refit is the best trial's setting, for its epoch count, on all the data
    best = table.loc[table["rmse"].idxmin()]
    info = model.extras_["autotune"]
    assert info["params"] == {name: best[name].item() for name in space}
    assert info["validation"] == pytest.approx(best["rmse"])
    hp = model.effective_params
    assert hp["factors"] == best["factors"] and hp["reg"] == pytest.approx(best["reg"])
    assert len(model.history_) == best["epochs"] == hp["epochs"]
    assert len(model.user_map) == ratings.n_users and len(model.item_map) == ratings.n_items
    for name, (kind, *bounds) in space.items():
        if kind in ("int", "float"):
            assert table[name].between(bounds[0], bounds[1]).all(), name


def test_same_seed_same_trials(ratings: torchmf.Interactions) -> None:
    a, b = _tune(ratings, seed=3).tuning_, _tune(ratings, seed=3).tuning_
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    c = _tune(ratings, seed=4).tuning_
    assert not c["reg"].equals(a["reg"])


def test_implicit_uses_ranking_metric(plays: torchmf.Interactions) -> None:
    model = _tune(plays, "ials", n_trials=3, max_epochs=4)
    assert model.is_ranking
    assert "ndcg@10" in model.tuning_.columns and "confidence" in model.tuning_.columns
    assert model.tuning_["ndcg@10"].between(0, 1).all()
    assert model.extras_["autotune"]["metric"] == "ndcg@10"


def _ratings_only() -> torchmf.MatrixFactorization:
    """An ALS estimator whose fits train one model (no interaction ranker where the estimator has one)."""
    extra = {"rank_by": "scores"} if "rank_by" in torchmf.MatrixFactorization().get_params() else {}
    return torchmf.MatrixFactorization(**extra)


def test_budget_on_a_simulated_clock(ratings: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each epoch of any fit (trials and refit) costs one simulated second; the total must stay in budget."""
    clock = {"t": 0.0}
    original = monitor_module.Monitor.end_epoch

    def end_epoch(self, epoch: int, train_loss: float) -> bool:
        clock["t"] += 1.0
        return original(self, epoch, train_loss)

    monkeypatch.setattr(monitor_module.Monitor, "end_epoch", end_epoch)
    monkeypatch.setattr(autotune_module, "_clock", lambda: clock["t"])
    model = torchmf.autotune(_ratings_only(), ratings, budget_s=40, max_epochs=8, verbose=False)
    table = model.tuning_
    # the search stopped on its own (no n_trials), used most of the budget, and the refit still fit in it
    assert len(table) >= 3
    assert clock["t"] <= 40 * 1.1
    assert table["seconds"].sum() + len(model.history_) == clock["t"]
    assert clock["t"] >= 40 * 0.5


def test_budget_stops_a_long_first_trial(ratings: torchmf.Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"t": 0.0}
    original = monitor_module.Monitor.end_epoch

    def end_epoch(self, epoch: int, train_loss: float) -> bool:
        clock["t"] += 1.0
        return original(self, epoch, train_loss)

    monkeypatch.setattr(monitor_module.Monitor, "end_epoch", end_epoch)
    monkeypatch.setattr(autotune_module, "_clock", lambda: clock["t"])
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
    with pytest.raises(ValueError, match="search_space"):
        torchmf.autotune("mse", ratings)


def test_estimator_values_outside_the_space_are_kept(ratings: torchmf.Interactions) -> None:
    base = torchmf.MatrixFactorization(init_std=0.05, cg_steps=0)
    model = torchmf.autotune(base, ratings, budget_s=600, n_trials=2, max_epochs=3, verbose=False)
    assert model.effective_params["init_std"] == 0.05 and model.effective_params["cg_steps"] == 0
    assert base.get_params()["epochs"] is None  # the estimator passed in is not modified


def test_every_solver_declares_a_valid_space() -> None:
    est = torchmf.MatrixFactorization()
    names = set(est.get_params())
    for loss in ("mse", "ials", "bpr"):
        space = get_solver(loss).search_space
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


@pytest.mark.parametrize("args, fragment", [
    (["--auto", "0"], "--auto"),
    (["--auto", "5", "--validation", "0.2"], "--validation"),
])
def test_cli_train_auto_errors(tmp_path: Path, ratings: torchmf.Interactions, args: list[str], fragment: str) -> None:
    from test_cli import assert_user_error
    from test_cli import torchmf as run_cli  # tests/ is on sys.path under pytest

    data = _write(tmp_path / "r.csv", ratings)
    assert_user_error(run_cli("train", data, "-o", tmp_path / "m", *args), fragment)
