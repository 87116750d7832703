"""Combining repeated (user, item) pairs under a duplicates policy."""

from __future__ import annotations

import numpy as np
import pandas as pd

from torchmf.data.checks import show, where
from torchmf.data.csr import count_repeats
from torchmf.errors import DataError

__all__ = ["dedupe"]


def dedupe(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    ts: np.ndarray | None,
    n_items: int,
    policy: str,
    source: str,
    df: pd.DataFrame,
    user_col: str,
    item_col: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    if len(users) and count_repeats(users, items, int(users.max()) + 1, n_items) == 0:
        return users, items, values, ts  # linear check; the sort below runs only when pairs repeat
    key = users * n_items + items
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    dup_next = sorted_key[1:] == sorted_key[:-1]
    if not dup_next.any():
        return users, items, values, ts
    if policy == "error":
        pos = int(order[int(np.flatnonzero(dup_next)[0]) + 1])
        raise DataError(
            f"{source}: {where(df, pos)}: repeated ({user_col}, {item_col}) pair "
            f"({show(df[user_col].iloc[pos])}, {show(df[item_col].iloc[pos])}); "
            "pass duplicates='last', 'mean' or 'sum' to combine repeats (CLI: --duplicates)"
        )
    if policy == "last" and ts is not None:
        # latest timestamp wins; ties broken by row order
        order = np.lexsort((np.arange(len(key)), ts, key))
        sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    ends = np.r_[starts[1:], len(sorted_key)]
    first_rows = order[starts]
    last_rows = order[ends - 1]
    if policy == "last":
        keep = np.sort(last_rows)
        return users[keep], items[keep], values[keep], None if ts is None else ts[keep]
    sums = np.add.reduceat(values[order].astype(np.float64), starts)
    combined = sums / (ends - starts) if policy == "mean" else sums
    # combined rows take the position of the first occurrence; latest timestamp
    out_ts = None if ts is None else np.maximum.reduceat(ts[order], starts)
    pos = np.argsort(first_rows, kind="stable")
    return (
        users[first_rows][pos],
        items[first_rows][pos],
        combined.astype(np.float32)[pos],
        None if out_ts is None else out_ts[pos],
    )
