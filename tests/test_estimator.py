"""MatrixFactorization: the estimator users call."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import torchmf
from torchmf import MatrixFactorization, NotFittedError, UnknownIdError


@pytest.fixture
def seed_model(seed_ratings):
    return MatrixFactorization(factors=8, verbose=False).fit(seed_ratings)


@pytest.fixture(scope="module")
def small_data():
    """Planted data with string ids ("u00000", "i00000"), small enough to check by brute force."""
    data, _ = torchmf.datasets.synthetic(n_users=60, n_items=40, n_interactions=900, rank=3, seed=3, id_prefix=True)
    return data


@pytest.fixture(scope="module")
def small_model(small_data):
    return MatrixFactorization(factors=6, epochs=8, verbose=False).fit(small_data)


def all_scores(model: MatrixFactorization) -> np.ndarray:
    """Unclipped scores of every (user, item) by hand from the factors and biases, shape (n_users, n_items)."""
    m = model.model
    scores = model.user_factors @ model.item_factors.T
    if m.biases:
        scores = scores + float(m.global_bias) + m.user_bias.weight[:, 0].cpu().numpy()[:, None]
        scores = scores + m.item_bias.weight[:, 0].cpu().numpy()[None, :]
    return scores


def ranking_scores(model: MatrixFactorization) -> np.ndarray:
    """What recommend() ranks by, by hand, shape (n_users, n_items): for a rating model with its iALS
    ranking component (rank_by="interactions", the default) x_u . y_i + w * (b_i + p_u . q_i), see
    torchmf.estimator.ranker; else the unclipped scores."""
    state = model.to_state()
    if "ranker.user_embs.weight" not in state.tensors:
        return all_scores(model)
    w = state.extras["ranker"]["rating_weight"]
    X, Y = (state.tensors[f"ranker.{s}_embs.weight"].cpu().numpy() for s in ("user", "item"))
    bias = model.model.item_bias.weight[:, 0].cpu().numpy()[None, :] if model.model.biases else 0.0
    return X @ Y.T + w * (model.user_factors @ model.item_factors.T + bias)


def seen_by(data, user) -> set:
    df = data.to_pandas()
    return set(df.loc[df["user"] == user, "item"])


# ---------------------------------------------------------------------- seed example
def test_seed_example_end_to_end(seed_model):
    value = seed_model.predict("user2", "item2")
    assert isinstance(value, float)
    assert np.isfinite(value)
    arr = seed_model.predict(["user1", "user2", "user2"], ["item3", "item2", "item1"])
    assert isinstance(arr, np.ndarray) and arr.shape == (3,) and arr.dtype == np.float32
    assert arr[1] == pytest.approx(value)
    # numpy arrays and pandas Series work as well as lists
    np.testing.assert_array_equal(seed_model.predict(np.array(["user1"]), pd.Series(["item3"])), arr[:1])
    recs = seed_model.recommend("user1", k=2)
    # user1 rated item1 and item2, so only item3 remains
    assert recs["item"].tolist() == ["item3"]


def test_predictions_clipped_to_training_range(seed_model):
    # seed ratings run from 2 to 5, so every prediction lies in [2, 5]
    assert seed_model.rating_range_ == (2.0, 5.0)
    users = ["user1", "user1", "user1", "user2", "user2", "user2"]
    items = ["item1", "item2", "item3", "item1", "item2", "item3"]
    pred = seed_model.predict(users, items)
    assert pred.min() >= 2.0 and pred.max() <= 5.0
    # push a raw score far out of range: it must come back exactly at the bound
    with torch.no_grad():
        seed_model.model.user_embs.weight[0] = 100.0
        seed_model.model.item_embs.weight[2] = 100.0
    assert seed_model.predict("user1", "item3") == 5.0
    with torch.no_grad():
        seed_model.model.item_embs.weight[2] = -100.0
    assert seed_model.predict("user1", "item3") == 2.0


def test_predict_matches_factors(small_model, small_data):
    users = small_data.user_map.raw(small_data.users[:50])
    items = small_data.item_map.raw(small_data.items[:50])
    expected = all_scores(small_model)[small_data.users[:50], small_data.items[:50]]
    expected = np.clip(expected, *small_model.rating_range_)
    np.testing.assert_allclose(small_model.predict(users, items), expected, rtol=1e-5, atol=1e-5)


def test_predict_length_mismatch(seed_model):
    with pytest.raises(ValueError, match="length"):
        seed_model.predict(["user1", "user2"], ["item1"])


# ---------------------------------------------------------------------- unknown ids
def test_unknown_error_names_the_id(seed_model):
    with pytest.raises(UnknownIdError, match="ghost") as info:
        seed_model.predict("ghost", "item1")
    assert isinstance(info.value, KeyError)
    assert info.value.kind == "user"
    with pytest.raises(UnknownIdError, match="phantom") as info:
        seed_model.predict(["user1", "user2"], ["item1", "phantom"])
    assert info.value.kind == "item"
    with pytest.raises(ValueError, match="unknown"):
        seed_model.predict("user1", "item1", unknown="zero")


def test_unknown_fallback_is_mean_plus_known_bias(seed_model):
    m = seed_model.model
    mu = float(m.global_bias)
    bu = m.user_bias.weight[:, 0].cpu().numpy()
    bi = m.item_bias.weight[:, 0].cpu().numpy()
    lo, hi = seed_model.rating_range_
    u2, i3 = seed_model.user_map.index("user2"), seed_model.item_map.index("item3")
    got = seed_model.predict(["ghost", "user2", "ghost"], ["item3", "phantom", "phantom"], unknown="fallback")
    # by hand: unknown user -> mu + b_item; unknown item -> mu + b_user; both unknown -> mu; then clipped
    expected = np.clip([mu + bi[i3], mu + bu[u2], mu], lo, hi)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # the global mean is the training mean: (5 + 3 + 2 + 5) / 4 = 3.75
    assert mu == pytest.approx(3.75)
    # a known pair is unaffected by the fallback mode
    assert seed_model.predict("user2", "item3", unknown="fallback") == seed_model.predict("user2", "item3")


# ---------------------------------------------------------------------- recommend
def test_recommend_single_user(small_model, small_data):
    user = small_data.user_map.ids[0]
    recs = small_model.recommend(user, k=5)
    assert list(recs.columns) == ["item", "score"]
    assert len(recs) == 5
    scores = recs["score"].to_numpy()
    assert np.all(np.diff(scores) <= 0)  # best first
    assert not set(recs["item"]) & seen_by(small_data, user)
    # they really are the 5 best unseen items, scored as the factors say
    full = ranking_scores(small_model)[0]
    unseen = [i for i, raw in enumerate(small_model.item_map.ids) if raw not in seen_by(small_data, user)]
    best = sorted(unseen, key=lambda i: -full[i])[:5]
    np.testing.assert_allclose(scores, full[best], rtol=1e-5, atol=1e-5)
    assert recs["item"].tolist() == [small_model.item_map.ids[i] for i in best]


def test_recommend_many_users(small_model, small_data):
    users = small_data.user_map.ids[:3]
    recs = small_model.recommend(users, k=4)
    assert list(recs.columns) == ["user", "rank", "item", "score"]
    assert recs["user"].tolist() == [u for u in users for _ in range(4)]
    assert recs["rank"].tolist() == [1, 2, 3, 4] * 3
    for user in users:
        one = small_model.recommend(user, k=4)
        mine = recs[recs["user"] == user]
        assert mine["item"].tolist() == one["item"].tolist()
        # scored in a batch or alone: equal up to float32 rounding
        np.testing.assert_allclose(mine["score"].to_numpy(), one["score"].to_numpy(), rtol=1e-6)


def test_recommend_candidates(small_model, small_data):
    user = small_data.user_map.ids[1]
    seen = seen_by(small_data, user)
    candidates = small_data.item_map.ids[:10]
    recs = small_model.recommend(user, k=100, items=candidates)
    assert set(recs["item"]) <= set(candidates)
    # k exceeds the candidates: every unseen candidate, and nothing else
    assert set(recs["item"]) == set(candidates) - seen
    with pytest.raises(UnknownIdError, match="nope"):
        small_model.recommend(user, items=["nope"])


def test_recommend_exclude_seen_false(small_model, small_data):
    user = small_data.user_map.ids[2]
    seen = seen_by(small_data, user)
    everything = small_model.recommend(user, k=small_data.n_items, exclude_seen=False)
    assert len(everything) == small_data.n_items
    assert seen <= set(everything["item"])
    assert len(small_model.recommend(user, k=small_data.n_items)) == small_data.n_items - len(seen)


@pytest.mark.parametrize("k", [0, -1, 2.5, "3"])
def test_recommend_bad_k(seed_model, k):
    with pytest.raises(ValueError, match="k"):
        seed_model.recommend("user1", k=k)


def test_recommend_unknown_user(seed_model):
    with pytest.raises(UnknownIdError, match="ghost"):
        seed_model.recommend("ghost")


# ---------------------------------------------------------------------- similar items
def test_similar_items_cosine(small_model, small_data):
    item = small_data.item_map.ids[4]
    sims = small_model.similar_items(item, k=7)
    assert list(sims.columns) == ["item", "score"]
    assert len(sims) == 7
    assert item not in set(sims["item"])
    scores = sims["score"].to_numpy()
    assert np.all(scores <= 1 + 1e-6) and np.all(scores >= -1 - 1e-6)
    assert np.all(np.diff(scores) <= 0)
    # manual cosine of the item factors (of the ranking component when the rating model has one,
    # rank_by="interactions": torchmf.estimator.ranker)
    tensors = small_model.to_state().tensors
    Q = tensors.get("ranker.item_embs.weight", small_model.model.item_embs.weight).cpu().numpy().astype(np.float64)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    cos = Qn @ Qn[4]
    cos[4] = -np.inf
    order = np.argsort(-cos)[:7]
    assert sims["item"].tolist() == [small_model.item_map.ids[i] for i in order]
    np.testing.assert_allclose(scores, cos[order], atol=1e-5)
    with pytest.raises(ValueError):
        small_model.similar_items(item, k=0)
    with pytest.raises(UnknownIdError):
        small_model.similar_items("nope")


# ---------------------------------------------------------------------- fold-in
def test_fold_in_new_user(small_data):
    model = MatrixFactorization(factors=6, epochs=8, verbose=False).fit(small_data)
    n_users = len(model.user_map)
    items = small_data.item_map.ids
    ratings = {items[0]: 5.0, items[1]: 1.0, items[2]: 4.0}
    assert model.fold_in("newcomer", ratings) is model
    assert len(model.user_map) == n_users + 1
    assert model.user_factors.shape == (n_users + 1, 6)
    recs = model.recommend("newcomer", k=5)
    assert len(recs) == 5 and not set(recs["item"]) & set(ratings)
    pred = model.predict("newcomer", items[3])
    lo, hi = model.rating_range_
    assert lo <= pred <= hi
    # the folded-in user's factors fit their own ratings better than the bias-only guess
    fitted = model.predict(["newcomer"] * 3, list(ratings))
    baseline = model.predict(["nobody"] * 3, list(ratings), unknown="fallback")
    target = np.array(list(ratings.values()))
    assert np.abs(fitted - target).sum() < np.abs(baseline - target).sum()
    # other users are untouched
    old = small_data.user_map.ids[0]
    assert old in model.user_map and model.user_map.index(old) == 0


def test_fold_in_existing_user_reproduces_als_factors(small_data):
    # ALS with exact solves, run to convergence: a user's factors are then the ridge
    # solution for the final item factors, which is exactly what fold_in computes.
    model = MatrixFactorization(factors=6, epochs=30, cg_steps=0, verbose=False).fit(small_data)
    df = small_data.to_pandas()
    for row in (0, 7, 31):
        user = model.user_map.ids[row]
        before_p = model.user_factors[row].copy()
        before_b = float(model.model.user_bias.weight[row, 0])
        mine = df[df["user"] == user]
        model.fold_in(user, dict(zip(mine["item"], mine["value"], strict=True)))
        assert len(model.user_map) == small_data.n_users  # replaced, not appended
        np.testing.assert_allclose(model.user_factors[row], before_p, atol=1e-4)
        assert float(model.model.user_bias.weight[row, 0]) == pytest.approx(before_b, abs=1e-4)


def test_fold_in_rejects_bad_input(seed_model):
    with pytest.raises(torchmf.DataError):
        seed_model.fold_in("new", {})
    with pytest.raises(UnknownIdError, match="nope"):
        seed_model.fold_in("new", {"nope": 3})
    with pytest.raises(torchmf.DataError, match="not finite"):
        seed_model.fold_in("new", {"item1": float("nan")})
    with pytest.raises(torchmf.DataError, match="not a number"):
        seed_model.fold_in("new", {"item1": "five"})
    assert "new" not in seed_model.user_map


# ---------------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize(
    "name, value",
    [("factors", 0), ("epochs", -1), ("solver", "x"), ("lr", -1), ("optimizer", "x"), ("device", "tpu"),
     ("reg", -0.1), ("batch_size", 0), ("cg_steps", -1), ("early_stopping", 0), ("factors", 2.5),
     ("biases", "yes")],
)
def test_invalid_hyperparameter_names_it(name, value):
    with pytest.raises(ValueError, match=name):
        MatrixFactorization(**{name: value})


def test_unknown_kwarg_is_type_error():
    with pytest.raises(TypeError, match="n_factors"):
        MatrixFactorization(n_factors=8)


def test_get_and_set_params():
    model = MatrixFactorization(factors=12, solver="sgd", verbose=False)
    params = model.get_params()
    assert params["factors"] == 12 and params["solver"] == "sgd" and params["epochs"] is None
    assert set(params) == set(MatrixFactorization().get_params())
    assert model.set_params(factors=3, lr=0.05) is model
    assert model.get_params()["factors"] == 3 and model.get_params()["lr"] == 0.05
    # solver defaults fill the gaps (params.py: SGD defaults to 40 epochs)
    assert model.effective_params["epochs"] == 40
    with pytest.raises(ValueError, match="factors"):
        model.set_params(factors=-1)
    assert model.get_params()["factors"] == 3  # a rejected change leaves the old value
    with pytest.raises(TypeError):
        model.set_params(bogus=1)
    # round trip: a clone from get_params has the same params
    assert MatrixFactorization(**model.get_params()).get_params() == model.get_params()


NOT_FITTED_CALLS = {
    "predict": lambda m, tmp: m.predict("a", "b"),
    "recommend": lambda m, tmp: m.recommend("a"),
    "similar_items": lambda m, tmp: m.similar_items("a"),
    "fold_in": lambda m, tmp: m.fold_in("a", {"b": 1.0}),
    "user_factors": lambda m, tmp: m.user_factors,
    "item_factors": lambda m, tmp: m.item_factors,
    "model": lambda m, tmp: m.model,
    "save": lambda m, tmp: m.save(tmp / "model"),
}


@pytest.mark.parametrize("call", list(NOT_FITTED_CALLS.values()), ids=list(NOT_FITTED_CALLS))
def test_not_fitted_error(call, tmp_path):
    with pytest.raises(NotFittedError, match="fit"):
        call(MatrixFactorization(verbose=False), tmp_path)
    assert not (tmp_path / "model").exists()
    assert issubclass(NotFittedError, RuntimeError)


def test_factor_shapes(small_model, small_data):
    assert small_model.user_factors.shape == (small_data.n_users, 6)
    assert small_model.item_factors.shape == (small_data.n_items, 6)
    assert small_model.user_factors.dtype == np.float32


def test_fit_compacts_ids(seed_ratings):
    # a model knows only the ids it saw: a subset's shared maps are compacted first
    data = torchmf.Interactions.from_dict(seed_ratings)
    model = MatrixFactorization(factors=2, verbose=False).fit(data.subset(np.array([0, 1])))
    assert model.user_map.ids == ["user1"]
    assert model.item_map.ids == ["item1", "item2"]
    with pytest.raises(UnknownIdError):
        model.predict("user2", "item1")


def test_fit_rejects_bad_input():
    with pytest.raises(torchmf.DataError):
        MatrixFactorization(verbose=False).fit([("u", "i", 3)])
    with pytest.raises(torchmf.DataError):
        MatrixFactorization(verbose=False).fit({})
