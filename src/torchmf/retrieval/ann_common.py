"""Pieces the approximate indexes share: the optional import, CSR row slicing, exact fallback, recall."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["csr_rows", "exact_top_k", "filter_excluded", "import_faiss", "recall_at"]

# exact scans score at most this many (query, item) pairs at once
_BLOCK_ENTRIES = 1 << 24


def import_faiss() -> Any:
    """The ``faiss`` module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("approximate retrieval needs faiss: pip install 'torchmf[ann]' (or faiss-cpu)") from exc
    return faiss


def csr_rows(csr: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR arrays of the selected rows only.

    Parameters
    ----------
    csr : (indptr, indices)
        ``indptr`` of shape (B + 1,).
    rows : numpy.ndarray of int, shape (R,)

    Returns
    -------
    (indptr, indices)
        ``indptr`` of shape (R + 1,).
    """
    indptr, indices = csr
    starts, ends = indptr[rows], indptr[np.asarray(rows) + 1]
    counts = (ends - starts).astype(np.int64)
    new_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    pos = np.arange(new_ptr[-1]) - np.repeat(new_ptr[:-1], counts) + np.repeat(starts, counts)
    return new_ptr, np.asarray(indices)[pos.astype(np.int64)]


def _row_keys(csr: tuple[np.ndarray, np.ndarray], n_cols: int) -> np.ndarray:
    """``row * n_cols + item`` for every entry of a CSR, sorted."""
    indptr, indices = csr
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    return np.sort(rows * n_cols + np.asarray(indices[indptr[0] : indptr[-1]], dtype=np.int64))


def filter_excluded(ids: np.ndarray, exclude: tuple[np.ndarray, np.ndarray], n_items: int) -> np.ndarray:
    """``ids`` (R, n) with every id listed in its row of ``exclude`` (R rows) replaced by -1.

    Ids and excluded items must lie in ``[0, n_items)`` (ids may be -1).
    """
    keys = _row_keys(exclude, n_items)
    if len(keys) == 0:
        return ids
    query = np.arange(len(ids), dtype=np.int64)[:, None] * n_items + ids
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where((keys[pos] == query) & (ids >= 0), -1, ids)


def exact_top_k(
    y: np.ndarray,
    vectors: np.ndarray,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None,
    ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``y @ vectors.T`` over the items ``ids``, scanning in bounded blocks.

    Parameters
    ----------
    y : numpy.ndarray, shape (B, w)
    vectors : numpy.ndarray, shape (M, w)
        Row ``j`` belongs to item ``ids[j]``.
    k : int
    exclude : (indptr, indices), optional
        CSR over the B rows of item indices to drop.
    ids : numpy.ndarray of int64, shape (M,)

    Returns
    -------
    items : numpy.ndarray of int64, shape (B, k)
        Best first, -1 padded.
    scores : numpy.ndarray of float32, shape (B, k)
        -inf padded.
    """
    B = len(y)
    best_i = np.full((B, k), -1, dtype=np.int64)
    best_s = np.full((B, k), -np.inf, dtype=np.float32)
    if B == 0 or len(ids) == 0:
        return best_i, best_s
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    if exclude is not None and len(exclude[1]):
        ex_rows = np.repeat(np.arange(B, dtype=np.int64), np.diff(exclude[0][: B + 1]))
        ex_items = np.asarray(exclude[1][exclude[0][0] : exclude[0][B]], dtype=np.int64)
    else:
        ex_rows = ex_items = np.zeros(0, dtype=np.int64)
    step = max(1, _BLOCK_ENTRIES // B)
    for c in range(0, len(ids), step):
        block_ids = np.asarray(ids[c : c + step], dtype=np.int64)
        s = yt @ torch.from_numpy(np.ascontiguousarray(vectors[c : c + step], dtype=np.float32)).T
        if len(ex_items):  # columns of this block that hold an excluded item of the row
            sorter = np.argsort(block_ids, kind="stable")
            pos = np.minimum(np.searchsorted(block_ids, ex_items, sorter=sorter), len(block_ids) - 1)
            cols = sorter[pos]
            found = block_ids[cols] == ex_items
            s[torch.from_numpy(ex_rows[found]), torch.from_numpy(cols[found])] = -torch.inf
        ts, ti = torch.topk(s, min(k, s.shape[1]), dim=1)
        cand_s = np.concatenate([best_s, ts.numpy()], 1)
        cand_i = np.concatenate([best_i, block_ids[ti.numpy()]], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    best_i[~np.isfinite(best_s)] = -1
    return best_i, best_s


def recall_at(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per row: share of the exact list's valid ids (>= 0) that the approximate list contains.

    Parameters
    ----------
    approx, exact : numpy.ndarray of int64, shape (B, k)

    Returns
    -------
    numpy.ndarray of float64, shape (B,)
        1.0 for rows whose exact list is empty.
    """
    hit = ((approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).any(1).sum(1)
    valid = (exact >= 0).sum(1)
    return np.where(valid > 0, hit / np.maximum(valid, 1), 1.0)
