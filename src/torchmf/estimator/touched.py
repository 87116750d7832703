"""The data side of ``partial_fit``: merging new pairs into the seen index and selecting touched rows.

A full fit on ML-100k takes a few hundredths of a second, so an update's
fixed costs decide whether it is cheaper than a refit. Everything here is
linear in the seen index (or in the new pairs) and sorts nothing of that
size: the seen index is already in CSR order, the new pairs are merged into
it by binary search (:func:`merge_seen`), and the rows an update re-solves
are cut out of it, and out of its transpose (one counting pass), already in
the order the layout builders want and with their row pointers
(:class:`SeenSides`), so the layouts neither sort nor check them. The
selections are shared by the rating model's update and its ranking
component's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

__all__ = ["Merged", "SeenSides", "Selection", "merge_seen", "row_ranges"]


@dataclass(frozen=True)
class Merged:
    """The seen index after an update, in CSR order (users, then items), and where the new pairs went.

    Attributes
    ----------
    indptr : numpy.ndarray of int64, shape (n_users + 1,)
    users, items : numpy.ndarray of int64, shape (nnz,)
    values : numpy.ndarray of float32, shape (nnz,)
    is_new : numpy.ndarray of bool, shape (nnz,)
        The pair comes from the new interactions (a new pair or a new value of a known one).
    new_pos : numpy.ndarray of int64, shape (n_new,)
        Position in the merged index of each new pair, in the order the new
        interactions gave them (a pair given twice: its last occurrence).
    n_items : int
    """

    indptr: np.ndarray
    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    is_new: np.ndarray
    new_pos: np.ndarray
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def __len__(self) -> int:
        return len(self.users)


def merge_seen(indptr: np.ndarray, items: np.ndarray, values: np.ndarray, new_users: np.ndarray,
               new_items: np.ndarray, new_values: np.ndarray, n_users: int, n_items: int) -> Merged:
    """Merge new pairs into a CSR seen index; a pair already there takes the new value (the last one wins).

    Parameters
    ----------
    indptr : numpy.ndarray of int64, shape (n_old_users + 1,)
    items, values : numpy.ndarray, shape (nnz,)
        The old seen index, sorted by user, then item.
    new_users, new_items : numpy.ndarray of int64, shape (n,)
        Indices in the grown maps (``n_users >= n_old_users``, ``n_items`` likewise).
    new_values : numpy.ndarray, shape (n,)
    n_users, n_items : int

    Returns
    -------
    Merged
    """
    n_old_users = len(indptr) - 1
    old_users = np.repeat(np.arange(n_old_users, dtype=np.int64), np.diff(indptr))
    old_key = old_users * n_items + items  # strictly increasing: the index is CSR-sorted
    new_users, new_items = np.asarray(new_users, dtype=np.int64), np.asarray(new_items, dtype=np.int64)
    key = new_users * n_items + new_items
    order = _pair_order(new_users, new_items, key, max(n_users, n_items))
    sorted_key = key[order]
    last = np.ones(len(key), dtype=bool)  # of a pair given twice, keep its last occurrence
    last[:-1] = sorted_key[1:] != sorted_key[:-1]
    if not last.all():
        order, sorted_key = order[last], sorted_key[last]
    at = np.searchsorted(old_key, sorted_key)
    hit = at < len(old_key)
    hit[hit] = old_key[at[hit]] == sorted_key[hit]
    replaced = at[hit]  # old pairs that take a new value
    # new pair j goes after the kept old pairs with smaller keys and after the new pairs before it
    pos = at - (np.cumsum(hit) - hit) + np.arange(len(sorted_key))
    counts = np.bincount(sorted_key // n_items, minlength=n_users)
    counts[:n_old_users] += np.diff(indptr) - np.bincount(old_users[replaced], minlength=n_old_users)
    m_indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=m_indptr[1:])
    is_new = np.zeros(int(m_indptr[-1]), dtype=bool)
    is_new[pos] = True
    old_dest = np.flatnonzero(~is_new)
    old_src = np.delete(np.arange(len(old_key)), replaced) if len(replaced) else slice(None)
    m_users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    m_items = np.empty(len(is_new), dtype=np.int64)
    m_values = np.empty(len(is_new), dtype=np.float32)
    for out, old, new in ((m_items, items, new_items), (m_values, values, new_values)):
        out[old_dest] = old[old_src]
        out[pos] = np.asarray(new)[order]
    back = np.full(len(key), -1, dtype=np.int64)  # back to the order the new pairs came in
    back[order] = pos
    new_pos = back if len(order) == len(key) else back[back >= 0]
    return Merged(m_indptr, m_users, m_items, m_values, is_new, new_pos, n_items)


def _pair_order(rows: np.ndarray, cols: np.ndarray, key: np.ndarray, largest: int) -> np.ndarray:
    """Stable permutation sorting pairs by ``key`` (row-major): two radix sorts when the ids fit 16 bits."""
    if largest > 1 << 16:
        return np.argsort(key, kind="stable")
    by_col = np.argsort(cols.astype(np.uint16), kind="stable")
    return by_col[np.argsort(rows[by_col].astype(np.uint16), kind="stable")]


def row_ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of every entry of ``rows`` (sorted) in a CSR index, shape (sum of their lengths,)."""
    return _row_ranges(indptr, rows)[0]


