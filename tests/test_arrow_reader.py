"""Large files read by pyarrow (torchmf.data.arrow) give exactly what the pandas reader gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from torchmf import read_ratings
from torchmf.data import arrow, readers
from torchmf.errors import DataError


def both(monkeypatch, path, **kw):
    """read_ratings through pyarrow (every size qualifies) and through pandas (pyarrow off)."""
    with monkeypatch.context() as mp:
        mp.setattr(arrow, "STREAM_MIN_BYTES", 0)
        calls = []
        real = arrow.interactions_from_arrow
        mp.setattr(readers, "interactions_from_arrow", lambda *a: calls.append(1) or real(*a))
        fast = read_ratings(path, **kw)
        assert calls, "the pyarrow path was not taken"
    with monkeypatch.context() as mp:
        mp.setattr(readers, "wants_arrow", lambda path: False)
        slow = read_ratings(path, **kw)
    return fast, slow


def assert_same(a, b):
    for name in ("users", "items", "values"):
        got, want = getattr(a, name), getattr(b, name)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    if b.timestamps is None:
        assert a.timestamps is None
    else:
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert a.implicit == b.implicit
    for m, n in ((a.user_map, b.user_map), (a.item_map, b.item_map)):
        assert m == n
        assert m._index.dtype == n._index.dtype
        assert m.ids == n.ids


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    users = rng.integers(1, 40, 300)
    items = rng.integers(1, 60, 300)
    keep = np.unique(users * 100 + items, return_index=True)[1]
    keep = np.sort(keep)
    return users[keep], items[keep], rng.integers(1, 6, len(keep)), rng.integers(10**8, 10**9, len(keep))


def test_tab_file_like_movielens(tmp_path, monkeypatch, rows):
    u, i, r, t = rows
    path = write(tmp_path, "u.data", "".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in zip(u, i, r, t, strict=True)))
    fast, slow = both(monkeypatch, path)
    assert_same(fast, slow)
    assert fast.timestamps is not None and fast.user_map._index.dtype == np.int64


def test_csv_with_header_and_float_ratings(tmp_path, monkeypatch, rows):
    u, i, r, t = rows
    body = "".join(f"{a},{b},{c / 2},{d}\r\n" for a, b, c, d in zip(u, i, r, t, strict=True))
    fast, slow = both(monkeypatch, write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\r\n" + body))
    assert_same(fast, slow)


def test_string_ids_stay_strings(tmp_path, monkeypatch):
    # "007" is not the integer 7; spaces around ids are stripped; an id past int64 stays a string
    lines = ["user,item,rating", "a, 007,4", " b,7,3", "a,7 ,5", "c,x y,1", "99999999999999999999,7,2", "b,007,2.5"]
    fast, slow = both(monkeypatch, write(tmp_path, "mixed.csv", "\n".join(lines) + "\n"))
    assert_same(fast, slow)
    assert fast.item_map.ids == ["007", "7", "x y"]


def test_implicit_two_columns_and_duplicate_policies(tmp_path, monkeypatch):
    text = "".join(f"{u};{i}\n" for u, i in [(1, 2), (3, 2), (1, 2), (2, 9), (3, 2), (1, 5)])
    path = write(tmp_path, "clicks.txt", text)
    for policy in ("sum", "mean", "last"):
        fast, slow = both(monkeypatch, path, duplicates=policy)
        assert_same(fast, slow)
    with monkeypatch.context() as mp:
        mp.setattr(arrow, "STREAM_MIN_BYTES", 0)
        with pytest.raises(DataError, match="line 3: repeated"):  # the pandas path words it
            read_ratings(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,2,3\n4,5\n6,7,8\n", "line 2"),
        ("1,2,3\n4,5,x\n6,7,8\n", "line 2.*not a number"),
        ("1,2,3\n,5,4\n6,7,8\n", "missing id"),
    ],
)
def test_problems_are_reported_by_line(tmp_path, monkeypatch, text, message):
    path = write(tmp_path, "bad.csv", text)
    with monkeypatch.context() as mp:
        mp.setattr(arrow, "STREAM_MIN_BYTES", 0)
        with pytest.raises(DataError, match=message):
            read_ratings(path)


def test_parquet_typed_and_string_ids(tmp_path, monkeypatch, rows):
    u, i, r, t = rows
    df = pd.DataFrame({"user_id": u.astype(np.int32), "item": [f"i{x}" for x in i], "rating": r.astype(np.float32),
                       "timestamp": t})
    path = tmp_path / "r.parquet"
    df.to_parquet(path)
    fast, slow = both(monkeypatch, path)
    assert_same(fast, slow)
    assert fast.user_map._index.dtype == np.int32  # as pandas types the column


def test_whitespace_separated_fields_match_pandas_runs(tmp_path, monkeypatch):
    # pandas splits tab/space files on runs of whitespace; pyarrow takes the same fields or hands over
    fast, slow = both(monkeypatch, write(tmp_path, "spaces.txt", "1 2 5\n3 4 1\n1 4 2\n"))
    assert_same(fast, slow)
    path = write(tmp_path, "runs.txt", "1\t2\t5\n3\t\t4\t1\n1 4\t2\n")  # a run of tabs, a space inside
    with monkeypatch.context() as mp:
        mp.setattr(readers, "wants_arrow", lambda path: False)
        slow = read_ratings(path)
    with monkeypatch.context() as mp:
        mp.setattr(arrow, "STREAM_MIN_BYTES", 0)
        assert_same(read_ratings(path), slow)
