"""Hostile and odd input data (issue 15 items 6-7, issue 13 items 3, 7, 8, 9).

Each test names a class of input that was silently misread or badly reported:
compressed and binary files, separator sniffing, blank ids, complex / huge /
date values, absurd headers, pipes and devices, column recognition in
``from_pandas``, id-type hints and :func:`as_interactions`.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import logging
import lzma
import os
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from torchmf import DataError, Interactions, UnknownIdError, read_ratings
from torchmf.cli.common import add_reading_options, read_data
from torchmf.cli.main import main
from torchmf.data.convert import as_interactions
from torchmf.data.idmap import IdMap
from torchmf.data.readers import MAX_COLUMNS
from torchmf.data.textfile import sniff_separator

RATINGS = b"userId,movieId,rating\n1,10,4\n1,11,3.5\n2,10,5\n"
EXPECTED = Counter({(1, 10, 4.0): 1, (1, 11, 3.5): 1, (2, 10, 5.0): 1})


def triples(inter: Interactions) -> Counter:
    df = inter.to_pandas()
    return Counter(zip(df["user"].tolist(), df["item"].tolist(), df["value"].astype(float).tolist(), strict=True))


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def raises_named(path: Path, *fragments: str, **kwargs) -> str:
    """read_ratings(path) raises DataError naming the file and every fragment, with no warnings leaking."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as info:
            read_ratings(path, **kwargs)
    msg = str(info.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def reading_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_reading_options(parser)
    return parser.parse_args(list(argv))


# ---------------------------------------------------------------------- compressed and binary files
def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    "suffix, compress",
    [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress), (".zst", _zstd)],
)
def test_compressed_files_read_transparently(tmp_path, suffix, compress):
    data = read_ratings(write(tmp_path, "ratings.csv" + suffix, compress(RATINGS)))
    assert triples(data) == EXPECTED
    # recognised by content, not by name
    assert triples(read_ratings(write(tmp_path, "misnamed.csv", compress(RATINGS)))) == EXPECTED


def test_zstd_without_zstandard_says_what_to_install(tmp_path, monkeypatch):
    path = write(tmp_path, "ratings.csv.zst", _zstd(RATINGS))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now raises ImportError
    raises_named(path, "zstandard", "pip install")


def test_binary_garbage_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, size=2000, dtype=np.uint8).tobytes()
    raises_named(write(tmp_path, "noise.csv", garbage), "binary")
    # gzip of garbage: decompressed, then refused the same way (not decoded as Latin-1)
    raises_named(write(tmp_path, "noise.csv.gz", gzip.compress(garbage)), "binary")
    # NUL bytes in otherwise readable text
    raises_named(write(tmp_path, "nul.csv", b"1,2,3\n4,\x005,1\n"), "binary", "0x00")


def test_archives_and_corrupt_compression_are_refused(tmp_path):
    import zipfile

    zpath = tmp_path / "ratings.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ratings.csv", RATINGS)
    raises_named(zpath, "zip", "extract")
    truncated = gzip.compress(RATINGS * 50)[:60]
    raises_named(write(tmp_path, "cut.csv.gz", truncated), "gzip")


def test_latin1_and_utf16_text_still_read(tmp_path):
    text = "user,item,rating\nJosé,Café,4\nZoë,Café,2\n"
    assert triples(read_ratings(write(tmp_path, "l1.csv", text.encode("latin-1")))) == Counter(
        {("José", "Café", 4.0): 1, ("Zoë", "Café", 2.0): 1}
    )
    assert triples(read_ratings(write(tmp_path, "u16.csv", text.encode("utf-16")))) == Counter(
        {("José", "Café", 4.0): 1, ("Zoë", "Café", 2.0): 1}
    )


def test_parquet_recognised_by_content(tmp_path):
    path = tmp_path / "ratings.bin"
    pd.DataFrame({"user": ["a", "b"], "item": ["x", "x"], "rating": [4.0, 2.0]}).to_parquet(path)
    assert triples(read_ratings(path)) == Counter({("a", "x", 4.0): 1, ("b", "x", 2.0): 1})


# ---------------------------------------------------------------------- not regular files
def test_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "ratings.csv"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read_ratings(fifo)
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # unblock the reader (today's code opens the pipe and waits for a writer)
        with open(fifo, "wb"):
            pass
        worker.join(timeout=5)
        pytest.fail("reading a named pipe blocked")
    assert isinstance(result[0], DataError) and "not a regular file" in str(result[0])
    assert str(fifo) in str(result[0])


