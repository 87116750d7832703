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

from torchmf.data.arrow import read_ratings_arrow, wants_arrow
from torchmf.data.columns import find_column
from torchmf.data.idmap import INT_PATTERN
from torchmf.data.interactions import Duplicates, Interactions
from torchmf.data.layout import MAX_COLUMNS, normalise_separator, text_layout
from torchmf.data.textfile import (
    check_regular_file,
    compression,
    head_lines,
    iter_lines,
    peek_lines,
    read_text,
    split_fields,
)
from torchmf.errors import DataError

__all__ = ["MAX_COLUMNS", "normalise_separator", "read_ratings", "read_table"]

_PARQUET_SUFFIXES = (".parquet", ".pq")


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
        A regular file. Parquet (by suffix ``.parquet``/``.pq`` or content) is
        read with pandas' Parquet reader; anything else is delimited text,
        optionally gzip, bzip2, xz or zstd compressed (recognised by content).
        Binary data, archives, pipes and devices raise :class:`DataError`.
    sep : str, optional
        Field separator (see :func:`normalise_separator`); sniffed from the
        first lines when None (``::``, tab, comma, semicolon, ``|`` or
        whitespace: the one giving every line the same number of fields).
    columns : sequence of str, optional
        Names for the file's columns, in order (for files without a header).
    header : bool or "infer"
        Whether the first line holds column names.

    Returns
    -------
    pandas.DataFrame
        Cells as str, empty cells NaN; for text files ``df.attrs["line_numbers"]``
        maps each row to its line in the file.
    """
    path = Path(path)
    check_regular_file(path)
    if path.suffix.lower() in _PARQUET_SUFFIXES or compression(path) == "parquet":
        return _read_parquet(path, columns)

    text = read_text(path)
    lay = text_layout(path, head_lines(text), sep, columns, header)
    if lay.double_colon:
        # pandas' C parser takes single-character separators only; MovieLens'
        # ``::`` files are rewritten to tabs so they parse at C speed.
        text = text.replace("::", "\t")
    sep, columns, n_cols, skip, hint = lay.sep, lay.columns, len(lay.columns), lay.skip, lay.hint
    whitespace = sep == " "  # runs of blanks; a tab is a real separator (C parser, empty fields kept)
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep=r"\s+" if whitespace else sep,
            header=None,
            names=list(columns),
            skiprows=skip,
            dtype=str,
            skip_blank_lines=False,
            keep_default_na=False,
            na_values=[""],
            engine="c",  # r"\s+" included: the C parser treats it as runs of blanks
        )
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            line = int(match.group(2))
            raise DataError(f"{path}: line {line}: {match.group(3)} fields, expected {n_cols}{hint}") from None
        raise DataError(f"{path}: cannot parse ({exc}){hint}") from None
    line_numbers = np.arange(len(df)) + skip + 1
    blank = df.isna().all(axis=1).to_numpy()
    maybe_short = df.iloc[:, -1].isna().to_numpy() & ~blank
    if maybe_short.any():
        _check_short_lines(text, line_numbers[maybe_short], sep, n_cols, path, hint)
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
    (comma, with header) all read with no options, also gzip, bzip2, xz or
    zstd compressed. Without a header the columns are taken as
    ``user, item[, rating[, timestamp]]``. Ratings must be real numbers with
    ``|value| <= 1e12`` (``torchmf.data.checks.MAX_ABS_VALUE``); ids must not
    be blank.

    Uncompressed text and Parquet files of 4 MB or more are streamed column-wise
    by pyarrow when it is installed (:mod:`torchmf.data.arrow`: no Python object
    per row; a 5 M-pair CSV peaks at about 60 % of the pandas reader's memory),
    with the same result and the same errors as the pandas reader used for
    everything else.

    Parameters
    ----------
    path : path-like
        Delimited text (optionally compressed) or Parquet; a regular file.
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
    fast = _read_large(Path(path), sep, columns, header, user_col, item_col, rating_col, timestamp_col, implicit,
                       duplicates)
    if fast is not None:
        return fast
    df = read_table(path, sep=sep, columns=columns, header=header)
    user_col, item_col, rating_col, timestamp_col = _roles(
        [str(c) for c in df.columns], path, user_col, item_col, rating_col, timestamp_col, implicit)
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


def _roles(names: list[str], path: str | os.PathLike, user_col: str | None, item_col: str | None,
           rating_col: str | None, timestamp_col: str | None, implicit: bool
           ) -> tuple[str, str, str | None, str | None]:
    """The user, item, rating and timestamp columns: as given, else recognised among ``names``."""
    user_col = user_col or _find(names, "user", required=True, path=path)
    item_col = item_col or _find(names, "item", required=True, path=path)
    rating_col = None if implicit else rating_col or _find(names, "rating", required=False, path=path)
    timestamp_col = timestamp_col or _find(names, "timestamp", required=False, path=path)
    return user_col, item_col, rating_col, timestamp_col


def _read_large(path: Path, sep: str | None, columns: Sequence[str] | None, header: bool | Literal["infer"],
                user_col: str | None, item_col: str | None, rating_col: str | None, timestamp_col: str | None,
                implicit: bool, duplicates: Duplicates) -> Interactions | None:
    """A large file streamed by pyarrow (:mod:`torchmf.data.arrow`), or None: read it with pandas.

    Files of :data:`~torchmf.data.arrow.STREAM_MIN_BYTES` or more, uncompressed
    text or Parquet, when pyarrow is installed. The layout (separator, columns,
    header) is decided from the file's first lines exactly as :func:`read_table`
    decides it, raising the same errors; anything the pyarrow path does not
    take as it is (see :mod:`torchmf.data.arrow`) is read again by pandas, whose
    checks name the offending line.
    """
    check_regular_file(path)
    if not wants_arrow(path):
        return None
    kind = compression(path)
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        if kind != "parquet":
            return None
        names = list(columns) if columns is not None else _parquet_names(path)
        if names is None:
            return None
        sep, header = None, False
    elif kind is not None:
        return None  # compressed (or Parquet without its suffix): pandas decompresses
    else:
        lay = text_layout(path, peek_lines(path), sep, columns, header)
        if lay.double_colon or lay.first_idx:
            return None
        sep, names, header = lay.sep, lay.columns, lay.header
    roles = _roles(names, path, user_col, item_col, rating_col, timestamp_col, implicit)
    return read_ratings_arrow(path, sep, names, header, *roles, duplicates=duplicates)


def _parquet_names(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception:  # pyarrow raises many types for a bad file; pandas will say what is wrong
        return None


# ---------------------------------------------------------------------- helpers
def _read_parquet(path: Path, columns: Sequence[str] | None) -> pd.DataFrame:
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
    return df  # no line numbers: messages name 0-based rows, as for in-memory data


def _check_short_lines(
    text: str, lines: np.ndarray, sep: str, n_cols: int, path: Path, hint: str
) -> None:
    """Raise for the first of ``lines`` (sorted line numbers) with fewer than ``n_cols`` fields.

    pandas fills a short line's missing fields with NaN just as it does an empty
    last field; only the raw line tells them apart. An empty field is left as
    NaN, for :meth:`Interactions.from_pandas` to name if the column is used.
    """
    wanted = iter(lines.tolist())
    target = next(wanted)
    for number, line in enumerate(iter_lines(text), start=1):
        if number < target:
            continue
        n = len(split_fields(line, sep))
        if n < n_cols:
            raise DataError(f"{path}: line {number}: {n} fields, expected {n_cols}{hint}")
        target = next(wanted, None)
        if target is None:
            return


def _find(names: list[str], role: str, required: bool, path: str | os.PathLike) -> str | None:
    found = find_column(names, role)
    if found is None and required:
        raise DataError(f"{path}: no {role} column among {names}; name it with {role}_col=... (CLI: --{role}-col)")
    return None if found is None else str(found)


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
