"""The one container every split, model and metric takes: :class:`Interactions`."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from torchmf.data.checks import check_ids, check_values, numeric_column, timestamp_column
from torchmf.data.columns import find_column, role_column, warn_unused
from torchmf.data.dedupe import dedupe
from torchmf.data.idmap import IdMap
from torchmf.data.sparse import CSRStorage, csr_parts
from torchmf.errors import DataError

__all__ = ["AUTO", "DUPLICATE_POLICIES", "Interactions"]

Duplicates = Literal["error", "last", "mean", "sum"]
DUPLICATE_POLICIES = ("error", "last", "mean", "sum")


class _Auto(enum.Enum):
    AUTO = "auto"

    def __repr__(self) -> str:
        return "AUTO"


#: Default of ``from_pandas(rating_col=...)``: recognise the rating column by name.
AUTO = _Auto.AUTO


class Interactions(CSRStorage):
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
        self._csr: tuple[np.ndarray, np.ndarray] | None = None
        self.users = np.ascontiguousarray(users, dtype=np.int64)
        self.items = np.ascontiguousarray(items, dtype=np.int64)
        if not (isinstance(values, np.ndarray) and values.dtype == np.float32):
            # before the cast: 1e300 must be refused by name, not become inf with a numpy warning
            check_values(np.asarray(values), lambda pos: f"value at row {pos}")
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
            check_values(self.values, lambda pos: f"value at row {pos}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        users: Any,
        items: Any,
        ratings: Any = None,
        timestamps: Any = None,
        duplicates: Duplicates = "error",
        source: str = "arrays",
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
        source : str
            Name used in error messages.

        Raises
        ------
        DataError
            Missing or blank ids, ratings that are not real numbers within
            ``|value| <= MAX_ABS_VALUE`` (1e12), repeats under ``duplicates="error"``.
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
            source=source,
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
        return cls.from_arrays(users, items, ratings, duplicates=duplicates, source="ratings dict")

    @classmethod
    def from_pandas(
        cls,
        df: pd.DataFrame,
        user_col: str | None = None,
        item_col: str | None = None,
        rating_col: str | _Auto | None = AUTO,
        timestamp_col: str | None = None,
        duplicates: Duplicates = "error",
        source: str = "data frame",
    ) -> Interactions:
        """Build from a DataFrame of raw ids.

        Parameters
        ----------
        df : pandas.DataFrame, n rows
        user_col, item_col : str, optional
            Columns holding raw user and item ids; by default recognised by name
            as :func:`torchmf.read_ratings` does (``user``, ``userId``,
            ``item``, ``movieId``, ...; see ``torchmf.data.columns.ROLE_NAMES``).
        rating_col : str or None, optional
            Column of ratings. By default (``AUTO``) a column named like a rating
            (``rating``, ``ratings``, ``score``, ``value``, ``count``, ``plays``,
            ...) is used, and a numeric column left unused is warned about
            (``logging`` and ``warnings.warn``). ``None`` means implicit data
            (value 1 per row), silently.
        timestamp_col : str, optional
            Column of integer (or datetime) timestamps.
        duplicates : {"error", "last", "mean", "sum"}
            Policy for repeated (user, item) pairs; "last" keeps the latest by
            timestamp when there is one, else by row order.
        source : str
            Name used in error messages (a file name, say).

        Raises
        ------
        DataError
            A missing column, missing or blank ids, ratings that are not real
            numbers within ``|value| <= torchmf.data.checks.MAX_ABS_VALUE``
            (1e12, so squared errors stay finite in float32), date columns as
            ratings, repeats under ``duplicates="error"``.
        """
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"from_pandas expects a pandas DataFrame, got {type(df).__name__}")
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
        user_col = role_column(df, user_col, "user", source)
        item_col = role_column(df, item_col, "item", source)
        auto_rating = rating_col is AUTO
        if auto_rating:
            others = [c for c in df.columns if c not in (user_col, item_col)]
            rating_col = find_column(others, "rating")  # type: ignore[assignment]
        wanted = [c for c in (user_col, item_col, rating_col, timestamp_col) if c is not None]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise DataError(f"{source}: missing column {missing[0]!r} (columns are {list(map(str, df.columns))})")
        if len(df) == 0:
            raise DataError(f"{source}: no interactions (the data is empty)")
        if auto_rating:
            warn_unused(df, (user_col, item_col, rating_col, timestamp_col), source)
        for col in (user_col, item_col):
            check_ids(df[col], col, source, df)
        ids = (user_col, item_col)
        if rating_col is None:
            values = np.ones(len(df), dtype=np.float32)
        else:
            values = numeric_column(df[rating_col], rating_col, source, df, ids).astype(np.float32)
        ts = None
        if timestamp_col is not None:
            ts = timestamp_column(df[timestamp_col], timestamp_col, source, df, ids)
        user_map, users = IdMap.encode(df[user_col].to_numpy(), "user")
        item_map, items = IdMap.encode(df[item_col].to_numpy(), "item")
        users, items, values, ts = dedupe(
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
        indptr, indices, values, user_map, item_map = csr_parts(matrix, user_ids, item_ids)
        return cls._row_major(indptr, indices, values, user_map, item_map, implicit)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.values)

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
        if self._csr is not None and self._users is None:
            return self._compact_rows()
        # bincount, not unique: linear time, and ids come out in order anyway
        used_u = np.flatnonzero(np.bincount(self.users, minlength=self.n_users))
        used_i = np.flatnonzero(np.bincount(self.items, minlength=self.n_items))
        if len(used_u) == self.n_users and len(used_i) == self.n_items:
            return self
        return Interactions(
            _renumbered(self.users, used_u, self.n_users),
            _renumbered(self.items, used_i, self.n_items),
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
def _renumbered(ids: np.ndarray, used: np.ndarray, n: int) -> np.ndarray:
    """``ids`` renumbered to their rank among ``used`` (the ids left); the array itself when none is dropped."""
    if len(used) == n:
        return ids
    new = np.full(n, -1, dtype=np.int64)
    new[used] = np.arange(len(used))
    return new[ids]


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
