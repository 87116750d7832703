"""The one container every split, model and metric takes: :class:`Interactions`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from torchmf.data.csr import count_repeats
from torchmf.data.idmap import IdMap
from torchmf.errors import DataError

__all__ = ["DUPLICATE_POLICIES", "Interactions"]

Duplicates = Literal["error", "last", "mean", "sum"]
DUPLICATE_POLICIES = ("error", "last", "mean", "sum")


class Interactions:
    """User-item interactions as parallel arrays plus the two id maps.

    Parameters
    ----------
    users, items : numpy.ndarray of int64, shape (n,)
        Contiguous indices into ``user_map`` / ``item_map``.
    values : numpy.ndarray of float32, shape (n,)
        Ratings (explicit) or interaction strengths (implicit; 1 when unknown).
    timestamps : numpy.ndarray of int64, shape (n,), optional
    user_map, item_map : IdMap
        Raw id <-> index. They may hold ids that have no interaction here (a
        test split shares its parent's maps).
    implicit : bool
        True when the values are strengths, not ratings (no rating column given).

    Notes
    -----
    Build one with :meth:`from_dict`, :meth:`from_pandas`, :meth:`from_arrays`,
    :meth:`from_csr` or :func:`torchmf.read_ratings`; they validate input and
    apply the duplicates policy.
    """

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        values: np.ndarray,
        user_map: IdMap,
        item_map: IdMap,
        timestamps: np.ndarray | None = None,
        implicit: bool = False,
    ) -> None:
        self.users = np.ascontiguousarray(users, dtype=np.int64)
        self.items = np.ascontiguousarray(items, dtype=np.int64)
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.timestamps = None if timestamps is None else np.ascontiguousarray(timestamps, dtype=np.int64)
        self.user_map = user_map
        self.item_map = item_map
        self.implicit = bool(implicit)
        n = len(self.users)
        lengths = {len(self.items), len(self.values)} | (
            {len(self.timestamps)} if self.timestamps is not None else set()
        )
        if lengths != {n}:
            raise DataError("users, items, values and timestamps must have the same length")
        for name, arr, m in (("user", self.users, user_map), ("item", self.items, item_map)):
            if n and (arr.min() < 0 or arr.max() >= len(m)):
                raise DataError(f"{name} index out of range for its id map (size {len(m)})")
        if n and not np.isfinite(self.values).all():
            row = int(np.flatnonzero(~np.isfinite(self.values))[0])
            raise DataError(f"value at row {row} is not finite: {self.values[row]}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        users: Any,
        items: Any,
        ratings: Any = None,
        timestamps: Any = None,
        duplicates: Duplicates = "error",
    ) -> Interactions:
        """Build from parallel arrays of raw ids.

        Parameters
        ----------
        users, items : array-like of hashable, shape (n,)
            Raw user and item ids.
        ratings : array-like of float, shape (n,), optional
            Without it the data is implicit and every value is 1.
        timestamps : array-like of int, shape (n,), optional
        duplicates : {"error", "last", "mean", "sum"}
            What to do with repeated (user, item) pairs.
        """
        frame = {"user": _column(users, "users"), "item": _column(items, "items")}
        if ratings is not None:
            frame["rating"] = _column(ratings, "ratings")
        if timestamps is not None:
            frame["timestamp"] = _column(timestamps, "timestamps")
        lengths = {len(v) for v in frame.values()}
        if len(lengths) > 1:
            raise DataError(f"users, items, ratings and timestamps differ in length: {sorted(lengths)}")
        df = pd.DataFrame(frame)
        return cls.from_pandas(
            df,
            user_col="user",
            item_col="item",
            rating_col="rating" if ratings is not None else None,
            timestamp_col="timestamp" if timestamps is not None else None,
            duplicates=duplicates,
        )

    @classmethod
    def from_dict(
        cls, nested: Mapping[Hashable, Mapping[Hashable, float]], duplicates: Duplicates = "error"
    ) -> Interactions:
        """Build from ``{user: {item: rating}}`` (the seed example's format).

        Examples
        --------
        >>> data = Interactions.from_dict({"user1": {"item1": 5, "item2": 3}})
        >>> len(data), data.n_users, data.n_items
        (2, 1, 2)
        """
        if not isinstance(nested, Mapping):
            raise DataError(f"from_dict expects {{user: {{item: rating}}}}, got {type(nested).__name__}")
        users: list[Hashable] = []
        items: list[Hashable] = []
        ratings: list[Any] = []
        for user, row in nested.items():
            if not isinstance(row, Mapping):
                raise DataError(f"ratings of user {user!r} must be a dict {{item: rating}}, got {type(row).__name__}")
            for item, rating in row.items():
                users.append(user)
                items.append(item)
                ratings.append(rating)
        return cls.from_arrays(users, items, ratings, duplicates=duplicates)

    @classmethod
    def from_pandas(
        cls,
        df: pd.DataFrame,
        user_col: str = "user",
        item_col: str = "item",
        rating_col: str | None = None,
        timestamp_col: str | None = None,
        duplicates: Duplicates = "error",
        source: str = "data frame",
    ) -> Interactions:
        """Build from a DataFrame of raw ids.

        Parameters
        ----------
        df : pandas.DataFrame, n rows
        user_col, item_col : str
            Columns holding raw user and item ids.
        rating_col : str, optional
            Column of ratings; None means implicit data (value 1 per row).
        timestamp_col : str, optional
            Column of integer (or datetime) timestamps.
        duplicates : {"error", "last", "mean", "sum"}
            Policy for repeated (user, item) pairs; "last" keeps the latest by
            timestamp when there is one, else by row order.
        source : str
            Name used in error messages (a file name, say).
        """
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
        wanted = [c for c in (user_col, item_col, rating_col, timestamp_col) if c is not None]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise DataError(f"{source}: missing column {missing[0]!r} (columns are {list(map(str, df.columns))})")
        if len(df) == 0:
            raise DataError(f"{source}: no interactions (the data is empty)")
        for col in (user_col, item_col):
            bad = df[col].isna().to_numpy()
            if bad.any():
                raise DataError(f"{source}: {_row(df, bad)}: missing id in column {col!r}")
        if rating_col is None:
            values = np.ones(len(df), dtype=np.float32)
        else:
            values = _numeric(df[rating_col], rating_col, source, df).astype(np.float32)
        ts = None
        if timestamp_col is not None:
            ts = _timestamps(df[timestamp_col], timestamp_col, source, df)
        user_map, users = IdMap.encode(df[user_col].to_numpy(), "user")
        item_map, items = IdMap.encode(df[item_col].to_numpy(), "item")
        users, items, values, ts = _dedupe(
            users, items, values, ts, len(item_map), duplicates, source, df, user_col, item_col
        )
        return cls(users, items, values, user_map, item_map, ts, implicit=rating_col is None)

    @classmethod
    def from_csr(cls, matrix: Any, user_ids: Any = None, item_ids: Any = None, implicit: bool = False) -> Interactions:
        """Build from a scipy.sparse matrix of shape (n_users, n_items).

        Stored entries become interactions (explicit zeros included; repeated
        entries of a non-canonical matrix are summed); ids default to the row
        and column numbers. Interactions come in row-major order. A CSR matrix
        in canonical form (sorted, no repeats: what scipy builds) is read
        without copies beyond the three output arrays, so 50 M entries need
        no more than those arrays' 1 GB.
        """
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise DataError(f"from_csr expects a scipy.sparse matrix, got {type(matrix).__name__}")
        csr = matrix.tocsr()  # no copy when it already is one
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()  # also sorts each row's columns
        n_users, n_items = csr.shape
        user_map = IdMap(np.arange(n_users) if user_ids is None else user_ids, "user")
        item_map = IdMap(np.arange(n_items) if item_ids is None else item_ids, "item")
        if len(user_map) != n_users or len(item_map) != n_items:
            raise DataError(
                f"matrix shape {csr.shape} does not match {len(user_map)} user ids and {len(item_map)} item ids"
            )
        users = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(csr.indptr))
        return cls(users, csr.indices, csr.data, user_map, item_map, implicit=implicit)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        kind = "implicit" if self.implicit else "explicit"
        return f"<Interactions: {len(self)} {kind} interactions, {self.n_users} users x {self.n_items} items>"

    @property
    def n_users(self) -> int:
        """Number of ids in the user map (some may have no interaction here)."""
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        """Number of ids in the item map."""
        return len(self.item_map)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_users, n_items)``."""
        return self.n_users, self.n_items

    def describe(self) -> str:
        """A few lines summarising size, density and value range."""
        n = len(self)
        active_u = len(np.unique(self.users)) if n else 0
        active_i = len(np.unique(self.items)) if n else 0
        density = n / max(1, self.n_users * self.n_items)
        lines = [
            f"{n:,} {'implicit' if self.implicit else 'explicit'} interactions",
            f"{self.n_users:,} users ({active_u:,} active) x {self.n_items:,} items ({active_i:,} active), "
            f"density {density:.4%}",
        ]
        if n:
            lines.append(f"values: min {self.values.min():g}, mean {self.values.mean():.4g}, max {self.values.max():g}")
        if self.timestamps is not None and n:
            lines.append(f"timestamps: {self.timestamps.min()} .. {self.timestamps.max()}")
        return "\n".join(lines)

    def to_csr(self) -> Any:
        """scipy.sparse.csr_matrix of shape (n_users, n_items) holding the values."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values, (self.users, self.items)), shape=self.shape)

    def to_pandas(self) -> pd.DataFrame:
        """DataFrame with raw ids: columns ``user, item, value`` (+ ``timestamp``)."""
        df = pd.DataFrame(
            {"user": self.user_map.raw(self.users), "item": self.item_map.raw(self.items), "value": self.values}
        )
        if self.timestamps is not None:
            df["timestamp"] = self.timestamps
        return df

    def subset(self, rows: np.ndarray) -> Interactions:
        """The interactions at ``rows`` (indices or boolean mask), same id maps."""
        rows = np.asarray(rows)
        return Interactions(
            self.users[rows],
            self.items[rows],
            self.values[rows],
            self.user_map,
            self.item_map,
            None if self.timestamps is None else self.timestamps[rows],
            self.implicit,
        )

    def compact(self) -> Interactions:
        """Drop ids that have no interaction here and renumber the rest.

        Ids keep their relative order; a model fitted on the result knows only
        users and items it has actually seen.
        """
        # bincount, not unique: linear time, and ids come out in order anyway
        used_u = np.flatnonzero(np.bincount(self.users, minlength=self.n_users))
        used_i = np.flatnonzero(np.bincount(self.items, minlength=self.n_items))
        if len(used_u) == self.n_users and len(used_i) == self.n_items:
            return self
        new_u = np.full(self.n_users, -1, dtype=np.int64)
        new_u[used_u] = np.arange(len(used_u))
        new_i = np.full(self.n_items, -1, dtype=np.int64)
        new_i[used_i] = np.arange(len(used_i))
        return Interactions(
            new_u[self.users],
            new_i[self.items],
            self.values,
            self.user_map.subset(used_u),
            self.item_map.subset(used_i),
            self.timestamps,
            self.implicit,
        )

    def rating_range(self) -> tuple[float, float]:
        """``(min, max)`` of the values; raises :class:`DataError` when empty."""
        if len(self) == 0:
            raise DataError("no interactions")
        return float(self.values.min()), float(self.values.max())


# ---------------------------------------------------------------------- helpers
def _column(values: Any, name: str) -> np.ndarray | list:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise DataError(f"{name} must be a sequence, got {type(values).__name__}")
    if isinstance(values, np.ndarray):
        return values.reshape(-1) if values.ndim != 1 else values
    if isinstance(values, (pd.Series, pd.Index)):
        return values.to_numpy()
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


def _show(value: Any) -> str:
    """repr of a value as the user wrote it: numpy scalars shown as plain Python."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _row(df: pd.DataFrame, mask: np.ndarray) -> str:
    """Where the first True of ``mask`` is: "line N" of the file when known, else "row N"."""
    pos = int(np.flatnonzero(mask)[0])
    lines = df.attrs.get("line_numbers")
    return f"line {int(lines[pos])}" if lines is not None else f"row {pos}"


def _numeric(col: pd.Series, name: str, source: str, df: pd.DataFrame) -> np.ndarray:
    converted = pd.to_numeric(col, errors="coerce")
    bad = converted.isna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: {_row(df, bad)}: column {name!r}: {_show(col.iloc[pos])} is not a number")
    arr = converted.to_numpy(dtype=np.float64)
    inf = ~np.isfinite(arr)
    if inf.any():
        pos = int(np.flatnonzero(inf)[0])
        raise DataError(f"{source}: {_row(df, inf)}: column {name!r}: {_show(col.iloc[pos])} is not finite")
    return arr


def _timestamps(col: pd.Series, name: str, source: str, df: pd.DataFrame) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        if col.isna().any():
            raise DataError(f"{source}: {_row(df, col.isna().to_numpy())}: column {name!r}: missing timestamp")
        return (col.astype("datetime64[ns]").astype(np.int64) // 10**9).to_numpy()
    arr = _numeric(col, name, source, df)
    return arr.astype(np.int64)


def _dedupe(
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
        mask = np.zeros(len(key), dtype=bool)
        mask[pos] = True
        raise DataError(
            f"{source}: {_row(df, mask)}: repeated ({user_col}, {item_col}) pair "
            f"({_show(df[user_col].iloc[pos])}, {_show(df[item_col].iloc[pos])}); "
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
