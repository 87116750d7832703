"""Column names torchmf recognises by role, shared by the file readers and ``from_pandas``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd

from torchmf.errors import DataError

__all__ = ["ROLE_NAMES", "find_column", "role_column", "warn_unused"]

log = logging.getLogger(__name__)

# Header names we recognise, lower-cased, by role. One list for files and data frames.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
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


def find_column(names: Sequence[object], role: str) -> object | None:
    """The first of ``names`` recognised as ``role`` (case-insensitive), or None.

    Parameters
    ----------
    names : sequence
        Column labels (a file's header or a DataFrame's columns); non-strings never match.
    role : {"user", "item", "rating", "timestamp"}

    Returns
    -------
    The matching label exactly as given, or None.
    """
    lowered: dict[str, object] = {}
    for n in names:
        if isinstance(n, str):
            lowered.setdefault(n.strip().lower(), n)
    for cand in ROLE_NAMES[role]:
        if cand in lowered:
            return lowered[cand]
    return None


def role_column(df: pd.DataFrame, given: str | None, role: str, source: str) -> str:
    """``given``, or the column of ``df`` recognised by name as ``role``."""
    if given is not None:
        return given
    found = find_column(list(df.columns), role)
    if found is None:
        raise DataError(
            f"{source}: no {role} column recognised among {list(map(str, df.columns))}; "
            f"name it with {role}_col=..."
        )
    return found  # type: ignore[return-value]


def warn_unused(df: pd.DataFrame, used: tuple[Any, ...], source: str) -> None:
    """Warn about numeric columns that will not be used (likely ratings under another name)."""
    timestamps = find_column(list(df.columns), "timestamp") if used[3] is None else None
    unused = [
        c
        for c in df.columns
        if c not in used
        and c != timestamps
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]
    if not unused:
        return
    names = ", ".join(repr(c) for c in unused)
    if used[2] is None:
        msg = (
            f"{source}: no rating column recognised, so the data is read as implicit (every row counts 1), "
            f"but numeric column(s) {names} are left unused; pass rating_col={unused[0]!r} to use it as ratings, "
            "or rating_col=None for implicit data without this warning"
        )
    else:
        msg = (
            f"{source}: numeric column(s) {names} are left unused (ratings are read from {used[2]!r}); "
            "pass rating_col=... explicitly to silence this warning"
        )
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)