def test_device_and_directory_are_refused(tmp_path):
    raises_named(Path(os.devnull), "not a regular file")
    raises_named(tmp_path, "directory")


# ---------------------------------------------------------------------- separators
def test_semicolon_file_with_commas_in_ids(tmp_path):
    # ids contain commas; the rating column is numeric only when split on ';'
    expected = Counter({("Smith, J", "Film, The", 4.0): 1, ("Doe, A", "Other, An", 3.0): 1})
    with_header = "user;item;rating\nSmith, J;Film, The;4\nDoe, A;Other, An;3\n"
    assert triples(read_ratings(write(tmp_path, "h.csv", with_header))) == expected
    no_header = "Smith, J;Film, The;4\nDoe, A;Other, An;3\n"
    assert triples(read_ratings(write(tmp_path, "n.csv", no_header))) == expected


def test_sniffer_by_consistent_field_counts():
    assert sniff_separator(["a,1;b,2;5", "c,3;d,4;1"]) == ";"
    assert sniff_separator(["1\t2\t3", "4\t5\t6"]) == "\t"
    assert sniff_separator(["1::2::3::4"]) == "::"
    assert sniff_separator(["user item rating", "1 2 3"]) == " "
    assert sniff_separator(['"Doe, J",film,4', '"Roe, K",film,3']) == ","  # quoted commas are not separators
    assert sniff_separator(["John Smith\tx\t5", "Ann Lee\ty\t3"]) == "\t"


def test_cli_uses_the_readers_sniffer(tmp_path):
    # --columns triggers the CLI's field-count check, which used its own first-match sniffer (',')
    path = write(tmp_path, "r.csv", "Smith, J;Film, The;4\nDoe, A;Other, An;3\n")
    data = read_data(str(path), reading_args("--columns", "user,item,rating"))
    assert triples(data) == Counter({("Smith, J", "Film, The", 4.0): 1, ("Doe, A", "Other, An", 3.0): 1})


