"""Read ratings from delimited text (CSV, TSV, ``::``) and Parquet files."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from torchmf.data.arrow import arrow_columns, interactions_from_arrow, wants_arrow
from torchmf.data.idmap import INT_PATTERN
from torchmf.data.interactions import Duplicates, Interactions
from torchmf.errors import DataError

__all__ = ["read_ratings", "read_table"]

# Header names we recognise, lower-cased, by role.
_ROLE_NAMES = {
    "user": ("user", "user_id", "userid", "uid", "users", "customer", "customer_id", "visitor", "visitorid"),
    "item": (
        "item",
        "item_id",
        "itemid",
        "iid",
        "movie",
        "movie_id",
        "movieid",
        "product",
        "product_id",
        "productid",
        "track",
        "track_id",
        "artist",
        "artist_id",
        "book",
        "isbn",
        "items",
    ),
    "rating": ("rating", "ratings", "score", "value", "stars", "count", "plays", "playcount", "weight"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime", "unix_time"),
}
_DEFAULT_COLUMNS = {
    2: ("user", "item"),
    3: ("user", "item", "rating"),
    4: ("user", "item", "rating", "timestamp"),
}


def read_table(
    path: str | os.PathLike,
    sep: str | None = None,
    columns: Sequence[str] | None = None,
    header: bool | Literal["infer"] = "infer",
) -> pd.DataFrame:
    """Read a ratings file into a DataFrame with string-or-int id columns.

    Parameters
    ----------
    path : path-like
        ``.parquet``/``.pq`` files are read with pandas' Parquet reader; anything
        else is delimited text.
    sep : str, optional
        Field separator; sniffed from the first line when None (``::``, tab,
        comma, semicolon, ``|`` or whitespace).
    columns : sequence of str, optional
        Names for the file's columns, in order (for files without a header).
    header : bool or "infer"
        Whether the first line holds column names.

    Returns
    -------
    pandas.DataFrame
        ``df.attrs["line_numbers"]`` maps each row to its line in the file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a ratings file")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except ImportError as exc:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'torchmf[parquet]')") from exc
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        if columns is not None:
            if len(columns) != df.shape[1]:
                raise DataError(f"{path}: {len(columns)} column names given for {df.shape[1]} columns")
            df.columns = list(columns)
        df.attrs["line_numbers"] = np.arange(len(df))
        return df

    text = _read_text(path)
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise DataError(f"{path}: the file is empty")
    if sep is None:
        sep = _sniff(first)
    if sep == "::":
        # pandas' C parser takes single-character separators only; MovieLens'
        # ``::`` files are rewritten to tabs so they parse at C speed.
        text = text.replace("::", "\t")
        lines = text.splitlines()
        first = first.replace("::", "\t")
        sep = "\t"
    second = next((ln for ln in lines[lines.index(first) + 1 :] if ln.strip()), None) if header == "infer" else None
    columns, header = _columns_and_header(path, first, second, sep, columns, header)
    n_cols = len(columns)
    whitespace = sep.isspace() if sep else False
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep=r"\s+" if whitespace else sep,
            header=None,
            names=list(columns),
            skiprows=1 if header else 0,
            dtype=str,
            skip_blank_lines=False,
            keep_default_na=False,
            na_values=[""],
            engine="c" if not whitespace else "python",
        )
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            line = int(match.group(2))
            raise DataError(f"{path}: line {line}: {match.group(3)} fields, expected {n_cols}") from None
        raise DataError(f"{path}: cannot parse ({exc})") from None
    offset = 2 if header else 1
    line_numbers = np.arange(len(df)) + offset
    blank = df.isna().all(axis=1).to_numpy()
    short = df.iloc[:, -1].isna().to_numpy() & ~blank
    if short.any():
        row = int(np.flatnonzero(short)[0])
        present = int(df.iloc[row].notna().sum())
        raise DataError(f"{path}: line {line_numbers[row]}: {present} fields, expected {n_cols}")
    df = df.loc[~blank].reset_index(drop=True)
    df.attrs["line_numbers"] = line_numbers[~blank]
    return df


