"""Files read by pyarrow (torchmf.data.arrow) give exactly what the pandas reader gives.

The pyarrow path takes the layout (separator, column names, header) as the
pandas reader settles it from the file's head, so each test passes the same
explicit choices to both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import torchmf.data.readers as readers
from torchmf import DataError, read_ratings
from torchmf.data.arrow import read_ratings_arrow

ROLES = {"user_col": "user", "item_col": "item"}


def both(path, sep, names, header, rating_col=None, timestamp_col=None, duplicates="error"):
    roles = {**ROLES, "rating_col": rating_col, "timestamp_col": timestamp_col}
    fast = read_ratings_arrow(path, sep, names, header, duplicates=duplicates, **roles)
    assert fast is not None, "the pyarrow path handed over"
    slow = read_ratings(path, sep=sep, columns=names, header=header, implicit=rating_col is None,
                        duplicates=duplicates, **roles)
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
    keep = np.sort(np.unique(users * 100 + items, return_index=True)[1])
    return users[keep], items[keep], rng.integers(1, 6, len(keep)), rng.integers(10**8, 10**9, len(keep))


NAMES4 = ["user", "item", "rating", "timestamp"]


def test_tab_file_like_movielens(tmp_path, rows):
    u, i, r, t = rows
    path = write(tmp_path, "u.data", "".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in zip(u, i, r, t, strict=True)))
    fast, slow = both(path, "\t", NAMES4, False, "rating", "timestamp")
    assert_same(fast, slow)
    assert fast.timestamps is not None and fast.user_map._index.dtype == np.int64


def test_csv_with_header_and_float_ratings(tmp_path, rows):
    u, i, r, t = rows
    body = "".join(f"{a},{b},{c / 2},{d}\r\n" for a, b, c, d in zip(u, i, r, t, strict=True))
    path = write(tmp_path, "ratings.csv", "user,item,rating,timestamp\r\n" + body)
    assert_same(*both(path, ",", NAMES4, True, "rating", "timestamp"))


def test_string_ids_stay_strings(tmp_path):
    # "007" is not the integer 7; spaces around ids are stripped; an id past int64 stays a string
    lines = ["user,item,rating", "a, 007,4", " b,7,3", "a,7 ,5", "c,x y,1", "99999999999999999999,7,2", "b,007,2.5"]
    path = write(tmp_path, "mixed.csv", "\n".join(lines) + "\n")
    fast, slow = both(path, ",", ["user", "item", "rating"], True, "rating")
    assert_same(fast, slow)
    assert fast.item_map.ids == ["007", "7", "x y"]


def test_implicit_pairs_and_duplicate_policies(tmp_path):
    path = write(tmp_path, "clicks.txt", "".join(f"{u};{i}\n" for u, i in [(1, 2), (3, 2), (1, 2), (2, 9), (3, 2)]))
    for policy in ("sum", "mean", "last"):
        assert_same(*both(path, ";", ["user", "item"], False, duplicates=policy))
    # a repeated pair under "error": the pandas path names the line
    assert read_ratings_arrow(path, ";", ["user", "item"], False, **ROLES) is None


def test_space_separated_runs(tmp_path):
    path = write(tmp_path, "spaces.txt", "1 2 5\n3 4 1\n1 4 2\n")
    assert_same(*both(path, " ", ["user", "item", "rating"], False, "rating"))
    runs = write(tmp_path, "runs.txt", "1 2 5\n3  4 1\n")  # a run of blanks: pandas' split, not pyarrow's
    assert read_ratings_arrow(runs, " ", ["user", "item", "rating"], False, rating_col="rating", **ROLES) is None


@pytest.mark.parametrize("text", ["1,2,3\n4,5\n6,7,8\n", "1,2,3\n4,5,x\n", "1,2,3\n,5,4\n", "1,2,3\n 2 ,5,1e99\n"])
def test_problems_hand_over_to_pandas(tmp_path, text):
    # a short line, a non-number, a missing id, a value out of range: pandas words each with its line
    path = write(tmp_path, "bad.csv", text)
    assert read_ratings_arrow(path, ",", ["user", "item", "rating"], False, rating_col="rating", **ROLES) is None


def test_parquet_typed_and_string_ids(tmp_path, rows):
    u, i, r, t = rows
    df = pd.DataFrame({"user": u.astype(np.int32), "item": [f"i{x}" for x in i], "rating": r.astype(np.float32),
                       "timestamp": t})
    path = tmp_path / "r.parquet"
    df.to_parquet(path)
    fast, slow = both(path, None, None, False, "rating", "timestamp")
    assert_same(fast, slow)
    assert fast.user_map._index.dtype == np.int32  # as pandas types the column


def test_read_ratings_streams_large_files(tmp_path, rows, monkeypatch):
    # read_ratings itself takes the pyarrow path for files of STREAM_MIN_BYTES or more (0 here), deciding the
    # layout from the head as the pandas reader does; the result is what pandas builds for the same file
    u, i, r, t = rows
    body = "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in zip(u, i, r, t, strict=True))
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n" + body)
    slow = read_ratings(path)  # a few kB: pandas
    served = []
    monkeypatch.setattr("torchmf.data.arrow.STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(readers, "read_ratings_arrow",
                        lambda *a, **k: served.append(read_ratings_arrow(*a, **k)) or served[-1])
    fast = read_ratings(path)
    assert len(served) == 1 and served[0] is fast
    assert_same(fast, slow)


def test_streamed_binary_data_is_refused_by_name(tmp_path, monkeypatch):
    # a NUL byte inside a field: pyarrow would take it as text; the pandas path's binary-data error is kept
    monkeypatch.setattr("torchmf.data.arrow.STREAM_MIN_BYTES", 0)
    path = tmp_path / "bin.csv"
    path.write_bytes(b"1,2\n3,4\x00\n5,6\n")
    assert read_ratings_arrow(path, ",", ["user", "item"], False, **ROLES) is None
    with pytest.raises(DataError, match="binary data"):
        read_ratings(path)
