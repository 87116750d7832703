"""Checks of raw columns (ids, ratings, timestamps) with messages naming where the bad value is.

Every message names the source (a file or "data frame"), the line (files) or row
(in-memory data), the column and the value, plus the user and item of the row
when they are known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from torchmf.errors import DataError

__all__ = [
    "MAX_ABS_TIMESTAMP",
    "MAX_ABS_VALUE",
    "check_ids",
    "check_values",
    "numeric_column",
    "show",
    "timestamp_column",
    "where",
]

#: Largest accepted ``|rating|``. Values are stored as float32 (max 3.4e38); models square
#: residuals and sum them over up to ~1e9 interactions, so 1e12 keeps ``value**2 * 1e9``
#: (1e33) finite with headroom, while covering any real rating, count or play time.
MAX_ABS_VALUE = 1e12
#: Largest accepted ``|timestamp|``: it must fit int64 (seconds, or even nanoseconds).
MAX_ABS_TIMESTAMP = 9.2e18


def show(value: Any) -> str:
    """repr of a value as the user wrote it: numpy scalars shown as plain Python."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} characters)"


def where(df: pd.DataFrame, pos: int, ids: tuple[str, str] | None = None) -> str:
    """ "line N" (a file) or "row N" (in-memory data) of row ``pos``, with its user and item when ``ids``
    names their columns."""
    lines = df.attrs.get("line_numbers")
    loc = f"line {int(lines[pos])}" if lines is not None else f"row {pos}"
    if ids is not None:
        user, item = (show(df[c].iloc[pos]) for c in ids)
        loc += f" (user {user}, item {item})"
    return loc


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_ids(col: pd.Series, name: str, source: str, df: pd.DataFrame) -> None:
    """Refuse missing ids and blank string ids (``""``, ``"   "``) in one id column."""
    missing = pd.isna(col).to_numpy()
    if missing.any():
        what = "is empty (no id)" if df.attrs.get("line_numbers") is not None else "missing id"
        raise DataError(f"{source}: {where(df, _first(missing))}: column {name!r}: {what}")
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return
    # look at the distinct values only: cheap even for tens of millions of rows
    blanks = [v for v in pd.unique(col.to_numpy()) if isinstance(v, str) and not v.strip()]
    if blanks:
        pos = _first(col.isin(blanks).to_numpy())
        raise DataError(
            f"{source}: {where(df, pos)}: column {name!r} is blank (no id); "
            "every row needs a user and an item id"
        )


def numeric_column(
    col: pd.Series,
    name: str,
    source: str,
    df: pd.DataFrame,
    ids: tuple[str, str] | None = None,
    bound: float = MAX_ABS_VALUE,
) -> np.ndarray:
    """A column as finite float64 within ``[-bound, bound]``.

    Parameters
    ----------
    col : pandas.Series, shape (n,)
    name, source : str
        Column and source names for messages.
    df : pandas.DataFrame
        The frame holding ``col`` (for line numbers and the row's ids).
    ids : (user_col, item_col), optional
        Columns whose values name the row in messages.
    bound : float
        Largest accepted absolute value.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)

    Raises
    ------
    DataError
        Dates, complex numbers, empty cells, text, non-finite or too large values.
    """
    if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        raise DataError(
            f"{source}: column {name!r} holds dates or times ({col.dtype}), not numbers; "
            "pass it as timestamp_col (CLI: --timestamp-col) and name the rating column, or none for implicit data"
        )
    empty = pd.isna(col).to_numpy()
    if empty.any() and df.attrs.get("line_numbers") is not None:
        raise DataError(f"{source}: {where(df, _first(empty), ids)}: column {name!r} is empty")
    with np.errstate(all="ignore"):
        try:
            converted = pd.to_numeric(col, errors="coerce")
        except (OverflowError, TypeError, ValueError):  # e.g. Python ints beyond float64
            converted = pd.Series([_to_float(v) for v in col.tolist()], index=col.index, dtype=np.float64)
        raw = converted.to_numpy()
        if np.iscomplexobj(raw):
            imag = np.flatnonzero(np.imag(raw) != 0)
            pos = int(imag[0]) if len(imag) else 0
            raise DataError(
                f"{source}: {where(df, pos, ids)}: column {name!r}: {show(col.iloc[pos])} is a complex number, "
                "not a real value"
            )
        bad = converted.isna().to_numpy()
        if bad.any():
            pos = _first(bad)
            raise DataError(
                f"{source}: {where(df, pos, ids)}: column {name!r}: {show(col.iloc[pos])} is not a number"
            )
        arr = converted.to_numpy(dtype=np.float64)
        inf = ~np.isfinite(arr)
        if inf.any():
            pos = _first(inf)
            raise DataError(f"{source}: {where(df, pos, ids)}: column {name!r}: {show(col.iloc[pos])} is not finite")
        big = np.abs(arr) > bound
    if big.any():
        pos = _first(big)
        raise DataError(
            f"{source}: {where(df, pos, ids)}: column {name!r}: {show(col.iloc[pos])} is out of range "
            f"(|value| must be at most {bound:g})"
        )
    return arr


