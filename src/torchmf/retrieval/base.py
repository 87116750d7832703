"""The retrieval seam: an :class:`Index` answers "best k items for these query vectors".

Scores are inner products plus an item bias plus a per-query offset, the
shape of every model in :mod:`torchmf.nn`. Exact search
(:class:`~torchmf.retrieval.exact.ExactIndex`) scores every item;
approximate indexes implement the same protocol. Exclusions (seen items) and
candidate subsets are index arguments, so every caller filters the same way.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["CSR", "Index", "csr_rows", "csr_union"]

# (indptr of shape (B + 1,), indices): row b's entries are indices[indptr[b]:indptr[b + 1]]
CSR = tuple[np.ndarray, np.ndarray]


@runtime_checkable
class Index(Protocol):
    """Top-k items for query vectors.

    Attributes
    ----------
    kind : str
        "exact", "hnsw", ...
    n_items : int
    """

    kind: ClassVar[str]
    n_items: int

    def search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        offsets: torch.Tensor | None = None,
        exclude: CSR | None = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items per query.

        Parameters
        ----------
        queries : torch.Tensor, shape (B, d)
        k : int
        offsets : torch.Tensor, shape (B,), optional
            Added to every score of the query (user bias plus global mean).
        exclude : (indptr (B + 1,), indices), optional
            Item indices never returned for each query (seen items).
        candidates : numpy.ndarray of int64, shape (M,), optional
            Only these items are ranked.

        Returns
        -------
        items : numpy.ndarray of int64, shape (B, k)
            Best first; -1 pads rows with fewer than ``k`` eligible items.
        scores : numpy.ndarray of float32, shape (B, k)
            ``-inf`` where padded.
        """


def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> CSR:
    """The CSR made of rows ``rows`` (in that order) of ``(indptr, indices)``, without a Python loop."""
    rows = np.asarray(rows)
    n = len(indptr) - 1
    if len(rows) == n and n and rows[0] == 0 and rows[-1] == n - 1 and np.array_equal(rows, np.arange(n)):
        return np.asarray(indptr, dtype=np.int64), np.asarray(indices)  # every row in order: as it is
    starts, ends = indptr[rows], indptr[rows + 1]
    counts = ends - starts
    new_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pos = np.arange(new_ptr[-1]) - np.repeat(new_ptr[:-1], counts) + np.repeat(starts, counts)
    return new_ptr, np.asarray(indices)[pos]


def csr_union(a: CSR, b: CSR) -> CSR:
    """Row-wise concatenation of two CSRs with the same number of rows (repeats are harmless to masking)."""
    ca, cb = np.diff(a[0]), np.diff(b[0])
    indptr = np.concatenate([[0], np.cumsum(ca + cb)]).astype(np.int64)
    rows = np.concatenate([np.repeat(np.arange(len(ca)), ca), np.repeat(np.arange(len(cb)), cb)])
    vals = np.concatenate([a[1], b[1]])
    return indptr, vals[np.argsort(rows, kind="stable")]
