"""What a new user hits first (issue 13): visitors, explanations, progress, early stopping, warnings."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

import torchmf
from torchmf import DataError, MatrixFactorization


@pytest.fixture(scope="module")
def data():
    inter, _ = torchmf.datasets.synthetic(n_users=80, n_items=50, n_interactions=2000, rank=3, noise=0.1, seed=2)
    return inter


@pytest.fixture(scope="module")
def ials(data):
    return MatrixFactorization(loss="ials", factors=4, verbose=False, device="cpu").fit(data)


def test_recommend_for_stores_nothing_and_matches_fold_in(ials, data) -> None:
    items = list(ials.item_map.raw(np.arange(5)))
    before = (len(ials.user_map), ials.user_factors.copy(), ials.seen_indices_.copy())
    visitor = ials.recommend_for(items, k=5)
    assert len(ials.user_map) == before[0] and np.array_equal(ials.user_factors, before[1])
    assert np.array_equal(ials.seen_indices_, before[2])
    assert not set(items) & set(visitor["item"])
    # the same history folded in for real gives the same list and scores
    stored = copy.deepcopy(ials).fold_in("visitor", items)
    again = stored.recommend("visitor", k=5)
    assert list(again["item"]) == list(visitor["item"])
    np.testing.assert_allclose(again["score"], visitor["score"], rtol=1e-5)
    # top_k_for is the same ranking as arrays of item indices (what the service uses)
    idx, scores = ials.top_k_for(items, k=5)
    assert list(ials.item_map.raw(idx)) == list(visitor["item"])
    np.testing.assert_array_equal(scores, visitor["score"].to_numpy())


def test_explain_ials_splits_the_score_exactly(ials) -> None:
    # a folded-in user's factors are the exact closed form, so the contributions sum to the score
    model = copy.deepcopy(ials)
    items = list(model.item_map.raw(np.arange(0, 20, 2)))
    model.fold_in("v", items)
    rec = model.recommend("v", k=1)
    contrib = model.explain("v", rec["item"][0], k=100)
    assert len(contrib) == len(items) and set(contrib["item"]) == set(items)
    assert float(contrib["contribution"].sum()) == pytest.approx(float(rec["score"][0]), rel=1e-4)
    assert list(contrib["contribution"]) == sorted(contrib["contribution"], reverse=True)


@pytest.mark.parametrize("kw", [{}, {"solver": "sgd", "epochs": 2}, {"loss": "bpr", "epochs": 2}])
def test_explain_other_solvers_rank_the_users_items(kw, data) -> None:
    model = MatrixFactorization(factors=4, verbose=False, device="cpu", **kw).fit(data)
    user = data.user_map.raw(np.array([0]))[0]
    out = model.explain(user, model.recommend(user, k=1)["item"][0], k=3)
    assert list(out.columns) == ["item", "contribution", "value"] and len(out) == 3
    assert set(out["item"]) <= set(model.item_map.raw(model.seen_items(0)))


def test_history_frame(ials) -> None:
    frame = ials.history_frame()
    assert list(frame["epoch"]) == list(range(1, len(ials.history_) + 1)) and "train_loss" in frame


def test_early_stopping_without_validation_is_refused(data) -> None:
    with pytest.raises(ValueError, match="early_stopping=2 needs validation data"):
        MatrixFactorization(early_stopping=2, verbose=False).fit(data)


def test_fold_in_rating_outside_training_range(data) -> None:
    model = MatrixFactorization(factors=2, epochs=1, verbose=False, device="cpu").fit(data)
    item = data.item_map.raw(np.array([0]))[0]
    lo, hi = model.rating_range_
    with pytest.raises(DataError, match="outside the training range"):
        model.fold_in("new", {item: hi * 10})
    with pytest.raises(DataError, match="outside the training range"):
        model.recommend_for({item: lo - 1})


def test_evaluate_warns_when_test_data_looks_foreign(ials) -> None:
    foreign = torchmf.Interactions.from_dict({f"x{u}": {f"y{i}": 1 for i in range(3)} for u in range(5)}
                                             | {ials.user_map.raw(np.array([0]))[0]: {"y0": 1}})
    with pytest.warns(UserWarning, match="unknown to the model"):
        out = torchmf.evaluate(ials, foreign, k=5)
    assert out["users_skipped"] == 5


def test_progress_is_one_line_per_epoch_when_not_a_terminal(data, caplog) -> None:
    # under pytest stderr is not a terminal: verbose fits log one line per epoch instead of drawing a bar
    with caplog.at_level(logging.INFO, logger="torchmf.training.monitor"):
        MatrixFactorization(factors=2, epochs=3, verbose=True, device="cpu").fit(data)
    lines = [r.getMessage() for r in caplog.records if r.name == "torchmf.training.monitor"]
    lines = [line for line in lines if "epoch" in line]
    assert len(lines) == 3 and "epoch 3/3" in lines[-1] and "train_loss=" in lines[-1]


def test_signature_shows_real_parameters() -> None:
    import inspect

    params = inspect.signature(MatrixFactorization).parameters
    assert list(params) == list(MatrixFactorization(verbose=False).get_params())
    # factors defaults per solver (48; 10 for solver="gibbs"), like epochs and reg
    assert params["factors"].default is None and params["loss"].default == "mse"
    assert MatrixFactorization(verbose=False).effective_params["factors"] == 48