def _row_ranges(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`row_ranges` and the row pointers of the selection, shape (len(rows) + 1,)."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    sub = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=sub[1:])  # where each row's run begins in the output
    return np.arange(int(sub[-1]), dtype=np.int64) + np.repeat(starts - sub[:-1], lengths), sub


class Selection(NamedTuple):
    """The entries of some rows of one side of a merged seen index, CSR-sorted (rows, then columns).

    Attributes
    ----------
    rows : numpy.ndarray of int64, shape (nnz,)
        Rows renumbered ``0 .. len(chosen) - 1``.
    cols : numpy.ndarray of int, shape (nnz,)
        The other side's index of each entry, ascending within a row.
    pos : numpy.ndarray of int, shape (nnz,)
        Position of each entry in the merged index (to pick its values).
    indptr : numpy.ndarray of int64, shape (len(chosen) + 1,)
        Row pointers: the layouts take them instead of sorting the entries again.
    """

    rows: np.ndarray
    cols: np.ndarray
    pos: np.ndarray
    indptr: np.ndarray


@dataclass
class SeenSides:
    """Both sides of a merged seen index, and the entries of named row sets of each.

    :meth:`select` returns a :class:`Selection`, computed once per (side, name)
    and shared by every model the update re-solves.
    """

    merged: Merged
    _by_item: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    _cache: dict[tuple[str, str], Selection] = field(default_factory=dict)

    def _item_major(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr over items, users in item-major order, their positions in the merged index).

        One linear pass (scipy's CSR to CSC counting sort): users come out ascending within each item.
        """
        if self._by_item is None:
            m = self.merged
            index = np.int32 if len(m) < 2**31 else np.int64
            csr = sp.csr_matrix((np.arange(len(m), dtype=index), m.items, m.indptr), shape=(m.n_users, m.n_items),
                                copy=False)
            csc = csr.tocsc()
            self._by_item = csc.indptr, csc.indices, csc.data
        return self._by_item

    def select(self, side: str, name: str, chosen: np.ndarray) -> Selection:
        """The entries of the ``chosen`` rows (sorted indices) of ``side`` ("user" or "item"), cached by ``name``."""
        key = (side, name)
        if key not in self._cache:
            m = self.merged
            if side == "user":
                at, indptr = _row_ranges(m.indptr, chosen)
                pos, cols = at, m.items[at]
            else:
                by_item, users, positions = self._item_major()
                at, indptr = _row_ranges(by_item, chosen)
                pos, cols = positions[at], users[at]
            rows = np.repeat(np.arange(len(chosen), dtype=np.int64), np.diff(indptr))
            self._cache[key] = Selection(rows, cols, pos, indptr)
        return self._cache[key]
