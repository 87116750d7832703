"""Rows of a sparse matrix as padded, degree-bucketed dense blocks.

ALS needs, for every user, the factors of the items that user rated (and the
reverse). Gathering them into padded ``(rows, max_degree, k)`` blocks turns the
per-row sums into batched matrix products that run at BLAS speed. Rows are
sorted by degree and cut into buckets so that padding stays small even when a
few rows are very long (power users, blockbuster items).

:func:`ragged_layout` builds the whole padded layout at once with vectorised
numpy (a Python loop runs per bucket, never per row or entry), so setting up a
fit costs little next to one sweep even on small data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from torchmf.data.csr import csr_order

__all__ = ["Bucket", "RaggedLayout", "bucketize", "ragged_csr", "ragged_layout"]


@dataclass(frozen=True)
class RaggedLayout:
    """Every non-empty row of a sparse matrix, padded bucket by bucket into flat arrays.

    Bucket ``b`` holds rows ``rows[row_bounds[b]:row_bounds[b + 1]]``, all padded
    to ``widths[b]`` slots, and its slots are
    ``cols[entry_bounds[b]:entry_bounds[b + 1]]`` read row after row, so
    ``cols[e0:e1].reshape(B, widths[b])`` is the bucket's ``(B, L)`` block.

    Attributes
    ----------
    rows : numpy.ndarray of int64, shape (R,)
        Matrix row of each padded row, by ascending number of entries.
    counts : numpy.ndarray of int64, shape (R,)
        Entries of each of those rows.
    cols : numpy.ndarray of int64, shape (E,)
        Column of each slot; padding points at ``n_cols`` (a zero row that
        callers append to the other side's factors).
    vals : numpy.ndarray of float32, shape (E,)
        Value of each slot; 0 in padding.
    row_bounds, entry_bounds : numpy.ndarray of int64, shape (n_buckets + 1,)
    widths : numpy.ndarray of int64, shape (n_buckets,)
    slots : numpy.ndarray of int64, shape (nnz,), optional
        The slot of each real entry, entries in CSR order (by row, then column);
        None from :func:`ragged_csr`.
    """

    rows: np.ndarray
    counts: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    row_bounds: np.ndarray
    entry_bounds: np.ndarray
    widths: np.ndarray
    slots: np.ndarray | None

    @property
    def mask(self) -> np.ndarray:
        """Real entries (True) versus padding, shape (E,)."""
        if self.slots is None:
            raise ValueError("this layout was built without slots (ragged_csr): its padding is where cols == n_cols")
        mask = np.zeros(len(self.cols), dtype=bool)
        mask[self.slots] = True
        return mask


def _bucket_bounds(degrees: np.ndarray, max_elements: int, growth: float) -> np.ndarray:
    """Cut rows sorted by ascending degree into buckets; returns row bounds."""
    bounds = [0]
    i, n = 0, len(degrees)
    while i < n:
        # rows not much longer than the first, so padding wastes < 1 - 1/growth ...
        j = int(np.searchsorted(degrees, growth * degrees[i] + 8, side="right"))
        # ... and few enough that the block fits max_elements (at least one row)
        j = i + max(1, min(j - i, max_elements // int(degrees[j - 1])))
        bounds.append(j)
        i = j
    return np.asarray(bounds, dtype=np.int64)


def ragged_layout(
    rows: np.ndarray | None,
    cols: np.ndarray,
    vals: np.ndarray,
    n_rows: int,
    n_cols: int,
    max_elements: int = 1 << 22,
    growth: float = 1.3,
    csr: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> RaggedLayout:
    """Pad the rows of a sparse matrix into degree buckets.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (nnz,)
        Coordinates; no pair may repeat.
    vals : numpy.ndarray, shape (nnz,)
    n_rows, n_cols : int
        Matrix shape. Rows without entries are left out.
    max_elements : int
        Upper bound on ``B * L`` per bucket (unless one row alone is longer),
        which bounds the memory of the ``(B, L, k)`` blocks callers build.
    growth : float
        A bucket ends when its longest row would exceed ``growth`` times its
        shortest (plus 8), so padding wastes less than ``1 - 1/growth`` of a block.
    csr : tuple of numpy.ndarray, optional
        ``csr_order(rows, cols, n_rows, n_cols)`` when the caller has it already;
        ``(indptr, None)`` when ``cols`` and ``vals`` already come in CSR order
        (``rows`` is then not read and may be None).

    Returns
    -------
    RaggedLayout
    """
    # entries grouped by row, columns ascending inside a row (gathers read memory in order)
    indptr, order = csr if csr is not None else csr_order(rows, cols, n_rows, n_cols)  # type: ignore[arg-type]
    counts_all = np.diff(indptr)
    by_degree, counts, row_bounds, widths, entry_bounds, start = _padded_rows(counts_all, max_elements, growth)
    # every real entry's slot is its CSR position shifted by its row's offset
    shift = np.zeros(n_rows, dtype=np.int64)
    shift[by_degree] = start - indptr[by_degree]
    slots = np.repeat(shift, counts_all)
    slots += np.arange(len(slots), dtype=np.int64)
    del shift, start

    n_slots = int(entry_bounds[-1])
    flat_cols = np.full(n_slots, n_cols, dtype=np.int64)
    flat_vals = np.zeros(n_slots, dtype=np.float32)
    flat_cols[slots] = np.asarray(cols) if order is None else np.asarray(cols)[order]
    flat_vals[slots] = np.asarray(vals) if order is None else np.asarray(vals)[order]
    return RaggedLayout(by_degree, counts, flat_cols, flat_vals, row_bounds, entry_bounds, widths, slots)


def ragged_csr(
    indptr: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    n_cols: int,
    max_elements: int = 1 << 22,
    growth: float = 1.3,
    order: np.ndarray | None = None,
    vals_map: Callable[[np.ndarray], np.ndarray] | None = None,
    cols_dtype: type = np.int64,
    half_if_exact: bool = False,
) -> RaggedLayout:
    """:func:`ragged_layout` of a CSR matrix, filled block by block: no pair-sized temporary.

    The same layout (``slots`` is None), but only the padded outputs are
    pair-sized: the slots are computed and filled for about a million entries
    at a time.

    Parameters
    ----------
    indptr : numpy.ndarray of int, shape (n_rows + 1,)
    cols : numpy.ndarray of int, shape (nnz,)
        Columns in CSR order (ascending within a row, none repeated).
    vals : numpy.ndarray, shape (nnz,)
        Values, in CSR order, or in the order ``order`` reads them.
    n_cols, max_elements, growth
        See :func:`ragged_layout`.
    order : numpy.ndarray of int, shape (nnz,), optional
        CSR entry ``p`` takes value ``vals[order[p]]``.
    vals_map : callable, optional
        Applied to each block of values before it is stored as float32
        (iALS's confidence transform), so the mapped values are never held whole.
    cols_dtype : numpy dtype
        Of the slots' columns (``np.int32`` halves them where ``n_cols`` fits).
    half_if_exact : bool
        Store the values as float16 when every (mapped) value is a float16
        number exactly (binary data's confidences, small integers): the same
        numbers in half the memory. Else float32.
    """
    vals_dtype = np.float16 if half_if_exact and _half_exact(vals, vals_map) else np.float32
    counts_all = np.diff(indptr)
    by_degree, counts, row_bounds, widths, entry_bounds, start = _padded_rows(counts_all, max_elements, growth)
    del counts_all
    n_slots = int(entry_bounds[-1])
    flat_cols = np.full(n_slots, n_cols, dtype=cols_dtype)
    flat_vals = np.zeros(n_slots, dtype=vals_dtype)
    ends = np.cumsum(counts)  # entries of padded rows 0..t
    t0 = 0
    while t0 < len(by_degree):
        done = int(ends[t0 - 1]) if t0 else 0
        t1 = max(t0 + 1, int(np.searchsorted(ends, done + _FILL_BLOCK, side="right")))
        c = counts[t0:t1]
        within = np.arange(int(ends[t1 - 1]) - done, dtype=np.int64)
        within -= np.repeat(np.cumsum(c) - c, c)  # entry j of its row
        src = np.repeat(indptr[by_degree[t0:t1]].astype(np.int64), c) + within  # CSR position
        dst = np.repeat(start[t0:t1], c) + within  # slot
        flat_cols[dst] = cols[src]
        v = vals[src] if order is None else vals[order[src]]
        flat_vals[dst] = v if vals_map is None else vals_map(v)
        t0 = t1
    return RaggedLayout(by_degree, counts, flat_cols, flat_vals, row_bounds, entry_bounds, widths, None)


_FILL_BLOCK = 1 << 20


def _half_exact(vals: np.ndarray, vals_map: Callable[[np.ndarray], np.ndarray] | None) -> bool:
    """Whether every value (after ``vals_map``, as float32) is exactly a float16 number; a block at a time."""
    for start in range(0, len(vals), _FILL_BLOCK):
        v = vals[start : start + _FILL_BLOCK]
        v = np.asarray(v if vals_map is None else vals_map(v), dtype=np.float32)
        with np.errstate(over="ignore"):
            if not np.array_equal(v.astype(np.float16).astype(np.float32), v):
                return False
    return True


def _padded_rows(counts_all: np.ndarray, max_elements: int, growth: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Degree buckets of rows with ``counts_all`` entries: rows by degree, their counts, row and entry
    bounds, widths, and the first slot of each padded row."""
    by_degree = np.argsort(counts_all, kind="stable")
    by_degree = by_degree[counts_all[by_degree] > 0]
    counts = counts_all[by_degree].astype(np.int64)
    row_bounds = _bucket_bounds(counts, max_elements, growth)
    widths = counts[row_bounds[1:] - 1]  # the longest (last) row of each bucket
    entry_bounds = np.concatenate([[0], np.cumsum(widths * np.diff(row_bounds))])
    # padded row t starts at slot entry_bounds[b] + (t - row_bounds[b]) * widths[b]
    per_row = np.diff(row_bounds)
    start = np.repeat(entry_bounds[:-1] - row_bounds[:-1] * widths, per_row)
    start += np.arange(len(by_degree), dtype=np.int64) * np.repeat(widths, per_row)
    return by_degree, counts, row_bounds, widths, entry_bounds, start


@dataclass(frozen=True)
class Bucket:
    """One block of rows padded to the same length.

    Attributes
    ----------
    rows : torch.LongTensor, shape (B,)
        Which rows of the matrix this block holds.
    cols : torch.LongTensor, shape (B, L)
        Column indices; padding points at column ``n_cols`` (a zero row that
        callers append to the other side's factors).
    vals : torch.Tensor, shape (B, L)
        Values; 0 in padding.
    mask : torch.Tensor, shape (B, L)
        1 for real entries, 0 for padding.
    counts : torch.Tensor, shape (B,)
        Number of real entries per row.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    mask: torch.Tensor
    counts: torch.Tensor


def bucketize(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    n_rows: int,
    n_cols: int,
    device: torch.device,
    max_elements: int = 1 << 22,
    growth: float = 1.3,
    csr: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Bucket]:
    """The buckets of :func:`ragged_layout` as separate tensors on ``device``.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (nnz,)
    vals : numpy.ndarray of float32, shape (nnz,)
    n_rows, n_cols : int
    device : torch.device
    max_elements, growth, csr
        See :func:`ragged_layout`.

    Returns
    -------
    list of Bucket
    """
    lay = ragged_layout(rows, cols, vals, n_rows, n_cols, max_elements, growth, csr)
    mask = lay.mask.astype(np.float32)
    out = []
    for b, width in enumerate(lay.widths.tolist()):
        r0, r1 = lay.row_bounds[b], lay.row_bounds[b + 1]
        e0, e1 = lay.entry_bounds[b], lay.entry_bounds[b + 1]
        cols, vals, m = (torch.as_tensor(a[e0:e1].reshape(r1 - r0, width), device=device)
                         for a in (lay.cols, lay.vals, mask))
        out.append(Bucket(
            rows=torch.as_tensor(lay.rows[r0:r1], device=device), cols=cols, vals=vals, mask=m,
            counts=torch.as_tensor(lay.counts[r0:r1].astype(np.float32), device=device),
        ))
    return out
