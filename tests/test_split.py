"""Tests of torchmf.data.split."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import pytest

from torchmf.data.interactions import Interactions
from torchmf.errors import DataError
from torchmf.split import kfold, leave_last_out, random_split, split_report, temporal_split, user_split


def make_data(n_users=60, n_items=40, n=900, seed=0, timestamps=True) -> Interactions:
    """Distinct random (user, item) pairs, skewed user activity, timestamps with ties."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.5, n_users) + 0.1
    pairs = set()
    while len(pairs) < n:
        u = int(rng.choice(n_users, p=weights / weights.sum()))
        pairs.add((u, int(rng.integers(n_items))))
    users, items = map(np.array, zip(*sorted(pairs, key=lambda p: rng.random()), strict=True))
    ratings = rng.integers(1, 6, n).astype(float)
    ts = rng.integers(0, 50, n) if timestamps else None  # few distinct values: many ties
    return Interactions.from_arrays([f"u{u}" for u in users], [f"i{i}" for i in items], ratings, ts)


def keys(d: Interactions) -> np.ndarray:
    return d.users * d.n_items + d.items  # (user, item) pairs are distinct, so a key is a row


def check_partition(data: Interactions, train: Interactions, test: Interactions) -> None:
    assert train.user_map is data.user_map and test.item_map is data.item_map
    assert len(train) + len(test) == len(data)
    assert not np.intersect1d(keys(train), keys(test)).size
    np.testing.assert_array_equal(np.sort(np.r_[keys(train), keys(test)]), np.sort(keys(data)))
    # values and timestamps travel with their rows
    both = np.r_[keys(train), keys(test)]
    vals = np.r_[train.values, test.values][np.argsort(both)]
    np.testing.assert_array_equal(vals, data.values[np.argsort(keys(data))])


@pytest.fixture(scope="module")
def data() -> Interactions:
    return make_data()


SPLITS = [
    (random_split, {}),
    (user_split, {"min_interactions": 3}),
    (temporal_split, {}),
    (temporal_split, {"cutoff": 30}),
    (leave_last_out, {"n": 2, "min_interactions": 4}),
]


@pytest.mark.parametrize(("split", "kwargs"), SPLITS)
def test_disjoint_and_covering(data, split, kwargs):
    train, test = split(data, **kwargs)
    assert len(train) and len(test)
    check_partition(data, train, test)


def test_random_split_fraction(data):
    _, test = random_split(data, test_fraction=0.25)
    assert len(test) == round(0.25 * len(data))


def test_user_split_per_user_counts(data):
    frac, min_n = 0.3, 5
    train, test = user_split(data, test_fraction=frac, min_interactions=min_n, seed=3)
    n_u = np.bincount(data.users, minlength=data.n_users)
    n_test = np.bincount(test.users, minlength=data.n_users)
    n_train = np.bincount(train.users, minlength=data.n_users)
    expected = np.where(n_u >= min_n, np.clip([round(frac * n) for n in n_u], 1, np.maximum(n_u - 1, 1)), 0)
    np.testing.assert_array_equal(n_test, expected)
    assert (n_train[n_u > 0] >= 1).all()  # every active user stays known to train
    assert (n_test[(n_u > 0) & (n_u < min_n)] == 0).all()  # min_interactions respected
    assert ((n_u >= min_n) & (n_u < 2 * min_n)).any() and (n_u < min_n).any()  # both kinds present


def test_temporal_split_order(data):
    train, test = temporal_split(data, test_fraction=0.2)
    assert test.timestamps.min() >= train.timestamps.max()
    assert len(test) == round(0.2 * len(data))
    train, test = temporal_split(data, cutoff=30)
    assert (test.timestamps >= 30).all() and (train.timestamps < 30).all()


def test_temporal_split_datetime_cutoff():
    d = Interactions.from_arrays(["a", "a", "b"], ["x", "y", "x"], [1.0, 2.0, 3.0], [100, 200, 300])
    cut = datetime.fromtimestamp(200, tz=timezone.utc)
    train, test = temporal_split(d, cutoff=cut)
    assert test.timestamps.tolist() == [200, 300] and train.timestamps.tolist() == [100]


def test_leave_last_out_per_user_order(data):
    train, test = leave_last_out(data, n=2, min_interactions=4)
    n_u = np.bincount(data.users, minlength=data.n_users)
    n_test = np.bincount(test.users, minlength=data.n_users)
    np.testing.assert_array_equal(n_test, np.where(n_u >= 4, 2, 0))
    for u in np.unique(test.users):
        assert test.timestamps[test.users == u].min() >= train.timestamps[train.users == u].max()


