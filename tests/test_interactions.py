"""Interactions: constructors, validation, duplicates, views."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from torchmf import DataError, Interactions


def triples(inter: Interactions) -> Counter:
    """Multiset of (raw user, raw item, value) of an Interactions."""
    df = inter.to_pandas()
    return Counter(zip(df["user"].tolist(), df["item"].tolist(), df["value"].astype(float).tolist(), strict=True))


# ---------------------------------------------------------------------- from_dict
def test_from_dict_seed(seed_ratings):
    data = Interactions.from_dict(seed_ratings)
    # seed dict: user1 rated item1, item2; user2 rated item1, item3
    assert len(data) == 4
    assert data.n_users == 2
    assert data.n_items == 3
    assert data.shape == (2, 3)
    assert not data.implicit
    assert data.user_map.ids == ["user1", "user2"]
    assert data.item_map.ids == ["item1", "item2", "item3"]
    assert triples(data) == Counter(
        {("user1", "item1", 5.0): 1, ("user1", "item2", 3.0): 1, ("user2", "item1", 2.0): 1, ("user2", "item3", 5.0): 1}
    )
    assert data.values.dtype == np.float32
    assert data.rating_range() == (2.0, 5.0)


def test_from_dict_rejects_non_dicts():
    with pytest.raises(DataError):
        Interactions.from_dict([("u", "i", 1)])
    with pytest.raises(DataError, match="'u1'"):
        Interactions.from_dict({"u1": [1, 2]})


def test_from_dict_empty():
    with pytest.raises(DataError, match="empty"):
        Interactions.from_dict({})


# ---------------------------------------------------------------------- from_pandas
def test_from_pandas_with_ratings():
    df = pd.DataFrame({"u": [10, 10, 20], "i": ["a", "b", "a"], "r": [4.0, 2.5, 1.0]})
    data = Interactions.from_pandas(df, user_col="u", item_col="i", rating_col="r")
    assert not data.implicit
    assert data.user_map.ids == [10, 20]
    assert data.item_map.ids == ["a", "b"]
    assert triples(data) == Counter({(10, "a", 4.0): 1, (10, "b", 2.5): 1, (20, "a", 1.0): 1})
    assert data.timestamps is None


def test_from_pandas_without_ratings_is_implicit_one():
    df = pd.DataFrame({"user": ["x", "y", "y"], "item": [1, 1, 2]})
    data = Interactions.from_pandas(df)
    assert data.implicit
    # implicit data without a value column: every interaction has value 1
    np.testing.assert_array_equal(data.values, np.ones(3, dtype=np.float32))


def test_from_pandas_integer_timestamps():
    df = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [3, 4], "ts": [881250949, 891717742]})
    data = Interactions.from_pandas(df, rating_col="rating", timestamp_col="ts")
    assert data.timestamps.dtype == np.int64
    assert data.timestamps.tolist() == [881250949, 891717742]


def test_from_pandas_datetime_timestamps():
    df = pd.DataFrame(
        {
            "user": [1, 2],
            "item": [1, 1],
            "when": pd.to_datetime(["1970-01-01T00:00:00", "2021-01-01T00:00:01"]),
        }
    )
    data = Interactions.from_pandas(df, timestamp_col="when")
    # seconds since the Unix epoch: 2021-01-01 is 18628 days after 1970-01-01
    assert data.timestamps.tolist() == [0, 18628 * 86400 + 1]


def test_from_arrays():
    data = Interactions.from_arrays(np.array([3, 1, 3]), ["p", "q", "q"], [1.0, 2.0, 3.0], timestamps=[5, 6, 7])
    assert data.user_map.ids == [3, 1]
    assert data.item_map.ids == ["p", "q"]
    assert triples(data) == Counter({(3, "p", 1.0): 1, (1, "q", 2.0): 1, (3, "q", 3.0): 1})
    assert data.timestamps.tolist() == [5, 6, 7]
    implicit = Interactions.from_arrays([1, 2], [1, 1])
    assert implicit.implicit and implicit.values.tolist() == [1.0, 1.0]


def test_from_arrays_length_mismatch():
    with pytest.raises(DataError, match="length"):
        Interactions.from_arrays([1, 2], [1, 2, 3])


# ---------------------------------------------------------------------- CSR
def test_csr_round_trip():
    m = sp.csr_matrix(np.array([[0.0, 1.5, 0.0, 4.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    data = Interactions.from_csr(m)
    assert data.shape == (3, 4)
    assert len(data) == 3
    # ids default to row and column numbers
    assert triples(data) == Counter({(0, 1, 1.5): 1, (0, 3, 4.0): 1, (1, 0, 2.0): 1})
    back = data.to_csr()
    assert back.shape == m.shape
    np.testing.assert_array_equal(back.toarray(), m.toarray())


def test_from_csr_custom_ids_and_shape_check():
    m = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]]))
    data = Interactions.from_csr(m, user_ids=["a", "b"], item_ids=["x", "y"])
    assert triples(data) == Counter({("a", "x", 1.0): 1, ("b", "y", 2.0): 1})
    with pytest.raises(DataError):
        Interactions.from_csr(m, user_ids=["a", "b", "c"])
    with pytest.raises(DataError):
        Interactions.from_csr(np.eye(2))


# ---------------------------------------------------------------------- duplicates
@pytest.fixture
def dup_frame():
    # (a, x) appears three times: rows 0, 1, 3 with ratings 1, 2, 4 at times 30, 10, 20
    return pd.DataFrame(
        {
            "user": ["a", "a", "b", "a"],
            "item": ["x", "x", "y", "x"],
            "rating": [1.0, 2.0, 3.0, 4.0],
            "ts": [30, 10, 5, 20],
        }
    )


def test_duplicates_error_names_the_pair(dup_frame):
    with pytest.raises(DataError) as info:
        Interactions.from_pandas(dup_frame, rating_col="rating")
    msg = str(info.value)
    assert "'a'" in msg and "'x'" in msg
    assert "row 1" in msg  # the first repeat is at row 1 (0-based)


def test_duplicates_last_by_row_order(dup_frame):
    data = Interactions.from_pandas(dup_frame, rating_col="rating", duplicates="last")
    # without timestamps the last row (row 3, rating 4) wins
    assert triples(data) == Counter({("a", "x", 4.0): 1, ("b", "y", 3.0): 1})


def test_duplicates_last_by_timestamp(dup_frame):
    data = Interactions.from_pandas(dup_frame, rating_col="rating", timestamp_col="ts", duplicates="last")
    # with timestamps the latest one (ts 30, row 0, rating 1) wins
    assert triples(data) == Counter({("a", "x", 1.0): 1, ("b", "y", 3.0): 1})
    df = data.to_pandas().set_index(["user", "item"])
    assert df.loc[("a", "x"), "timestamp"] == 30


def test_duplicates_last_timestamp_tie_keeps_later_row():
    df = pd.DataFrame({"user": [1, 1], "item": [2, 2], "rating": [1.0, 5.0], "ts": [7, 7]})
    data = Interactions.from_pandas(df, rating_col="rating", timestamp_col="ts", duplicates="last")
    assert data.values.tolist() == [5.0]


def test_duplicates_mean(dup_frame):
    data = Interactions.from_pandas(dup_frame, rating_col="rating", timestamp_col="ts", duplicates="mean")
    keys = zip(data.user_map.raw(data.users), data.item_map.raw(data.items), strict=True)
    vals = dict(zip(keys, data.values.tolist(), strict=True))
    # (1 + 2 + 4) / 3 = 7/3
    assert vals[("a", "x")] == pytest.approx(7 / 3, rel=1e-6)
    assert vals[("b", "y")] == 3.0
    # a combined row keeps the latest timestamp of the group (max of 30, 10, 20)
    df = data.to_pandas().set_index(["user", "item"])
    assert df.loc[("a", "x"), "timestamp"] == 30


def test_duplicates_sum(dup_frame):
    data = Interactions.from_pandas(dup_frame, rating_col="rating", duplicates="sum")
    # 1 + 2 + 4 = 7
    assert triples(data) == Counter({("a", "x", 7.0): 1, ("b", "y", 3.0): 1})


def test_duplicates_bad_policy(dup_frame):
    with pytest.raises(ValueError, match="duplicates"):
        Interactions.from_pandas(dup_frame, rating_col="rating", duplicates="first")


# ---------------------------------------------------------------------- validation errors
def test_missing_column():
    df = pd.DataFrame({"user": [1], "item": [2]})
    with pytest.raises(DataError, match="'rating'"):
        Interactions.from_pandas(df, rating_col="rating")
    with pytest.raises(ValueError, match="'uid'"):  # DataError is also a ValueError
        Interactions.from_pandas(df, user_col="uid")


@pytest.mark.parametrize(
    "bad, word",
    [(np.nan, "not a number"), (np.inf, "not finite"), (-np.inf, "not finite"), ("five", "five")],
)
def test_bad_rating_names_row_and_column(bad, word):
    df = pd.DataFrame({"user": [1, 2, 3], "item": [1, 1, 1], "score": [4.0, 3.0, bad]}, dtype=object)
    with pytest.raises(DataError) as info:
        Interactions.from_pandas(df, rating_col="score")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'score'" in msg
    assert "row 2" in msg  # the bad value is in row 2 (0-based)
    assert word in msg


@pytest.mark.parametrize("col", ["user", "item"])
def test_missing_id_names_row_and_column(col):
    df = pd.DataFrame({"user": ["a", "b", "c"], "item": ["x", "y", "z"], "rating": [1, 2, 3]})
    df.loc[1, col] = None
    with pytest.raises(DataError) as info:
        Interactions.from_pandas(df, rating_col="rating")
    msg = str(info.value)
    assert "row 1" in msg and repr(col) in msg


def test_empty_data():
    df = pd.DataFrame({"user": [], "item": [], "rating": []})
    with pytest.raises(DataError, match="empty"):
        Interactions.from_pandas(df, rating_col="rating")
    with pytest.raises(DataError):
        Interactions.from_arrays([], [])


def test_constructor_rejects_out_of_range_and_non_finite(seed_ratings):
    base = Interactions.from_dict(seed_ratings)
    with pytest.raises(DataError, match="user index"):
        Interactions(np.array([5]), np.array([0]), np.array([1.0]), base.user_map, base.item_map)
    with pytest.raises(DataError, match="not finite"):
        Interactions(np.array([0]), np.array([0]), np.array([np.nan]), base.user_map, base.item_map)
    with pytest.raises(DataError, match="length"):
        Interactions(np.array([0, 1]), np.array([0]), np.array([1.0]), base.user_map, base.item_map)


# ---------------------------------------------------------------------- views
def test_describe(seed_ratings):
    text = Interactions.from_dict(seed_ratings).describe()
    # seed dict: 4 ratings, 2 users x 3 items, density 4/6, values 2..5 mean (5+3+2+5)/4 = 3.75
    assert "4 explicit interactions" in text
    assert "2 users" in text and "3 items" in text
    assert "66.6667%" in text
    assert "min 2" in text and "max 5" in text and "mean 3.75" in text


def test_subset_keeps_maps(seed_ratings):
    data = Interactions.from_dict(seed_ratings)
    sub = data.subset(np.array([0, 3]))
    assert len(sub) == 2
    assert sub.user_map is data.user_map and sub.item_map is data.item_map
    assert triples(sub) == Counter({("user1", "item1", 5.0): 1, ("user2", "item3", 5.0): 1})
    mask = data.values > 4
    assert triples(data.subset(mask)) == triples(sub)


def test_compact_drops_unused_ids(seed_ratings):
    data = Interactions.from_dict(seed_ratings)
    sub = data.subset(np.array([2, 3]))  # only user2's ratings: item1, item3
    compact = sub.compact()
    assert compact.user_map.ids == ["user2"]
    assert compact.item_map.ids == ["item1", "item3"]  # relative order kept
    assert triples(compact) == triples(sub)
    assert data.compact() is data  # nothing to drop


def test_repr_and_to_pandas_columns(seed_ratings):
    data = Interactions.from_dict(seed_ratings)
    assert "4 explicit interactions" in repr(data)
    assert list(data.to_pandas().columns) == ["user", "item", "value"]


# ---------------------------------------------------------------------- property: constructors keep triples
pair_ids = st.one_of(st.integers(0, 30), st.text(alphabet="abcxyz", min_size=1, max_size=3))
# ratings that float32 stores exactly, so the comparison can be exact
ratings = st.integers(-20, 20).map(lambda v: v / 4)


@given(st.dictionaries(st.tuples(pair_ids, pair_ids), ratings, min_size=1, max_size=40))
def test_constructors_preserve_triples(table):
    expected = Counter((u, i, float(r)) for (u, i), r in table.items())
    users = [u for u, _ in table]
    items = [i for _, i in table]
    values = list(table.values())

    from_arrays = Interactions.from_arrays(users, items, values)
    assert triples(from_arrays) == expected

    df = pd.DataFrame({"u": pd.Series(users, dtype=object), "i": pd.Series(items, dtype=object), "r": values})
    assert triples(Interactions.from_pandas(df, user_col="u", item_col="i", rating_col="r")) == expected

    nested: dict = {}
    for (u, i), r in table.items():
        nested.setdefault(u, {})[i] = r
    assert triples(Interactions.from_dict(nested)) == expected

    # CSR: ids are the map positions, and the values at those positions are the ratings
    csr = from_arrays.to_csr()
    again = Interactions.from_csr(csr, user_ids=from_arrays.user_map.ids, item_ids=from_arrays.item_map.ids)
    assert triples(again) == expected


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), ratings), min_size=1, max_size=40))
def test_duplicate_policies_property(rows):
    users, items, values = (list(c) for c in zip(*rows, strict=True))
    groups: dict = {}
    for u, i, v in rows:
        groups.setdefault((u, i), []).append(v)
    summed = Interactions.from_arrays(users, items, values, duplicates="sum")
    got = {(u, i): v for u, i, v in triples(summed)}
    assert got.keys() == groups.keys()
    for key, vs in groups.items():
        assert got[key] == pytest.approx(sum(vs), abs=1e-5)
    mean = Interactions.from_arrays(users, items, values, duplicates="mean")
    for u, i, v in triples(mean):
        assert v == pytest.approx(np.mean(groups[(u, i)]), abs=1e-5)
    last = Interactions.from_arrays(users, items, values, duplicates="last")
    assert {(u, i): v for u, i, v in triples(last)} == {k: vs[-1] for k, vs in groups.items()}
    if any(len(vs) > 1 for vs in groups.values()):
        with pytest.raises(DataError):
            Interactions.from_arrays(users, items, values)


def test_csr_order_sorts_by_row_then_column():
    from torchmf.data.csr import csr_order

    # rows 2, 0, 2, 0, 1 / cols 1, 3, 0, 2, 4: by (row, col) the entries are
    # (0,2)=#3, (0,3)=#1, (1,4)=#4, (2,0)=#2, (2,1)=#0 (worked out by hand)
    rows, cols = np.array([2, 0, 2, 0, 1]), np.array([1, 3, 0, 2, 4])
    indptr, order = csr_order(rows, cols, 4, 5)
    assert indptr.tolist() == [0, 2, 3, 5, 5]  # row 3 is empty
    assert order.tolist() == [3, 1, 4, 2, 0]
    with pytest.raises(DataError, match="1 \\(row, column\\) pairs repeat"):
        csr_order(np.array([0, 0]), np.array([1, 1]), 1, 2)


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 200), st.integers(0, 2**32 - 1))
def test_csr_order_both_paths_match_lexsort(n_rows, n_cols, n, seed):
    """The radix path (small shapes) and the scipy path (shapes past 16 bits) both equal np.lexsort."""
    from torchmf.data.csr import csr_order

    rng = np.random.default_rng(seed)
    key = np.unique(rng.integers(0, n_rows * n_cols, n))
    rows, cols = key // n_cols, key % n_cols
    perm = rng.permutation(len(key))
    rows, cols = rows[perm], cols[perm]
    expected = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=n_rows)
    for width in (n_cols, 1 << 17):  # the wide shape forces the scipy path; the pairs stay the same
        indptr, order = csr_order(rows, cols, n_rows, width)
        assert order.tolist() == expected.tolist()
        assert indptr.tolist() == [0, *np.cumsum(counts).tolist()]
    if len(rows):  # a repeated pair is refused on the scipy path too
        with pytest.raises(DataError, match="1 \\(row, column\\) pairs repeat"):
            csr_order(np.r_[rows, rows[:1]], np.r_[cols, cols[:1]], n_rows, 1 << 17)
