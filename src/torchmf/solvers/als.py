"""Alternating least squares for explicit ratings, with biases.

The model is ``r_ui ~ mu + b_u + c_i + p_u . q_i`` with ``mu`` fixed at the
training mean. With the items fixed, each user's ``[p_u, b_u]`` is a ridge
regression on the items they rated, features ``[q_i, 1]`` and target
``r_ui - mu - c_i``; the items' step is the mirror image. Regularisation is
weighted-lambda (Zhou et al. 2008): row ``u`` is penalised by ``reg * n_u``,
which equals the per-rating penalty that SGD (Funk-SVD) applies, so the two
solvers minimise the same objective.

Each half-sweep solves every row at once, either bucket by bucket (see
:mod:`torchmf.solvers.ragged`: exactly by batched Cholesky, or by a few
warm-started conjugate-gradient steps on the formed ``k x k`` matrices), or,
where :func:`torchmf.device.prefer_csr` says so, by the same CG steps
without ever forming those matrices: two CSR kernels per step over the whole
side (an :class:`ALSSide` layout), several times less work at ``k = 48``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from torchmf.data.csr import csr_order
from torchmf.solvers.cg import CSRPairs, cg_rows
from torchmf.solvers.ragged import Bucket

__all__ = ["ALSSide", "als_half_sweep", "als_side", "ridge_rows"]


def ridge_rows(
    feats: torch.Tensor,
    target: torch.Tensor,
    lam: torch.Tensor,
    init: torch.Tensor | None = None,
    cg_steps: int = 0,
) -> torch.Tensor:
    """Solve ``(F_b^T F_b + diag(lam_b)) w_b = F_b^T t_b`` for a batch of rows.

    Parameters
    ----------
    feats : torch.Tensor, shape (B, L, m)
        Features of each row's entries (padding rows all zero).
    target : torch.Tensor, shape (B, L)
        Targets (zero in padding).
    lam : torch.Tensor, shape (B, m)
        Diagonal ridge penalty per row and dimension; must be positive.
    init : torch.Tensor, shape (B, m), optional
        Warm start for conjugate gradient.
    cg_steps : int
        0 solves exactly (Cholesky); otherwise that many CG steps from ``init``.

    Returns
    -------
    torch.Tensor, shape (B, m)
    """
    # bmm on a transposed view runs as one BLAS call per row, no copies
    ft = feats.transpose(1, 2)
    rhs = torch.bmm(ft, target.unsqueeze(2)).squeeze(2)
    gram = torch.bmm(ft, feats)
    gram.diagonal(dim1=1, dim2=2).add_(lam)
    if cg_steps <= 0:
        chol, info = torch.linalg.cholesky_ex(gram)
        if bool((info != 0).any()):  # only with degenerate input; fall back to LU
            return torch.linalg.solve(gram, rhs)
        return torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(gram, v.unsqueeze(2)).squeeze(2)

    x = torch.zeros_like(rhs) if init is None else init.clone()
    r = rhs - matvec(x)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    for _ in range(cg_steps):
        ap = matvec(p)
        alpha = rs / (p * ap).sum(1, keepdim=True).clamp_min(1e-20)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + (rs_new / rs.clamp_min(1e-20)) * p
        rs = rs_new
    return x


def als_half_sweep(
    layout: list[Bucket] | ALSSide,
    factors: torch.Tensor,
    bias: torch.Tensor | None,
    other_factors: torch.Tensor,
    other_bias: torch.Tensor | None,
    global_mean: float,
    reg: float,
    reg_bias: float,
    cg_steps: int = 0,
    reg_exponent: float = 1.0,
    with_loss: bool = False,
) -> float:
    """Re-solve every row of one side in place, the other side fixed.

    Parameters
    ----------
    layout : list of Bucket, or ALSSide
        This side's rows, as degree buckets (:func:`~torchmf.solvers.ragged.bucketize`;
        exact or CG solves on formed matrices) or in CSR form (:func:`als_side`;
        matrix-free CG, ``cg_steps`` >= 1, same iterates to rounding). Their
        columns index the other side.
    factors : torch.Tensor, shape (n, k)
        Updated in place.
    bias : torch.Tensor, shape (n,), optional
        Updated in place; None fits no biases.
    other_factors : torch.Tensor, shape (n_other, k)
    other_bias : torch.Tensor, shape (n_other,), optional
    global_mean : float
    reg, reg_bias : float
        Penalties for factors and biases, multiplied by ``n_u ** reg_exponent``.
    cg_steps : int
        See :func:`ridge_rows`.
    reg_exponent : float
        1 is weighted-lambda (SGD's per-rating penalty); 0 a plain ridge; values
        in between are the frequency-scaled regularisation of Rendle et al. (2022).

    with_loss : bool
        Also compute the training error after the update.

    Returns
    -------
    float
        With ``with_loss``, the sum of squared residuals over all entries after
        the update; 0.0 otherwise.
    """
    k = factors.shape[1]
    with_bias = bias is not None
    feats = other_factors
    if with_bias:
        feats = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], 1)
    per_dim = torch.full((feats.shape[1],), reg, dtype=feats.dtype, device=feats.device)
    if with_bias:
        per_dim[k] = reg_bias
    if isinstance(layout, ALSSide):
        if cg_steps <= 0:
            raise ValueError("the CSR layout solves by CG (cg_steps >= 1); exact solves need buckets")
        return _csr_half_sweep(layout, factors, bias, feats, other_bias, global_mean, per_dim, cg_steps, reg_exponent,
                               with_loss)
    sse = torch.zeros((), dtype=torch.float64, device=factors.device)
    # an all-zero row that padding entries point at
    feats = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
    offset = other_factors.new_zeros(other_factors.shape[0] + 1)
    if other_bias is not None:
        offset[:-1] = other_bias
    for b in layout:
        f = feats[b.cols]
        target = (b.vals - global_mean - offset[b.cols]) * b.mask
        lam = b.counts[:, None].pow(reg_exponent) * per_dim[None, :]
        init = None
        if cg_steps > 0:
            init = factors[b.rows] if not with_bias else torch.cat([factors[b.rows], bias[b.rows, None]], 1)
        w = ridge_rows(f, target, lam, init=init, cg_steps=cg_steps)
        factors[b.rows] = w[:, :k]
        if with_bias:
            bias[b.rows] = w[:, k]
        if with_loss:  # from the blocks already gathered; padding features and targets are zero
            resid = target - torch.bmm(f, w.unsqueeze(2)).squeeze(2)
            sse += resid.pow(2).sum()
    return float(sse)


@dataclass(frozen=True)
class ALSSide:
    """One side's ratings in CSR form, the layout :func:`als_half_sweep` runs matrix-free CG on.

    Attributes
    ----------
    pairs : CSRPairs
        The pattern; its ``conf`` values hold each half-sweep's targets.
    col : torch.LongTensor, shape (nnz,)
        Other side's row of each rating, in CSR order.
    ratings : torch.Tensor, shape (nnz,)
        In CSR order.
    counts : torch.Tensor, shape (n, 1)
        Ratings per row (float).
    """

    pairs: CSRPairs
    col: torch.Tensor
    ratings: torch.Tensor
    counts: torch.Tensor


def als_side(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int,
             device: torch.device, dtype: torch.dtype = torch.float32, indptr: np.ndarray | None = None) -> ALSSide:
    """Lay out one side (rows index this side, cols the other) in CSR order.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (nnz,)
        Rated pairs; no pair may repeat.
    vals : numpy.ndarray, shape (nnz,)
    n_rows, n_cols : int
    device : torch.device
    dtype : torch.dtype
    indptr : numpy.ndarray of int64, shape (n_rows + 1,), optional
        Row pointers of pairs that already come in CSR order (by row, then
        strictly by column): taken as they are, nothing sorted or checked.
    """
    if indptr is None:
        crow, order = csr_order(rows, cols, n_rows, n_cols)
        cols, vals = np.asarray(cols)[order], np.asarray(vals)[order]
    else:
        crow = indptr
    crow_t = torch.as_tensor(crow, device=device)
    col = torch.as_tensor(np.asarray(cols, dtype=np.int64), device=device)
    ratings = torch.as_tensor(np.asarray(vals), device=device).to(dtype)
    counts = torch.as_tensor(np.diff(crow), device=device).to(dtype).unsqueeze(1)
    return ALSSide(CSRPairs.build(crow_t, col, ratings.clone(), None, (n_rows, n_cols)), col, ratings, counts)


def _csr_half_sweep(
    side: ALSSide,
    factors: torch.Tensor,
    bias: torch.Tensor | None,
    feats: torch.Tensor,
    other_bias: torch.Tensor | None,
    global_mean: float,
    per_dim: torch.Tensor,
    cg_steps: int,
    reg_exponent: float,
    with_loss: bool,
) -> float:
    """:func:`als_half_sweep` on the CSR layout; ``feats`` already carries the bias column."""
    k = factors.shape[1]
    target = side.pairs.conf.values()  # rewritten in place: the CSR matrix reads it
    torch.sub(side.ratings, global_mean, out=target)
    if other_bias is not None:
        target.sub_(other_bias[side.col])
    lam = side.counts.pow(reg_exponent) * per_dim  # (n, m)
    x = torch.cat([factors, bias[:, None]], 1) if bias is not None else factors.clone()
    cg_rows(x, None, lam, cg_steps, side.pairs.data_term(feats))
    factors.copy_(x[:, :k])
    if bias is not None:
        bias.copy_(x[:, k])
    if not with_loss:
        return 0.0
    return float((target - side.pairs.scores(x, feats)).square().sum(dtype=torch.float64))
