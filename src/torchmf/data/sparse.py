"""scipy.sparse input and CSR-stored interactions: checks and compaction that keep the CSR arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from torchmf.data.checks import check_values
from torchmf.data.csr import csr_order
from torchmf.data.idmap import IdMap
from torchmf.errors import DataError

__all__ = ["CSRStorage", "compact_csr", "csr_parts"]


def csr_parts(matrix: Any, user_ids: Any, item_ids: Any
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, IdMap, IdMap]:
    """A scipy.sparse matrix's canonical CSR arrays ``(indptr, indices, values float32)`` and its two id maps.

    The arrays are the matrix's own (no copy) when it is a canonical float32
    CSR matrix; raises :class:`DataError` for other input, ids that do not
    match the shape, or values that are not finite or out of range.
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
    check_values(csr.data, lambda pos: f"matrix entry (row {np.searchsorted(csr.indptr, pos, side='right') - 1}, "
                                       f"column {csr.indices[pos]})")
    values = csr.data if csr.data.dtype == np.float32 else csr.data.astype(np.float32)
    return csr.indptr, csr.indices, values, user_map, item_map


def compact_csr(indptr: np.ndarray, indices: np.ndarray, n_cols: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Rows and columns without entries dropped from a CSR pattern, or None when every one has some.

    Returns
    -------
    indptr, indices : numpy.ndarray
        Of the compacted matrix (``indices`` shared when no column is dropped).
    used_rows, used_cols : numpy.ndarray of int64
        The rows and columns kept, ascending.
    """
    counts = np.diff(indptr)
    used_u = np.flatnonzero(counts)
    used_i = np.flatnonzero(np.bincount(indices, minlength=n_cols))
    if len(used_u) == len(counts) and len(used_i) == n_cols:
        return None
    if len(used_u) < len(counts):
        indptr = np.zeros(len(used_u) + 1, dtype=indptr.dtype)
        np.cumsum(counts[used_u], out=indptr[1:])
    if len(used_i) < n_cols:
        new_i = np.full(n_cols, -1, dtype=indices.dtype)
        new_i[used_i] = np.arange(len(used_i))
        indices = new_i[indices]
    return indptr, indices, used_u, used_i


class CSRStorage:
    """How :class:`~torchmf.data.interactions.Interactions` keeps CSR input: the arrays, not COO copies.

    Data built from a scipy matrix holds its ``indptr``, ``indices`` and
    values as given (50 M pairs: no 0.8 GB of int64 user and item arrays);
    ``users``/``items`` are expanded on first use and kept, and the fit path
    (:meth:`row_major`, :meth:`compact`) never asks for them.
    """

    _csr: tuple[np.ndarray, np.ndarray] | None
    _users: np.ndarray | None
    _items: np.ndarray | None
    values: np.ndarray
    user_map: IdMap
    item_map: IdMap
    implicit: bool
    timestamps: np.ndarray | None

    @classmethod
    def _row_major(cls, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, user_map: IdMap,
                   item_map: IdMap, implicit: bool) -> Any:
        """Interactions stored as CSR arrays (sorted, no repeats), shared, not copied; ``users``/``items`` on demand."""
        out = cls.__new__(cls)
        out._csr = (indptr, indices)
        out._users = out._items = None
        out.values, out.timestamps = values, None
        out.user_map, out.item_map, out.implicit = user_map, item_map, bool(implicit)
        return out

    @property
    def shares_input(self) -> bool:
        """Whether the arrays may be a caller's own (a ``from_csr`` matrix's, not copied)."""
        return self._csr is not None

    @property
    def users(self) -> np.ndarray:
        """User index of each interaction, int64, shape (n,)."""
        if self._users is None:  # stored as CSR (from_csr): expanded on first use, then kept
            indptr = self._csr[0]  # type: ignore[index]
            self._users = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
        return self._users

    @users.setter
    def users(self, value: np.ndarray) -> None:
        self._users = value

    @property
    def items(self) -> np.ndarray:
        """Item index of each interaction, int64, shape (n,)."""
        if self._items is None:
            self._items = self._csr[1].astype(np.int64)  # type: ignore[index]
        return self._items

    @items.setter
    def items(self, value: np.ndarray) -> None:
        self._items = value

    def row_major(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The interactions as CSR arrays, sorted by user then item.

        Returns
        -------
        indptr : numpy.ndarray of int, shape (n_users + 1,)
        items : numpy.ndarray of int, shape (n,)
            int32 or int64.
        values : numpy.ndarray of float32, shape (n,)
            Shared, not copied, when the data came from :meth:`from_csr` (or
            already comes sorted this way).
        """
        if self._csr is not None:
            return self._csr[0], self._csr[1], self.values
        indptr, order = csr_order(self.users, self.items, len(self.user_map), len(self.item_map))
        if len(order) and order[-1] == len(order) - 1 and bool((order[:-1] < order[1:]).all()):  # identity
            return indptr, self.items, self.values
        return indptr, self.items[order], self.values[order]

    def _compact_rows(self) -> Any:
        """:meth:`compact` of CSR-stored data: the arrays stay CSR, shared where nothing changes."""
        out = compact_csr(*self._csr, len(self.item_map))  # type: ignore[misc]
        if out is None:
            return self
        indptr, indices, used_u, used_i = out
        return type(self)._row_major(indptr, indices, self.values, self.user_map.subset(used_u),
                                     self.item_map.subset(used_i), self.implicit)
