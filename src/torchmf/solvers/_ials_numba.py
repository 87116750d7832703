"""The numba kernels behind :mod:`torchmf.solvers.ials_cpu` (imported only when they run).

:func:`cg_chunks` runs every row of some fixed chunks of one side through its
warm-started conjugate-gradient steps (:func:`torchmf.solvers.cg.cg_rows`, the
same recurrence), each row on its own, reading the other side's factors
straight from the CSR pattern. It releases the GIL (``nogil``): the caller's
Python threads run chunks side by side, which avoids numba's parallel
machinery and its ~70 MB. A row's solve touches no other row, so the factors
do not depend on the thread count; the loss is summed per chunk, then over the
chunks in order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from torchmf.solvers._numba_util import prefetch_row as _prefetch_row

__all__ = ["cg_chunks", "pattern_transpose"]

_AHEAD = 16  # pairs ahead whose factor rows are asked for while the current four are scored

# reassociation lets LLVM vectorise the length-k dot products and updates; no NaN/Inf assumptions
_FAST = {"reassoc", "contract", "nsz"}


@njit(inline="always")
def _coef(c, a0, y, residual):
    return (c - (c - a0) * y) if residual else (c - a0) * y


@njit(inline="always", fastmath=_FAST)
def _data_term(indptr, cols, conf, c0, a0, other, v, out, residual, row):
    """``out = F^T (c - w * (F v))`` (residual) or ``F^T (w * (F v))`` for one row; ``w = c - a0``.

    Four pairs at a time: their dot products are independent chains the CPU overlaps (one
    chain's horizontal sum would otherwise stall each pair), and ``out`` is read and written
    once per four pairs.
    """
    k = v.shape[0]
    for t in range(k):
        out[t] = 0.0
    e, end = indptr[row], indptr[row + 1]
    while e + 4 <= end:
        j0, j1, j2, j3 = cols[e], cols[e + 1], cols[e + 2], cols[e + 3]
        if e + 4 + _AHEAD <= end:  # the rows a few groups ahead miss the cache on the long side
            _prefetch_row(other, np.intp(cols[e + _AHEAD]))
            _prefetch_row(other, np.intp(cols[e + _AHEAD + 1]))
            _prefetch_row(other, np.intp(cols[e + _AHEAD + 2]))
            _prefetch_row(other, np.intp(cols[e + _AHEAD + 3]))
        y0 = y1 = y2 = y3 = np.float32(0.0)
        for t in range(k):
            vt = v[t]
            y0 += other[j0, t] * vt
            y1 += other[j1, t] * vt
            y2 += other[j2, t] * vt
            y3 += other[j3, t] * vt
        if c0 > 0:
            k0 = _coef(c0, a0, y0, residual)
            k1 = _coef(c0, a0, y1, residual)
            k2 = _coef(c0, a0, y2, residual)
            k3 = _coef(c0, a0, y3, residual)
        else:
            k0 = _coef(np.float32(conf[e]), a0, y0, residual)
            k1 = _coef(np.float32(conf[e + 1]), a0, y1, residual)
            k2 = _coef(np.float32(conf[e + 2]), a0, y2, residual)
            k3 = _coef(np.float32(conf[e + 3]), a0, y3, residual)
        for t in range(k):
            out[t] += k0 * other[j0, t] + k1 * other[j1, t] + k2 * other[j2, t] + k3 * other[j3, t]
        e += 4
    while e < end:
        j = cols[e]
        c = c0 if c0 > 0 else np.float32(conf[e])
        y = np.float32(0.0)
        for t in range(k):
            y += other[j, t] * v[t]
        coef = _coef(c, a0, y, residual)
        for t in range(k):
            out[t] += coef * other[j, t]
        e += 1


@njit(inline="always", fastmath=_FAST)
def _add_gram(gram, v, lam, out, sign):
    """``out += sign * (gram v + lam v)`` (gram symmetric: read by rows, added as columns)."""
    k = v.shape[0]
    for u in range(k):
        s = sign * v[u]
        for t in range(k):
            out[t] += gram[u, t] * s
    for t in range(k):
        out[t] += sign * lam * v[t]


@njit(inline="always", fastmath=_FAST)
def _dot(a, b):
    s = np.float32(0.0)
    for t in range(a.shape[0]):
        s += a[t] * b[t]
    return s


@njit(nogil=True, cache=True, fastmath=_FAST)
def cg_chunks(indptr, cols, conf, c0, a0, lam, gram, other, x, steps, bounds, partial, with_loss, first, last):
    """``steps`` warm-started CG steps on every non-empty row of chunks ``first .. last - 1`` of ``x`` (in place).

    Parameters
    ----------
    indptr : int array, shape (n + 1,); cols : int array, shape (nnz,)
        The side's pairs in CSR order (columns index ``other``).
    conf : float array, shape (nnz,)
        Confidence of each pair; unused (may be empty) when ``c0 > 0``, every pair's confidence.
    a0 : float32
        The unobserved weight.
    lam : float32 array, shape (n,)
    gram : float32 array, shape (k, k)
        ``a0 * other^T other``.
    other : float32 array, shape (n_other, k); x : float32 array, shape (n, k)
    steps : int
    bounds : int64 array, shape (C + 1,)
        Row bounds of the fixed chunks (parallel work units and loss partial sums).
    partial : float64 array, shape (C,)
        Out: each chunk's ``sum c (1 - y)^2 - a0 y^2`` at the new factors (with_loss).
    first, last : int
        The chunks this call solves.
    """
    k = x.shape[1]
    for ch in range(first, last):
        r = np.empty(k, np.float32)
        p = np.empty(k, np.float32)
        ap = np.empty(k, np.float32)
        xr = np.empty(k, np.float32)
        tot = 0.0
        for row in range(bounds[ch], bounds[ch + 1]):
            if indptr[row + 1] == indptr[row]:
                continue  # no pairs: left as it is
            for t in range(k):
                xr[t] = x[row, t]
            lr = lam[row]
            # r0 = b - A x0 = F^T (c - w * (F x0)) - (gram + lam) x0
            _data_term(indptr, cols, conf, c0, a0, other, xr, r, True, row)
            _add_gram(gram, xr, lr, r, np.float32(-1.0))
            for t in range(k):
                p[t] = r[t]
            rs = _dot(r, r)
            for step in range(steps):
                _data_term(indptr, cols, conf, c0, a0, other, p, ap, False, row)
                _add_gram(gram, p, lr, ap, np.float32(1.0))
                alpha = rs / max(_dot(p, ap), np.float32(1e-30))
                for t in range(k):
                    xr[t] += alpha * p[t]
                if step == steps - 1:
                    break
                for t in range(k):
                    r[t] -= alpha * ap[t]
                rs_new = _dot(r, r)
                beta = rs_new / max(rs, np.float32(1e-30))
                for t in range(k):
                    p[t] = r[t] + beta * p[t]
                rs = rs_new
            for t in range(k):
                x[row, t] = xr[t]
            if with_loss:
                for e in range(indptr[row], indptr[row + 1]):
                    j = cols[e]
                    c = c0 if c0 > 0 else np.float32(conf[e])
                    y = np.float32(0.0)
                    for t in range(k):
                        y += other[j, t] * xr[t]
                    tot += c * (1.0 - y) * (1.0 - y) - a0 * y * y
        partial[ch] = tot


@njit(cache=True)
def pattern_transpose(indptr, cols, n_cols, out_indptr, out_rows):
    """The transpose of a CSR pattern (no values): ``out_indptr`` (n_cols + 1,) and ``out_rows`` (nnz,).

    A counting sort in two passes; rows come out ascending within each column. No position or
    value array is made (scipy's CSR -> CSC needs one of the pairs' size).
    """
    out_indptr[:] = 0
    for e in range(len(cols)):
        out_indptr[cols[e] + 1] += 1
    for c in range(n_cols):
        out_indptr[c + 1] += out_indptr[c]
    fill = out_indptr[:-1].copy()
    for r in range(len(indptr) - 1):
        for e in range(indptr[r], indptr[r + 1]):
            c = cols[e]
            out_rows[fill[c]] = r
            fill[c] += 1
