"""How iALS lays out one side's observed pairs for its half-sweeps (:func:`ials_side`).

The kernels that read these layouts are in :mod:`torchmf.solvers.ials` and
:mod:`torchmf.solvers.cg`. Memory matters here (issue 12): a side built from
CSR arrays (:func:`ials_side_csr`) shares them instead of copying, fills the
gathered layout block by block, and leaves out what its sweeps never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from torchmf.data.csr import csr_order
from torchmf.device import EXACT_BLOCK_BYTES, MIN_CHUNK_ENTRIES, chunk_bytes, prefer_csr
from torchmf.solvers.cg import CSRPairs, IALSChunk, gathered_chunks
from torchmf.solvers.ragged import Bucket, bucketize

__all__ = ["IALSSettings", "IALSSide", "exact_buckets", "ials_penalty", "ials_side", "ials_side_csr"]


@dataclass(frozen=True)
class IALSSettings:
    """Hyperparameters of an iALS fit (validated by the estimator)."""

    reg: float
    reg_exponent: float
    unobserved_weight: float
    cg_steps: int


def ials_penalty(counts: torch.Tensor, n_other: int, s: IALSSettings) -> torch.Tensor:
    """Per-row ridge ``reg * (n_u + a0 * n_other) ** nu``, shape like ``counts``."""
    return s.reg * (counts + s.unobserved_weight * n_other).pow(s.reg_exponent)


@dataclass(frozen=True)
class IALSSide:
    """One side's observed pairs, laid out for its half-sweeps.

    Attributes
    ----------
    crow : torch.IntTensor, shape (n + 1,)
        None, as are ``col``, ``conf``, ``pairs`` and ``order``, on a gathered
        side laid out with ``keep_pairs=False`` (the sweeps read only ``chunks``).
        int32 (int64 only past 2**31 pairs or rows), as are ``col`` and ``order``.
    col : torch.IntTensor, shape (nnz,)
        CSR structure of the ``n x n_other`` matrix of observed pairs
        (columns sorted within a row).
    conf : torch.Tensor, shape (nnz,)
        Confidence ``c`` of each pair, in CSR order.
    weight : torch.Tensor, shape (nnz,), optional
        ``c - a0``, the weight of the rank-one corrections (None when CG reads
        the gathered layout or solves are exact: those hold their own).
    lam : torch.Tensor, shape (n, 1)
        Ridge penalty of each row.
    empty : torch.LongTensor, shape (n_empty,)
        Rows without pairs: a sweep leaves them as they are.
    shape : tuple of int
        ``(n, n_other)``.
    pairs : CSRPairs
        The same pairs as sparse matrices, for the CSR layout and the loss
        (scores only, no product scratch, unless CG runs on this layout).
    order : torch.IntTensor, shape (nnz,)
        Input position of each pair in CSR order (maps scores between the two sides).
    chunks : tuple of IALSChunk, optional
        The gathered layout (:mod:`torchmf.solvers.cg`); None runs CG on the CSR form.
    exact : list of Bucket, optional
        Degree buckets for exact (Cholesky) solves, built when the settings
        ask for them (``cg_steps`` 0).
    """

    crow: torch.Tensor | None
    col: torch.Tensor | None
    conf: torch.Tensor | None
    weight: torch.Tensor | None
    lam: torch.Tensor
    empty: torch.Tensor
    shape: tuple[int, int]
    pairs: CSRPairs | None
    order: torch.Tensor | None
    chunks: tuple[IALSChunk, ...] | None = None
    exact: list[Bucket] | None = None


def ials_side(
    rows: np.ndarray,
    cols: np.ndarray,
    conf: np.ndarray,
    n_rows: int,
    n_cols: int,
    k: int,
    device: torch.device,
    s: IALSSettings,
    dtype: torch.dtype = torch.float32,
    layout: str = "auto",
    n_other: int | None = None,
) -> IALSSide:
    """Lay out one side (rows index this side, cols the other) for :func:`ials_half_sweep`.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (nnz,)
        Observed pairs; no pair may repeat.
    conf : numpy.ndarray, shape (nnz,)
        Confidences (see :func:`confidence`).
    n_rows, n_cols : int
    k : int
        Factors.
    device : torch.device
    s : IALSSettings
    dtype : torch.dtype
        Of the precomputed weights (the factors' dtype).
    layout : {"auto", "csr", "gathered"}
        How CG reads the pairs (see :mod:`torchmf.solvers.cg`). "auto"
        takes CSR on the CPU while the other side's factors are small enough
        to stay in cache and rows hold 32 pairs or more on average, else the
        gathered buckets.
    n_other : int, optional
        Size of the whole other side, for the ridge penalty (default
        ``n_cols``); a sharded fit whose columns index a compact table of only
        the referenced rows passes the full count.
    """
    if layout not in ("auto", "csr", "gathered"):
        raise ValueError(f"layout must be 'auto', 'csr' or 'gathered', got {layout!r}")
    crow, order = csr_order(rows, cols, n_rows, n_cols)
    return ials_side_csr(crow, np.asarray(cols)[order], conf, n_rows, n_cols, k, device, s, dtype, layout, n_other,
                         order=order)


def ials_side_csr(
    indptr: np.ndarray,
    cols: np.ndarray,
    conf: np.ndarray,
    n_rows: int,
    n_cols: int,
    k: int,
    device: torch.device,
    s: IALSSettings,
    dtype: torch.dtype = torch.float32,
    layout: str = "auto",
    n_other: int | None = None,
    order: np.ndarray | None = None,
    conf_map: Callable[[np.ndarray], np.ndarray] | None = None,
    keep_pairs: bool = True,
) -> IALSSide:
    """:func:`ials_side` of pairs already in CSR order: nothing sorted, the arrays shared where they can be.

    Parameters
    ----------
    indptr : numpy.ndarray of int, shape (n_rows + 1,)
    cols : numpy.ndarray of int, shape (nnz,)
        Columns of each row, ascending within a row (none repeated); int32
        columns on the CPU are shared with the layout, not copied.
    conf : numpy.ndarray, shape (nnz,)
        Confidences, in the input order ``order`` reads them from (the same
        order when it is None).
    n_rows, n_cols, k, device, s, dtype, layout, n_other
        See :func:`ials_side`.
    order : numpy.ndarray of int, shape (nnz,), optional
        Input position of each CSR entry (identity when None); kept as :attr:`IALSSide.order`.
    conf_map : callable, optional
        Turns ``conf`` into confidences (:func:`confidence` with the fit's
        settings), block by block where the layout allows: the gathered layout
        then never holds a pair-sized array besides its own.
    keep_pairs : bool
        False leaves the CSR form out of a side CG reads gathered (``crow``,
        ``col``, ``conf``, ``pairs`` and ``order`` None): about 12 bytes a
        pair less, for callers that never call :func:`ials_observed` on it.
    """
    if layout not in ("auto", "csr", "gathered"):
        raise ValueError(f"layout must be 'auto', 'csr' or 'gathered', got {layout!r}")
    itemsize = torch.finfo(dtype).bits // 8
    nnz = len(cols)
    counts = np.diff(indptr)
    if layout == "auto":
        use_csr = prefer_csr(nnz, int(np.count_nonzero(counts)), n_cols, k, itemsize, device)
        layout = "csr" if use_csr else "gathered"
    lam = ials_penalty(torch.as_tensor(counts, device=device).to(dtype), n_cols if n_other is None else n_other,
                       s).unsqueeze(1)
    empty = torch.as_tensor(np.flatnonzero(counts == 0), device=device)
    del counts
    if s.cg_steps > 0 and layout == "gathered":
        max_entries = max(MIN_CHUNK_ENTRIES, chunk_bytes(device) // (itemsize * k))
        chunks = gathered_chunks(indptr, cols, conf, lam, s.unobserved_weight, n_cols, max_entries, device, dtype,
                                 order=order, conf_map=conf_map)
        if not keep_pairs:
            return IALSSide(None, None, None, None, lam, empty, (n_rows, n_cols), None, None, chunks=chunks)
    else:
        chunks = None
    conf = np.asarray(conf) if order is None else np.asarray(conf)[order]  # in CSR order, whole
    if conf_map is not None:
        conf = conf_map(conf)
    exact = None
    if s.cg_steps <= 0:
        exact = exact_buckets(None, cols, conf, n_rows, n_cols, k, device, itemsize, csr=(indptr, None))
    # 32-bit indices where they fit: half the memory of the pattern, same products
    index = np.int32 if max(nnz, n_rows, n_cols) < 2**31 else np.int64
    crow_t = torch.as_tensor(np.asarray(indptr).astype(index, copy=False), device=device)
    col_t = torch.as_tensor(np.asarray(cols).astype(index, copy=False), device=device)
    c = torch.as_tensor(np.asarray(conf), device=device).to(dtype)
    csr_cg = chunks is None and exact is None  # only CG on this layout needs the weights and product scratch
    weight = c - s.unobserved_weight if csr_cg else None
    if order is None:
        order = np.arange(nnz, dtype=index)
    return IALSSide(
        crow=crow_t,
        col=col_t,
        conf=c,
        weight=weight,
        lam=lam,
        empty=empty,
        shape=(n_rows, n_cols),
        pairs=CSRPairs.build(crow_t, col_t, c, weight, (n_rows, n_cols), products=csr_cg),
        order=torch.as_tensor(order.astype(index, copy=False), device=device),
        chunks=chunks,
        exact=exact,
    )


def exact_buckets(rows: np.ndarray | None, cols: np.ndarray, conf: np.ndarray, n_rows: int, n_cols: int, k: int,
                   device: torch.device, itemsize: int, csr: tuple[np.ndarray, np.ndarray | None] | None = None
                   ) -> list[Bucket]:
    """Degree buckets for exact solves, which form a k x k matrix per row: about 64 MB of them a bucket."""
    max_elements = max(4096, EXACT_BLOCK_BYTES // (itemsize * k * k))
    return bucketize(rows, cols, conf, n_rows, n_cols, device, max_elements=max_elements, csr=csr)