@pytest.fixture
def cli_logging():
    """Undo the logging set-up ``main()`` does (its handler writes to a captured stderr, propagate off)."""
    logger = logging.getLogger("torchmf")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_wrong_separator_is_named(tmp_path, capsys, cli_logging):
    path = write(tmp_path, "r.csv", "1,10,4\n1,11,3\n2,10,5\n")
    msg = raises_named(path, "wrong separator?", "1 field per line", "looks ','-separated", sep="tab")
    assert "column names" not in msg
    with pytest.raises(DataError, match="wrong separator"):
        read_data(str(path), reading_args("--sep", "tab"))
    # the CLI prints it as one line and exits 2
    assert main(["train", str(path), "--sep", "tab", "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong separator?" in err[0]


def test_unsupported_separator(tmp_path):
    path = write(tmp_path, "r.csv", "1,10,4\n")
    with pytest.raises(DataError, match="not supported"):
        read_ratings(path, sep="ab")
    assert triples(read_ratings(write(tmp_path, "t.tsv", "1\t10\t4\n"), sep="\\t")) == Counter({(1, 10, 4.0): 1})


def test_empty_rating_field_names_the_column(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating\n1,10,4\n1,11,\n2,10,5\n")
    msg = raises_named(path, "line 3", "'rating'", "empty")
    assert "fields" not in msg
    # a line that really is short still says so
    raises_named(write(tmp_path, "s.csv", "user,item,rating\n1,10,4\n1,11\n"), "line 3", "2 fields, expected 3")
    # an empty optional last column is fine when not used
    data = read_ratings(write(tmp_path, "t.csv", "user,item,rating,tag\n1,10,4,\n2,10,5,x\n"))
    assert triples(data) == Counter({(1, 10, 4.0): 1, (2, 10, 5.0): 1})


# ---------------------------------------------------------------------- headers
def test_absurd_header_is_a_clear_error(tmp_path):
    path = write(tmp_path, "wide.csv", "," * 200_000 + "\n1,2,3\n")
    msg = raises_named(path, "line 1", f"more than {MAX_COLUMNS} fields")
    assert "Duplicate" not in msg


def test_repeated_header_name_and_blank_header_name(tmp_path):
    raises_named(write(tmp_path, "d.csv", "user,user,rating\n1,2,3\n"), "'user'", "twice")
    # pandas' index column (empty first header name) reads as before
    data = read_ratings(write(tmp_path, "i.csv", ",user,item,rating\n0,1,10,4\n1,2,10,3\n"))
    assert triples(data) == Counter({(1, 10, 4.0): 1, (2, 10, 3.0): 1})


# ---------------------------------------------------------------------- values in files
def test_blank_id_in_file(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating\n1,10,4\n   ,11,3\n")
    raises_named(path, "line 3", "'user'", "blank")


@pytest.mark.parametrize(
    "value, words",
    [
        ("3+4j", ["'3+4j'", "not a number"]),
        ("1e300", ["'1e300'", "out of range"]),
        ("3e38", ["'3e38'", "out of range"]),
        ("1e400", ["'1e400'", "not finite"]),
        ("2021-01-01", ["'2021-01-01'", "not a number"]),
    ],
)
def test_bad_rating_in_file_names_file_line_column_value(tmp_path, value, words):
    path = write(tmp_path, "r.csv", f"user,item,rating\n1,10,4\n2,11,{value}\n")
    raises_named(path, "line 3", "'rating'", *words)


# ---------------------------------------------------------------------- values in memory
@pytest.mark.parametrize(
    "bad, word",
    [(3 + 4j, "complex"), (1e300, "out of range"), (3e38, "out of range"), (10**400, "not finite")],
)
def test_bad_rating_in_memory_names_row_user_item(bad, word):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=word) as info:
            Interactions.from_arrays(["a", "b"], ["x", "y"], [4.0, bad])
        assert "row 1" in str(info.value) and "user 'b'" in str(info.value) and "item 'y'" in str(info.value)
        with pytest.raises(DataError, match=word) as info:
            Interactions.from_dict({"u1": {"i1": 4.0, "i2": bad}})
        assert "user 'u1'" in str(info.value) and "item 'i2'" in str(info.value)
        df = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": np.array([4.0, bad], dtype=object)})
        with pytest.raises(DataError, match=word):
            Interactions.from_pandas(df, rating_col="rating")


def test_numpy_complex_and_huge_arrays():
    with pytest.raises(DataError, match="complex"):
        Interactions.from_arrays(["a", "b"], ["x", "y"], np.array([1, 3 + 4j]))
    with pytest.raises(DataError, match="out of range"):
        Interactions.from_csr(sp.csr_matrix(np.array([[0.0, 1e300], [1.0, 0.0]])))


def test_datetime_column_as_rating():
    df = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": pd.to_datetime(["2020-01-01", "2021-01-01"])})
    with pytest.raises(DataError, match="dates or times") as info:
        Interactions.from_pandas(df, rating_col="rating")
    assert "'rating'" in str(info.value) and "timestamp_col" in str(info.value)


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_ids_in_memory(blank):
    with pytest.raises(DataError, match="blank") as info:
        Interactions.from_arrays(["a", blank], ["x", "y"], [1.0, 2.0])
    assert "row 1" in str(info.value) and "'user'" in str(info.value)
    with pytest.raises(DataError, match="blank"):
        Interactions.from_dict({"u": {blank: 3.0}})


def test_values_at_the_bound_are_accepted():
    # |value| <= 1e12 is the documented bound (torchmf.data.checks.MAX_ABS_VALUE)
    data = Interactions.from_arrays(["a", "b"], ["x", "y"], [1e12, -1e12])
    np.testing.assert_array_equal(data.values, np.array([1e12, -1e12], dtype=np.float32))  # stored as float32


# ---------------------------------------------------------------------- from_pandas column recognition
def test_from_pandas_recognises_movielens_columns():
    df = pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 11, 10], "rating": [4.0, 3.5, 5.0],
                       "timestamp": [1, 2, 3]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything recognised: nothing to warn about
        data = Interactions.from_pandas(df, user_col="userId", item_col="movieId")
    assert not data.implicit
    assert triples(data) == EXPECTED


@pytest.mark.parametrize("name", ["ratings", "score", "value", "count", "plays"])
def test_from_pandas_recognises_rating_names(name):
    df = pd.DataFrame({"user": [1, 2], "item": [1, 1], name: [2.0, 7.0]})
    data = Interactions.from_pandas(df)
    assert not data.implicit and data.values.tolist() == [2.0, 7.0]


def test_from_pandas_warns_about_unused_numeric_column(caplog, monkeypatch):
    # an in-process CLI run earlier in the session turns propagation off (cli.main._configure_logging)
    monkeypatch.setattr(logging.getLogger("torchmf"), "propagate", True)
    df = pd.DataFrame({"user": [1, 2], "item": [1, 1], "stars_given": [2.0, 5.0]})
    with caplog.at_level(logging.WARNING, logger="torchmf"), pytest.warns(UserWarning, match="stars_given"):
        data = Interactions.from_pandas(df)
    assert data.implicit
    assert any("stars_given" in r.getMessage() for r in caplog.records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Interactions.from_pandas(df, rating_col=None).implicit  # explicit None: silent
        assert not Interactions.from_pandas(df, rating_col="stars_given").implicit


# ---------------------------------------------------------------------- unknown ids
def test_unknown_id_hints_at_the_id_type():
    ints = IdMap([1, 2, 3], "user")
    with pytest.raises(UnknownIdError, match=r"unknown user id '1' \(ids are int; did you mean 1\?\)"):
        ints.index("1")
    with pytest.raises(UnknownIdError, match="did you mean 2"):
        ints.indices(["2"])
    strs = IdMap(["1", "2"], "item")
    with pytest.raises(UnknownIdError, match=r"ids are str; did you mean '1'\?") as info:
        strs.index(1)
    assert info.value.raw_id == 1
    with pytest.raises(UnknownIdError, match=r"did you mean '2'"):
        strs.indices(np.array([2]))
    with pytest.raises(UnknownIdError) as info:
        ints.index("007")  # not the canonical spelling of 7: no hint
    assert "did you mean" not in str(info.value)


# ---------------------------------------------------------------------- as_interactions
def test_as_interactions_accepts_the_usual_forms():
    base = Interactions.from_dict({"u": {"i": 3.0}})
    assert as_interactions(base) is base
    assert triples(as_interactions({"u": {"i": 3.0}})) == Counter({("u", "i", 3.0): 1})
    df = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "rating": [4.0, 3.5, 5.0]})
    assert triples(as_interactions(df, role="validation")) == EXPECTED


@pytest.mark.parametrize(
    "obj, hint",
    [
        (pd.DataFrame({"a": [1], "b": [2]}), "from_pandas(df, user_col=..., item_col=..., rating_col=...)"),
        ([(1, 2, 3.0)], "Interactions.from_arrays"),
        (np.zeros((2, 3)), "Interactions.from_arrays"),
        (sp.csr_matrix(np.eye(2)), "Interactions.from_csr"),
        ("ratings.csv", "read_ratings"),
        (None, "None"),
    ],
)
def test_as_interactions_says_what_to_call(obj, hint):
    with pytest.raises(DataError) as info:
        as_interactions(obj, role="validation")
    assert hint in str(info.value) and "validation" in str(info.value)


# ---------------------------------------------------------------------- round trip through the sniffer
_ID_CHARS = "abcXYZ019 ,;|"


@pytest.mark.parametrize("sep", [";", ",", "\t", "|"])
def test_sniffed_round_trip_with_separators_inside_ids(tmp_path, sep):
    from hypothesis import given
    from hypothesis import strategies as st

    # ids start and end with a letter (the reader strips spaces) and never contain ``sep`` itself
    chars = _ID_CHARS.replace(sep, "")
    ident = st.builds(lambda a, mid, b: a + mid + b, st.sampled_from("abc"), st.text(chars, max_size=6),
                      st.sampled_from("xyz"))
    rows = st.lists(st.tuples(ident, ident, st.integers(1, 5)), min_size=1, max_size=8,
                    unique_by=lambda r: (r[0], r[1]))

    @given(rows=rows, header=st.booleans())
    def check(rows, header):
        text = ("user" + sep + "item" + sep + "rating\n" if header else "") + "".join(
            f"{u}{sep}{i}{sep}{r}\n" for u, i, r in rows
        )
        path = write(tmp_path, "r.txt", text)
        assert triples(read_ratings(path)) == Counter((u, i, float(r)) for u, i, r in rows)

    check()
