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

from torchmf.data.columns import ROLE_NAMES, find_column
from torchmf.data.idmap import INT_PATTERN
from torchmf.data.interactions import Duplicates, Interactions
from torchmf.data.textfile import (
    check_regular_file,
    compression,
    head_lines,
    is_number,
    iter_lines,
    read_text,
    separator_name,
    sniff_separator,
    split_fields,
)
from torchmf.errors import DataError

__all__ = ["MAX_COLUMNS", "normalise_separator", "read_ratings", "read_table"]

_DEFAULT_COLUMNS = {
    2: ("user", "item"),
    3: ("user", "item", "rating"),
    4: ("user", "item", "rating", "timestamp"),
}
MAX_COLUMNS = 1000  # more fields than this on a line: not a ratings file, or the wrong separator
_SEP_NAMES = {
    r"\t": "\t",
    "tab": "\t",
    "space": " ",
    "whitespace": " ",
    r"\s+": " ",
    "comma": ",",
    "semicolon": ";",
    "pipe": "|",
}


def normalise_separator(sep: str | None) -> str | None:
    """``sep`` as the reader uses it: None (sniff), ``"::"``, ``" "`` (runs of blanks) or one character.

    Names are accepted too: ``tab`` or ``\\t``, ``space``/``whitespace``, ``comma``,
    ``semicolon``, ``pipe``. Anything else longer than one character raises
    :class:`DataError`.
    """
    if sep is None:
        return None
    if not isinstance(sep, str) or sep == "":
        raise DataError(f"separator must be a non-empty string, got {sep!r}")
    sep = _SEP_NAMES.get(sep.lower() if sep.isalpha() else sep, sep)
    if sep.isspace():
        return "\t" if sep == "\t" else " "
    if len(sep) > 1 and sep != "::":
        raise DataError(
            f"separator {sep!r} not supported: give one character, '::', 'tab' or 'space'"
        )
    return sep


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
    if path.suffix.lower() in (".parquet", ".pq") or compression(path) == "parquet":
        return _read_parquet(path, columns)

    text = read_text(path)
    head = head_lines(text)
    first_idx = next((i for i, ln in enumerate(head) if ln.strip()), None)
    if first_idx is None:
        raise DataError(f"{path}: the file is empty")
    given = normalise_separator(sep)
    sniffed = sniff_separator(head)
    sep = given or sniffed
    hint = ""
    if given is not None and given != sniffed:
        hint = f" (wrong separator? the file looks {separator_name(sniffed)}-separated)"
    if sep == "::":
        # pandas' C parser takes single-character separators only; MovieLens'
        # ``::`` files are rewritten to tabs so they parse at C speed.
        text = text.replace("::", "\t")
        head = [ln.replace("::", "\t") for ln in head]
        sep = "\t"
    first = head[first_idx]
    line1 = first_idx + 1
    fields = split_fields(first, sep)
    if len(fields) > MAX_COLUMNS:
        raise DataError(
            f"{path}: line {line1} has more than {MAX_COLUMNS} fields ({len(fields):,} counted); a ratings "
            f"file has a few columns such as user, item, rating, timestamp{hint or '; wrong separator?'}"
        )
    if given is not None and len(fields) == 1:
        data_lines = [ln for ln in head[first_idx:] if ln.strip()][:50]
        if all(len(split_fields(ln, sep)) == 1 for ln in data_lines):
            looks = f"the file looks {separator_name(sniffed)}-separated" if hint else "no separator fits"
            raise DataError(
                f"{path}: wrong separator? with separator {separator_name(given)} found 1 field per line; {looks}"
            )
    if header == "infer":
        second = next((ln for ln in head[first_idx + 1 :] if ln.strip()), None)
        header = _looks_like_header(fields, None if second is None else split_fields(second, sep))
    if columns is None:
        if header:
            columns = _header_names(fields, path, line1)
        elif len(fields) in _DEFAULT_COLUMNS:
            columns = list(_DEFAULT_COLUMNS[len(fields)])
        else:
            raise DataError(
                f"{path}: line {line1} has {len(fields)} fields; give column names "
                f"(columns=['user', 'item', 'rating', ...]) to say which is which{hint}"
            )
    else:
        columns = [str(c) for c in columns]
        dup = next((c for c in columns if columns.count(c) > 1), None)
        if dup is not None:
            raise DataError(f"column name {dup!r} given twice in columns={columns}")
    n_cols = len(columns)
    if len(fields) != n_cols:
        raise DataError(
            f"{path}: line {line1} has {len(fields)} fields but {n_cols} column names were given "
            f"({list(columns)}){hint}"
        )
    skip = first_idx + 1 if header else first_idx
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
    df = read_table(path, sep=sep, columns=columns, header=header)
    names = [str(c) for c in df.columns]
    user_col = user_col or _find(names, "user", required=True, path=path)
    item_col = item_col or _find(names, "item", required=True, path=path)
    if not implicit:
        rating_col = rating_col or _find(names, "rating", required=False, path=path)
    else:
        rating_col = None
    timestamp_col = timestamp_col or _find(names, "timestamp", required=False, path=path)
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


def _header_names(fields: list[str], path: Path, line: int) -> list[str]:
    """Column names from a header line: blanks named like pandas does, repeats refused."""
    names = [f.strip() or f"Unnamed: {j}" for j, f in enumerate(fields)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: line {line} (the header): column name {name!r} appears twice")
        seen.add(name)
    return names


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


def _looks_like_header(first: list[str], second: list[str] | None) -> bool:
    known = {n for names in ROLE_NAMES.values() for n in names}
    if any(f.strip().lower() in known for f in first):
        return True
    if any(is_number(f.strip()) for f in first):
        return False
    # all-text first line: a header if the next line has numbers where it had text
    return second is not None and any(is_number(f.strip()) for f in second)


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
