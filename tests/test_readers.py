"""read_ratings on MovieLens-style files written to a temporary folder."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from torchmf import DataError, read_ratings


@pytest.fixture(autouse=True, params=["pandas", "pyarrow"])
def reader(request, monkeypatch):
    """Every test here runs twice: small files (pandas), and with every file streamed by pyarrow where it
    can be (torchmf.data.arrow's size threshold at 0): same results, same errors."""
    if request.param == "pyarrow":
        monkeypatch.setattr("torchmf.data.arrow.STREAM_MIN_BYTES", 0)
    return request.param


def triples(inter) -> Counter:
    df = inter.to_pandas()
    return Counter(zip(df["user"].tolist(), df["item"].tolist(), df["value"].astype(float).tolist(), strict=True))


# The first three rows of ML-100k's u.data (user, item, rating, timestamp)
U_DATA_ROWS = [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (22, 377, 1, 878887116)]
EXPECTED = Counter({(196, 242, 3.0): 1, (186, 302, 3.0): 1, (22, 377, 1.0): 1})


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- formats
def test_u_data_tab_no_header(tmp_path):
    path = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in U_DATA_ROWS))
    data = read_ratings(path)
    assert triples(data) == EXPECTED
    assert data.timestamps.tolist() == [t for *_, t in U_DATA_ROWS]
    assert not data.implicit
    assert data.user_map.ids == [196, 186, 22]  # ints, in order of first appearance


def test_ratings_dat_double_colon(tmp_path):
    path = write(tmp_path, "ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in U_DATA_ROWS))
    data = read_ratings(path)
    assert triples(data) == EXPECTED
    assert data.timestamps.tolist() == [t for *_, t in U_DATA_ROWS]


def test_ratings_csv_with_header(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n7,31,4.5,1260759182\n"
    data = read_ratings(write(tmp_path, "ratings.csv", text))
    assert triples(data) == Counter({(1, 31, 2.5): 1, (1, 1029, 3.0): 1, (7, 31, 4.5): 1})
    assert data.timestamps.tolist() == [1260759144, 1260759179, 1260759182]


def test_three_column_csv(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "u1,i1,5\nu1,i2,3\nu2,i1,2\n"))
    assert triples(data) == Counter({("u1", "i1", 5.0): 1, ("u1", "i2", 3.0): 1, ("u2", "i1", 2.0): 1})
    assert data.timestamps is None
    assert not data.implicit


def test_two_column_csv_is_implicit(tmp_path):
    data = read_ratings(write(tmp_path, "clicks.csv", "1,10\n1,11\n2,10\n"))
    assert data.implicit
    # no rating column: every interaction counts 1
    assert triples(data) == Counter({(1, 10, 1.0): 1, (1, 11, 1.0): 1, (2, 10, 1.0): 1})


def test_implicit_flag_ignores_ratings(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "1,10,5\n2,10,3\n"), implicit=True)
    assert data.implicit and data.values.tolist() == [1.0, 1.0]


def test_blank_lines_are_skipped(tmp_path):
    data = read_ratings(write(tmp_path, "r.tsv", "1\t2\t3\n\n4\t5\t1\n"))
    assert triples(data) == Counter({(1, 2, 3.0): 1, (4, 5, 1.0): 1})


def test_parquet_string_ids(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"user": ["a", "b"], "item": ["x", "x"], "rating": [4.0, 2.0]}).to_parquet(path)
    data = read_ratings(path)
    assert triples(data) == Counter({("a", "x", 4.0): 1, ("b", "x", 2.0): 1})


def test_parquet_integer_ids(tmp_path):
    # the usual Parquet export of ratings.csv: int64 id columns
    path = tmp_path / "ratings.parquet"
    pd.DataFrame(
        {"userId": np.array([1, 1, 7]), "movieId": np.array([31, 1029, 31]), "rating": [2.5, 3.0, 4.5],
         "timestamp": [1260759144, 1260759179, 1260759182]}
    ).to_parquet(path)
    data = read_ratings(path)
    assert triples(data) == Counter({(1, 31, 2.5): 1, (1, 1029, 3.0): 1, (7, 31, 4.5): 1})
    assert data.timestamps.tolist() == [1260759144, 1260759179, 1260759182]


# ---------------------------------------------------------------------- ids
def test_leading_zero_ids_stay_strings(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "007,7,5\n7,008,4\n"))
    # user column holds "007": not all canonical ints, so the whole column stays str
    assert data.user_map.ids == ["007", "7"]
    # item column holds "008": also str; "7" is then the string "7"
    assert data.item_map.ids == ["7", "008"]
    assert data.n_users == 2  # "007" and "7" are two different users


def test_canonical_int_ids_become_int(tmp_path):
    data = read_ratings(write(tmp_path, "r.csv", "7,-3,5\n12,0,4\n"))
    assert data.user_map.ids == [7, 12]
    assert all(isinstance(x, int) for x in data.user_map.ids)
    assert data.item_map.ids == [-3, 0]


def test_column_overrides(tmp_path):
    path = write(tmp_path, "r.csv", "item,who,stars\nx,1,5\ny,2,3\n")
    data = read_ratings(path, user_col="who")
    assert triples(data) == Counter({(1, "x", 5.0): 1, (2, "y", 3.0): 1})


# ---------------------------------------------------------------------- errors
def test_too_few_fields_names_file_and_line(tmp_path):
    path = write(tmp_path, "u.data", "1\t2\t3\t100\n1\t3\t4\t101\n2\t3\n")
    with pytest.raises(DataError) as info:
        read_ratings(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 3" in msg


def test_too_many_fields_names_file_and_line(tmp_path):
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,100\n1,3,4,101\n2,3,4,5,6\n")
    with pytest.raises(DataError) as info:
        read_ratings(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 4" in msg  # line 1 is the header


def test_too_many_fields_without_header(tmp_path):
    path = write(tmp_path, "r.csv", "1,2,3\n1,3,4,5\n")
    with pytest.raises(DataError, match="line 2"):
        read_ratings(path)


def test_non_numeric_rating_names_file_and_line(tmp_path):
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating\n1,2,3\n1,3,4\n2,3,five\n")
    with pytest.raises(DataError) as info:
        read_ratings(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "'five'" in msg
    assert "'rating'" in msg
    # "five" is on line 4 of the file (line 1 is the header)
    assert "line 4" in msg


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.csv", "")
    with pytest.raises(DataError, match="empty") as info:
        read_ratings(path)
    assert str(path) in str(info.value)
    blank = write(tmp_path, "blank.csv", "\n  \n")
    with pytest.raises(DataError, match="empty"):
        read_ratings(blank)


def test_header_only_file(tmp_path):
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating\n")
    with pytest.raises(DataError) as info:
        read_ratings(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="no such file") as info:
        read_ratings(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(DataError, match="directory") as info:
        read_ratings(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_no_user_column(tmp_path):
    path = write(tmp_path, "r.csv", "movieId,rating,foo\n1,2,3\n")
    with pytest.raises(DataError, match="user") as info:
        read_ratings(path)
    assert str(path) in str(info.value)


def test_duplicate_pair_in_file_names_line(tmp_path):
    path = write(tmp_path, "u.data", "1\t2\t3\t100\n1\t3\t4\t101\n1\t2\t5\t102\n")
    with pytest.raises(DataError) as info:
        read_ratings(path)
    assert str(path) in str(info.value)
    assert "3" in str(info.value)
    # duplicates="last" keeps the latest timestamp (102, rating 5)
    data = read_ratings(path, duplicates="last")
    assert triples(data) == Counter({(1, 2, 5.0): 1, (1, 3, 4.0): 1})