def test_leave_last_out_ties_by_row_order():
    # user a: rows 0, 1, 2 share timestamp 5; row 2 is "last"; user b has 1 row: kept in train
    d = Interactions.from_arrays(["a", "a", "a", "b"], ["x", "y", "z", "x"], None, [5, 5, 5, 1])
    train, test = leave_last_out(d)
    assert d.item_map.raw(test.items).tolist() == ["z"]
    assert d.user_map.raw(train.users).tolist() == ["a", "a", "b"]


def test_kfold_partitions(data):
    folds = kfold(data, k=4, seed=1)
    assert len(folds) == 4
    tests = [keys(te) for _, te in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.sort(keys(data)))
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1
    for train, test in folds:
        check_partition(data, train, test)


@pytest.mark.parametrize(
    ("split", "kwargs"),
    [(random_split, {}), (user_split, {"min_interactions": 3}), (kfold, {"k": 3})],
)
def test_seeds_reproducible(data, split, kwargs):
    def test_keys(seed):
        out = split(data, seed=seed, **kwargs)
        test = out[0][1] if isinstance(out, list) else out[1]
        return keys(test)

    np.testing.assert_array_equal(test_keys(7), test_keys(7))
    np.testing.assert_array_equal(test_keys(7), test_keys(np.random.default_rng(7)))
    assert not np.array_equal(test_keys(7), test_keys(8))


@pytest.mark.parametrize(
    ("split", "kwargs", "param"),
    [
        (random_split, {"test_fraction": 1.5}, "test_fraction"),
        (random_split, {"test_fraction": 0}, "test_fraction"),
        (random_split, {"seed": -1}, "seed"),
        (random_split, {"seed": "x"}, "seed"),
        (user_split, {"test_fraction": -0.1}, "test_fraction"),
        (user_split, {"min_interactions": 1}, "min_interactions"),
        (temporal_split, {"test_fraction": 1.0}, "test_fraction"),
        (temporal_split, {"cutoff": "soon"}, "cutoff"),
        (temporal_split, {"test_fraction": 0.2, "cutoff": 10}, "cutoff"),
        (leave_last_out, {"n": 0}, "n"),
        (leave_last_out, {"n": 2, "min_interactions": 2}, "min_interactions"),
        (kfold, {"k": 1}, "k"),
        (kfold, {"k": 2.5}, "k"),
    ],
)
def test_bad_arguments(data, split, kwargs, param):
    with pytest.raises(ValueError, match=rf"\b{param}\b") as info:
        split(data, **kwargs)
    assert not isinstance(info.value, DataError)


def test_data_errors():
    no_ts = make_data(n=50, timestamps=False)
    with pytest.raises(DataError, match="timestamps"):
        temporal_split(no_ts)
    with pytest.raises(DataError, match="timestamps"):
        leave_last_out(no_ts)
    with pytest.raises(DataError, match="cutoff"):
        temporal_split(make_data(n=50), cutoff=10**6)
    with pytest.raises(DataError, match="min_interactions"):
        user_split(no_ts, min_interactions=1000)
    with pytest.raises(DataError):
        kfold(no_ts.subset(np.arange(3)), k=5)
    with pytest.raises(DataError):
        random_split(no_ts.subset(np.arange(1)))


def test_report_hand_built(caplog):
    # rows: 0 (a, x), 1 (a, y), 2 (b, x), 3 (c, z), 4 (c, x)
    d = Interactions.from_arrays(["a", "a", "b", "c", "c"], ["x", "y", "x", "z", "x"], [1, 2, 3, 4, 5])
    train, test = d.subset(np.array([0, 1, 4])), d.subset(np.array([2, 3]))
    # test users {b, c}: b unseen in train; test items {x, z}: z unseen in train
    assert split_report(train, test) == {
        "n_train": 3,
        "n_test": 2,
        "test_users_unknown_to_train": 1,
        "test_items_unknown_to_train": 1,
    }
    with caplog.at_level(logging.INFO, logger="torchmf.data.split"):
        train, test = random_split(d, test_fraction=0.4, seed=0)
    assert len(test) == 2
    assert any("random_split" in r.getMessage() and "2 test" in r.getMessage() for r in caplog.records)


def test_report_rejects_foreign_maps():
    a = Interactions.from_arrays(["a"], ["x"])
    b = Interactions.from_arrays(["b"], ["x"])
    with pytest.raises(ValueError, match="user_map"):
        split_report(a, b)


def test_user_split_large_keeps_every_row_once():
    # 200k rows, 20k users: the per-user quota holds at scale (speed is measured in benchmarks, not here)
    from torchmf.data.idmap import IdMap

    rng = np.random.default_rng(0)
    n, n_users, n_items = 200_000, 20_000, 5_000
    d = Interactions(
        rng.integers(0, n_users, n), rng.integers(0, n_items, n), np.ones(n, np.float32),
        IdMap(np.arange(n_users)), IdMap(np.arange(n_items)),
    )
    train, test = user_split(d, test_fraction=0.2, min_interactions=5)
    assert len(train) + len(test) == n
