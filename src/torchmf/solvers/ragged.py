"""Rows of a sparse matrix as padded, degree-bucketed dense blocks.

ALS needs, for every user, the factors of the items that user rated (and the
reverse). Gathering them into padded ``(rows, max_degree, k)`` blocks turns the
per-row sums into batched matrix products that run at BLAS speed. Rows are
sorted by degree and cut into buckets so that padding stays small even when a
few rows are very long (power users, blockbuster items).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Bucket", "bucketize"]


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
) -> list[Bucket]:
    """Group the entries of a sparse matrix by row into padded buckets.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (nnz,)
    vals : numpy.ndarray of float32, shape (nnz,)
    n_rows, n_cols : int
        Matrix shape. Rows without entries are left out.
    device : torch.device
    max_elements : int
        Upper bound on ``B * L`` per bucket, which bounds memory of the
        ``(B, L, k)`` blocks callers build.
    growth : float
        A bucket ends when its longest row would exceed ``growth`` times its
        shortest, so padding wastes less than ``1 - 1/growth`` of the block.

    Returns
    -------
    list of Bucket
    """
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(counts)])
    by_degree = np.argsort(counts, kind="stable")
    by_degree = by_degree[counts[by_degree] > 0]
    buckets: list[Bucket] = []
    i = 0
    while i < len(by_degree):
        lo = counts[by_degree[i]]
        j = i
        # extend while rows are not much longer than the first and the block fits
        while j < len(by_degree):
            length = counts[by_degree[j]]
            if length > growth * lo + 8 or (j - i + 1) * length > max_elements:
                break
            j += 1
        j = max(j, i + 1)
        members = by_degree[i:j]
        width = int(counts[members].max())
        offsets = np.arange(width)[None, :]
        valid = offsets < counts[members][:, None]
        flat = np.minimum(starts[members][:, None] + offsets, len(cols) - 1)
        c = np.where(valid, cols[flat], n_cols)
        v = np.where(valid, vals[flat], 0.0).astype(np.float32)
        buckets.append(
            Bucket(
                rows=torch.as_tensor(members, dtype=torch.long, device=device),
                cols=torch.as_tensor(c, dtype=torch.long, device=device),
                vals=torch.as_tensor(v, device=device),
                mask=torch.as_tensor(valid.astype(np.float32), device=device),
                counts=torch.as_tensor(counts[members].astype(np.float32), device=device),
            )
        )
        i = j
    return buckets