def read_ratings(
    path: str | os.PathLike,
    sep: str | None = None,
    columns: Sequence[str] | None = None,
    header: bool | Literal["infer"] = "infer",
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    implicit: bool = False,
    duplicates: Duplicates = "error",
) -> Interactions:
    """Read a ratings or interactions file into :class:`Interactions`.

    MovieLens' ``u.data`` (tab), ``ratings.dat`` (``::``) and ``ratings.csv``
    (comma, with header) all read with no options. Without a header the
    columns are taken as ``user, item[, rating[, timestamp]]``.

    Parameters
    ----------
    path : path-like
        Delimited text or Parquet.
    sep, columns, header
        See :func:`read_table`.
    user_col, item_col, rating_col, timestamp_col : str, optional
        Column names to use; by default recognised by name (``userId``,
        ``movie_id``, ``rating``, ``timestamp``, ...).
    implicit : bool
        Ignore any rating column and treat every row as one interaction.
    duplicates : {"error", "last", "mean", "sum"}
        Policy for repeated (user, item) pairs.

    Returns
    -------
    Interactions
    """
    # large files: column-wise with pyarrow, no Python object per row (torchmf.data.arrow)
    table = _arrow_table(Path(path), sep, columns, header)
    if table is None:
        df = read_table(path, sep=sep, columns=columns, header=header)
        names = [str(c) for c in df.columns]
    else:
        names = list(table)
    user_col = user_col or _find(names, "user", required=True, path=path)
    item_col = item_col or _find(names, "item", required=True, path=path)
    if not implicit:
        rating_col = rating_col or _find(names, "rating", required=False, path=path)
    else:
        rating_col = None
    timestamp_col = timestamp_col or _find(names, "timestamp", required=False, path=path)
    if table is not None:
        wanted = [c for c in (user_col, item_col, rating_col, timestamp_col) if c is not None]
        if len(set(wanted)) == len(wanted) and all(c in table for c in wanted):
            data = interactions_from_arrow(table, user_col, item_col, rating_col, timestamp_col, duplicates, str(path))
            if data is not None:
                return data
        del table  # something unusual: the pandas reader below words the error with its line
        df = read_table(path, sep=sep, columns=columns, header=header)
    for col in (user_col, item_col):
        if col in df.columns:
            df[col] = _parse_ids(df[col])
    return Interactions.from_pandas(
        df,
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        timestamp_col=timestamp_col,
        duplicates=duplicates,
        source=str(path),
    )


# ---------------------------------------------------------------------- helpers
def _columns_and_header(
    path: str | os.PathLike, first: str, second: str | None, sep: str, columns: Sequence[str] | None,
    header: bool | Literal["infer"],
) -> tuple[list[str], bool]:
    """Column names and whether line 1 is a header, from the first two non-blank lines."""
    fields = _split(first, sep)
    if header == "infer":
        header = _looks_like_header(fields, None if second is None else _split(second, sep))
    if columns is None:
        if header:
            columns = [f.strip() for f in fields]
        elif len(fields) in _DEFAULT_COLUMNS:
            columns = list(_DEFAULT_COLUMNS[len(fields)])
        else:
            raise DataError(
                f"{path}: line 1 has {len(fields)} fields; give column names "
                "(columns=['user', 'item', 'rating', ...]) to say which is which"
            )
    if len(fields) != len(columns):
        raise DataError(
            f"{path}: line 1 has {len(fields)} fields but {len(columns)} column names were given ({list(columns)})"
        )
    return list(columns), bool(header)


def _arrow_table(
    path: Path, sep: str | None, columns: Sequence[str] | None, header: bool | Literal["infer"]
) -> dict | None:
    """A large file's columns read by pyarrow (:mod:`torchmf.data.arrow`), or None for the pandas path."""
    if not wants_arrow(path):
        return None
    if path.suffix.lower() in (".parquet", ".pq"):
        return arrow_columns(path, None, None if columns is None else list(columns), False)
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    try:
        lines = head.decode("utf-8").splitlines()
    except UnicodeDecodeError:  # maybe a multi-byte character cut at the end: let pandas decide
        return None
    if len(lines) < 3 or not lines[0].strip():
        return None
    first, second = lines[0], next((ln for ln in lines[1:-1] if ln.strip()), None)
    sep = _sniff(first) if sep is None else sep
    if sep == "::" or (sep.isspace() and sep not in "\t "):
        return None
    names, has_header = _columns_and_header(path, first, second, sep, columns, header)
    return arrow_columns(path, sep, names, has_header)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _sniff(line: str) -> str:
    if "::" in line:
        return "::"
    for cand in ("\t", ",", ";", "|"):
        if cand in line:
            return cand
    return " "


def _split(line: str, sep: str) -> list[str]:
    return line.split() if sep.isspace() else line.split(sep)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_like_header(first: list[str], second: list[str] | None) -> bool:
    known = {n for names in _ROLE_NAMES.values() for n in names}
    if any(f.strip().lower() in known for f in first):
        return True
    if any(_is_number(f.strip()) for f in first):
        return False
    # all-text first line: a header if the next line has numbers where it had text
    return second is not None and any(_is_number(f.strip()) for f in second)


def _find(names: list[str], role: str, required: bool, path: str | os.PathLike) -> str | None:
    lowered = {n.lower(): n for n in names}
    for cand in _ROLE_NAMES[role]:
        if cand in lowered:
            return lowered[cand]
    if required:
        raise DataError(f"{path}: no {role} column among {names}; name it with {role}_col=... (CLI: --{role}-col)")
    return None


def _parse_ids(col: pd.Series) -> pd.Series:
    """Ids written as canonical integers become int64; anything else stays str.

    "007" stays a string so it never collides with the id 7. Columns that are
    already typed (Parquet) are returned unchanged.
    """
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return col
    stripped = col.str.strip()
    if stripped.notna().all() and stripped.str.fullmatch(INT_PATTERN).all():
        try:
            return stripped.astype(np.int64)
        except (OverflowError, ValueError):
            return stripped
    return stripped