def _to_float(v: Any) -> float:
    """float(v); inf when too large, NaN when not a number."""
    try:
        return float(v)
    except OverflowError:
        return float("inf")
    except (TypeError, ValueError):
        return float("nan")


def timestamp_column(
    col: pd.Series, name: str, source: str, df: pd.DataFrame, ids: tuple[str, str] | None = None
) -> np.ndarray:
    """Timestamps as int64 seconds (datetimes converted) or as given (numbers), shape (n,)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        if col.isna().any():
            raise DataError(f"{source}: {where(df, _first(col.isna().to_numpy()), ids)}: column {name!r}: "
                            "missing timestamp")
        return (col.astype("datetime64[ns]").astype(np.int64) // 10**9).to_numpy()
    arr = numeric_column(col, name, source, df, ids, bound=MAX_ABS_TIMESTAMP)
    return arr.astype(np.int64)


_CHECK_BLOCK = 1 << 20


def _all_fine(values: np.ndarray) -> bool:
    """Whether every value of a real numeric array is finite and within range, a block at a time."""
    flat = values.reshape(-1)
    with np.errstate(all="ignore"):
        for start in range(0, flat.size, _CHECK_BLOCK):
            arr = flat[start : start + _CHECK_BLOCK].astype(np.float64)
            if not (np.isfinite(arr).all() and (np.abs(arr) <= MAX_ABS_VALUE).all()):
                return False
    return True


def check_values(values: np.ndarray, describe: Any) -> None:
    """Refuse non-finite or out-of-range values; ``describe(pos)`` names entry ``pos`` in the message."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu" and values.size > _CHECK_BLOCK \
            and _all_fine(values):
        return  # large and clean: checked without float64 copies of the whole array (50 M values: 0.9 GB)
    if np.iscomplexobj(values):
        raise DataError(f"{describe(0)}: values are complex numbers, not real values")
    with np.errstate(all="ignore"):
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # objects: complex, text, huge ints
            arr = np.array([_to_float(v) for v in np.asarray(values, dtype=object).ravel()])
    bad = ~np.isfinite(arr)
    if bad.any():
        pos = _first(bad)
        orig = np.asarray(values).ravel()[pos]
        real = not isinstance(orig, (complex, np.complexfloating, str, bytes))
        what = "is not finite" if real else "is not a real number"
        raise DataError(f"{describe(pos)}: value {show(orig)} {what}")
    big = np.abs(arr) > MAX_ABS_VALUE
    if big.any():
        pos = _first(big)
        raise DataError(f"{describe(pos)}: value {arr[pos]:g} is out of range (|value| must be at most "
                        f"{MAX_ABS_VALUE:g})")
