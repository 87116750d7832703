"""Defaults that survive real data (issue 13 items 1-2, issue 11 item 4).

- iALS picks its confidence transform and scale from the values (binary,
  heavy-tailed counts, ratings) by the documented rule of
  :mod:`torchmf.data.profile`;
- a rating model fitted to counts says to use ``loss="ials"``;
- an explicit model's ``recommend`` / ``similar_items`` are not ruled by items
  with one or two ratings.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

import torchmf
from torchmf import MatrixFactorization
from torchmf.data.interactions import Interactions
from torchmf.data.profile import TAIL_RATIO, confidence_defaults, counts_guard, value_profile
from torchmf.data.split import user_split
from torchmf.errors import TrainingError
from torchmf.metrics import ranking_metrics


def small_counts(seed: int = 0) -> Interactions:
    data, _ = torchmf.datasets.synthetic_counts(n_users=300, n_items=400, n_interactions=12_000, seed=seed)
    return data


# ---------------------------------------------------------------------- value_profile
def test_profile_kinds():
    assert value_profile(np.ones(50)).kind == "binary"
    stars = np.random.default_rng(0).integers(1, 6, 1000)
    assert value_profile(stars).kind == "ratings"
    half_stars = np.random.default_rng(0).integers(1, 11, 1000) / 2
    assert value_profile(half_stars).kind == "ratings"
    counts = small_counts().values
    p = value_profile(counts)
    assert p.kind == "counts" and p.integer and p.tail_ratio >= TAIL_RATIO
    # the same tail but not whole numbers: a strength, not a count
    assert value_profile(counts + 0.5).kind == "ratings"
    assert value_profile(-counts).kind == "ratings"


def test_confidence_rule_is_scale_free():
    counts = small_counts().values
    a, b = confidence_defaults(value_profile(counts)), confidence_defaults(value_profile(counts * 10))
    assert a["confidence"] == b["confidence"] == "log"
    assert a["alpha"] == b["alpha"]
    assert b["confidence_eps"] == pytest.approx(10 * a["confidence_eps"])
    # the median count gets the confidence a binary interaction gets under the binary rule (1 + 1 * 1)
    med = float(np.median(counts))
    conf = 1 + a["alpha"] * math.log1p(med / a["confidence_eps"])
    binary = confidence_defaults(value_profile(np.ones(3)))
    assert conf == pytest.approx(1 + binary["alpha"] * 1.0)
    assert binary == {"confidence": "linear", "confidence_eps": 1.0, "alpha": 1.0}


def test_synthetic_counts_are_heavy_tailed_and_seeded():
    data, truth = torchmf.datasets.synthetic_counts(seed=3)
    again, _ = torchmf.datasets.synthetic_counts(seed=3)
    np.testing.assert_array_equal(data.values, again.values)
    v = data.values
    assert data.implicit and np.all(v >= 1) and np.all(v == np.round(v))
    # like real play counts: median in the hundreds, maximum past a hundred thousand
    assert 100 <= np.median(v) <= 1000
    assert v.max() >= 1e5
    assert truth.user_factors.shape[0] == data.n_users


def popularity_ndcg(model: MatrixFactorization, test: Interactions, threshold: float | None = None) -> float:
    """NDCG@10 of the most popular unseen items for ``model``'s test users (evaluate()'s protocol)."""
    rel = np.ones(len(test), bool) if threshold is None else test.values >= threshold
    u = model.user_map.indices(test.user_map.raw(test.users[rel]), missing="ignore")
    i = model.item_map.indices(test.item_map.raw(test.items[rel]), missing="ignore")
    i, u = i[u >= 0], u[u >= 0]
    order = np.lexsort((i, u))
    u, i = u[order], i[order]
    users, n_rel = np.unique(u, return_counts=True)
    indptr = np.concatenate([[0], np.cumsum(n_rel)])
    by_count = np.argsort(-np.bincount(model.seen_indices_, minlength=len(model.item_map)), kind="stable")
    top = np.array([[j for j in by_count[:200] if j not in set(model.seen_items(x))][:10] for x in users])
    return float(ranking_metrics(top, indptr, i, 10, n_items_known=len(model.item_map))["ndcg"])


# ---------------------------------------------------------------------- iALS on counts
def test_ials_defaults_pick_log_confidence_for_counts():
    data = small_counts()
    model = MatrixFactorization(loss="ials", factors=8, epochs=2, verbose=False).fit(data)
    hp = model.effective_params
    med = float(np.median(data.values))
    # the rule of torchmf.data.profile.confidence_defaults: log, eps = median, median count -> confidence 2
    assert hp["confidence"] == "log"
    assert hp["confidence_eps"] == pytest.approx(med)
    assert hp["alpha"] == pytest.approx(1 / math.log(2))
    # what the user passes wins
    hp2 = MatrixFactorization(loss="ials", confidence="linear", factors=8, epochs=1, verbose=False).fit(data)
    assert (hp2.effective_params["confidence"], hp2.effective_params["alpha"]) == ("linear", 1.0)
    hp3 = MatrixFactorization(loss="ials", alpha=3.0, factors=8, epochs=1, verbose=False).fit(data)
    assert (hp3.effective_params["confidence"], hp3.effective_params["alpha"]) == ("log", 3.0)


def test_ials_defaults_on_counts_beat_popularity():
    data = small_counts()
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    model = MatrixFactorization(loss="ials", verbose=False).fit(train)
    ndcg = torchmf.evaluate(model, test)["ndcg@10"]
    binary = Interactions(train.users, train.items, np.ones(len(train)), train.user_map, train.item_map,
                          implicit=True)
    best = torchmf.evaluate(MatrixFactorization(loss="ials", verbose=False).fit(binary), test)["ndcg@10"]
    # measured here: the old default (linear, 1 + count) 0.053, popularity 0.214, the rule 0.271, binary
    # values 0.267; benchmarks/count_defaults.py puts the rule within 0.01 of the best of a small grid
    # (binary confidence on these data) on larger sets
    assert ndcg > popularity_ndcg(model, test) + 0.03
    assert ndcg > best - 0.03


def test_binary_data_keeps_the_tuned_defaults():
    data, _ = torchmf.datasets.synthetic(n_users=100, n_items=80, n_interactions=2000, implicit=True, seed=1)
    auto = MatrixFactorization(loss="ials", factors=8, epochs=3, verbose=False).fit(data)
    fixed = MatrixFactorization(loss="ials", factors=8, epochs=3, verbose=False, confidence="linear",
                                confidence_eps=1.0, alpha=1.0).fit(data)
    assert auto.effective_params == {**fixed.effective_params, **{"confidence": "linear"}}
    np.testing.assert_array_equal(auto.user_factors, fixed.user_factors)


def test_rating_model_on_counts_points_to_ials(caplog):
    data = small_counts()
    explicit = Interactions(data.users, data.items, data.values, data.user_map, data.item_map)
    with caplog.at_level(logging.WARNING, logger="torchmf"):
        try:
            MatrixFactorization(factors=8, epochs=3, verbose=False, rank_by="scores").fit(explicit)
        except TrainingError as exc:  # when it diverges, the error names the fix too
            assert "loss='ials'" in str(exc)
    assert any("look like counts" in r.getMessage() and "loss='ials'" in r.getMessage() for r in caplog.records)


def test_divergence_on_counts_names_ials():
    profile = value_profile(small_counts().values)
    with pytest.raises(TrainingError, match=r"raise reg.*look like counts.*loss='ials'"):
        with counts_guard(profile, "mse", ranking=False):
            raise TrainingError("training diverged at epoch 2 (loss is nan); raise reg (now 0.35)")
    with pytest.raises(TrainingError, match=r"^training diverged at epoch 2 \(loss is nan\)$"):  # ratings: as is
        with counts_guard(value_profile([1.0, 2.0, 5.0]), "mse", ranking=False):
            raise TrainingError("training diverged at epoch 2 (loss is nan)")


# ---------------------------------------------------------------------- explicit ranking
def long_tail_ratings() -> Interactions:
    """Popular items with middling ratings plus many one-rating items rated 5: the trap of issue 13."""
    rng = np.random.default_rng(0)
    n_users, n_pop, n_rare = 200, 30, 120
    users, items, values = [], [], []
    for u in range(n_users):
        for i in rng.choice(n_pop, 12, replace=False):
            users.append(u), items.append(i), values.append(float(rng.integers(2, 5)))
    for j in range(n_rare):  # each rare item: one user, 5 stars
        users.append(int(rng.integers(n_users))), items.append(n_pop + j), values.append(5.0)
    return Interactions.from_arrays(np.array(users), np.array(items), np.array(values))


def test_recommend_is_not_ruled_by_one_rating_items():
    data = long_tail_ratings()
    model = MatrixFactorization(factors=8, verbose=False).fit(data)
    old = MatrixFactorization(factors=8, verbose=False, rank_by="scores").fit(data)
    support = np.bincount(model.seen_indices_, minlength=len(model.item_map))
    users = np.arange(50)
    top, _ = model.top_k(users, 10)
    top_old, _ = old.top_k(users, 10)
    # rank_by="scores" (the behaviour before the fix) fills the lists with one-rating items
    assert (support[top_old] <= 1).mean() > 0.5
    assert (support[top] <= 1).mean() < 0.1
    # predict is the rating model in both
    np.testing.assert_array_equal(model.predict(data.user_map.raw(data.users), data.item_map.raw(data.items)),
                                  old.predict(data.user_map.raw(data.users), data.item_map.raw(data.items)))
    sims = model.similar_items(data.item_map.raw(0)).item.to_numpy()
    assert (support[model.item_map.indices(sims)] <= 1).mean() < 0.2


def test_ranking_component_survives_save_fold_in_and_visitors(tmp_path):
    data = long_tail_ratings()
    model = MatrixFactorization(factors=8, verbose=False).fit(data)
    model.save(tmp_path / "m")
    loaded = torchmf.load(tmp_path / "m")
    pd.testing.assert_frame_equal(model.recommend(3), loaded.recommend(3))
    pd.testing.assert_frame_equal(model.similar_items(0), loaded.similar_items(0))
    visitor = {0: 4.0, 1: 3.0, 2: 4.0}
    pd.testing.assert_frame_equal(model.recommend_for(visitor), loaded.recommend_for(visitor))
    loaded.fold_in("new", visitor)
    pd.testing.assert_frame_equal(loaded.recommend("new"), model.recommend_for(visitor))
    assert "ranker" in model.to_state().extras


def test_default_explicit_model_ranks_above_popularity_on_u1(movielens_home):
    assert (movielens_home / "ml-100k" / "u1.base").is_file(), f"MovieLens 100K not found under {movielens_home}"
    train, test = torchmf.datasets.load_movielens_fold(1, data_home=movielens_home)
    model = MatrixFactorization(verbose=False).fit(train)
    res = torchmf.evaluate(model, test)
    # issue 13: before, 0.113 against popularity 0.325; target >= 0.45 and above popularity.
    # benchmarks/ranking_defaults.py measured 0.555 (all ratings) / 0.464 (>= 4) with these defaults
    assert res["ndcg@10"] >= 0.45
    assert res["ndcg@10"] > popularity_ndcg(model, test)
    assert torchmf.evaluate(model, test, threshold=4)["ndcg@10"] > popularity_ndcg(model, test, threshold=4)
    # predict is unchanged: the RMSE the defaults were tuned for (test_movielens: ~0.922)
    assert res["rmse"] < 0.93


def test_explain_splits_the_ranking_score_of_a_rating_model():
    # a folded-in user's rows are exact closed forms (iALS and ridge), so the items' shares add up to the
    # ranking score minus the part no item owns, w * b_i (torchmf.estimator.explain)
    data = long_tail_ratings()
    model = MatrixFactorization(factors=6, verbose=False, device="cpu").fit(data)
    values = [4, 2, 3, 4, 2, 3, 4, 2, 3, 4]
    history = {data.item_map.raw(np.array([j]))[0]: float(v) for j, v in zip(range(0, 20, 2), values, strict=True)}
    model.fold_in("v", history)
    rec = model.recommend("v", k=1)
    contrib = model.explain("v", rec["item"][0], k=100)
    assert set(contrib["item"]) == set(history)
    w = model.to_state().extras["ranker"]["rating_weight"]
    b_i = float(model.model.item_bias.weight[model.item_map.index(rec["item"][0]), 0])
    assert float(contrib["contribution"].sum()) + w * b_i == pytest.approx(float(rec["score"][0]), rel=1e-4)


def test_rank_by_is_validated():
    with pytest.raises(ValueError, match="rank_by='interactions' applies to rating losses"):
        MatrixFactorization(loss="ials", rank_by="interactions")
    with pytest.raises(ValueError, match="rank_by must be"):
        MatrixFactorization(rank_by="popularity")
    assert MatrixFactorization().effective_params["rank_by"] == "interactions"
    assert MatrixFactorization(loss="bpr").effective_params["rank_by"] == "scores"
