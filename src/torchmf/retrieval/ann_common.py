"""Pieces the approximate indexes share: the optional import, exclusion filtering, recall."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["filter_excluded", "import_faiss", "recall_at"]


def import_faiss() -> Any:
    """The ``faiss`` module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("approximate retrieval needs faiss: pip install 'torchmf[ann]' (or faiss-cpu)") from exc
    return faiss


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
