"""Implicit ALS (iALS): weighted squared loss over all user-item pairs.

The objective is Hu, Koren & Volinsky (2008) with the unobserved weight and
frequency-scaled regularisation of Rendle et al. (2022)::

    L = sum_{(u,i) observed} c_ui (1 - p_u . q_i)^2
        + a0 * sum_{(u,i) not observed} (p_u . q_i)^2
        + reg * sum_u (n_u + a0 * n_items)^nu |p_u|^2  +  (same for items)

with confidence ``c_ui = 1 + alpha * t(value)`` and ``a0 = unobserved_weight``.
With the items fixed, user ``u``'s factors solve ``A_u p_u = b_u`` where (the
Gramian trick: the all-pairs term never touches the ``n_users x n_items`` matrix)::

    A_u = a0 * Q^T Q + sum_{i in I_u} (c_ui - a0) q_i q_i^T + lam_u I,
    b_u = sum_{i in I_u} c_ui q_i,   lam_u = reg * (n_u + a0 * n_items)^nu.

Rows are solved bucket by bucket (:mod:`torchmf.solvers.ragged`), either
exactly (batched Cholesky, forming every ``A_u``) or by a few warm-started
conjugate-gradient steps that never form ``A_u``: a CG matrix-vector product
costs ``O(n_u k)`` instead of the ``O(n_u k^2)`` of building ``A_u``, which is
what makes CG the fast path at ``k = 64`` and above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from torchmf.solvers.ragged import bucketize

__all__ = [
    "IALSBlock", "IALSSettings", "confidence", "ials_blocks", "ials_half_sweep", "ials_loss", "ials_penalty",
    "ials_solve_rows",
]

# Entries per bucket, times k floats, is the size of the gathered factor block.
# About 8 MB keeps a block (and its transposed copy) in the last-level cache
# across the CG steps while leaving few enough buckets that per-op overhead
# stays small.
_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class IALSSettings:
    """Hyperparameters of an iALS fit (validated by the estimator)."""

    reg: float
    reg_exponent: float
    unobserved_weight: float
    cg_steps: int


def confidence(values: np.ndarray, alpha: float, transform: str, eps: float) -> np.ndarray:
    """Confidence ``c = 1 + alpha * t(value)`` of observed pairs.

    Parameters
    ----------
    values : numpy.ndarray, shape (nnz,)
        Interaction strengths (1 for plain implicit data).
    alpha : float
    transform : {"linear", "log"}
        ``t(v) = v`` or ``t(v) = log(1 + v / eps)`` (Hu et al.'s damped variant).
    eps : float

    Returns
    -------
    numpy.ndarray of float32, shape (nnz,)
    """
    v = np.asarray(values, dtype=np.float64)
    if transform == "linear":
        t = v
    elif transform == "log":
        t = np.log1p(np.maximum(v, 0.0) / eps)
    else:
        raise ValueError(f"confidence must be 'linear' or 'log', got {transform!r}")
    return (1.0 + alpha * t).astype(np.float32)


def ials_penalty(counts: torch.Tensor, n_other: int, s: IALSSettings) -> torch.Tensor:
    """Per-row ridge ``reg * (n_u + a0 * n_other) ** nu``, shape like ``counts``."""
    return s.reg * (counts + s.unobserved_weight * n_other).pow(s.reg_exponent)


@dataclass(frozen=True)
class IALSBlock:
    """One degree bucket with everything a sweep reuses precomputed.

    Attributes
    ----------
    rows : torch.LongTensor, shape (B,)
    cols : torch.LongTensor, shape (B * L,)
        Flattened column indices; padding points at ``n_cols`` (a zero row).
    conf : torch.Tensor, shape (B, 1, L)
        Confidence ``c``; 0 in padding.
    weight : torch.Tensor, shape (B, 1, L)
        ``c - a0``, the weight of the rank-one corrections; 0 in padding.
    lam : torch.Tensor, shape (B, 1)
        Ridge penalty of each row.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    conf: torch.Tensor
    weight: torch.Tensor
    lam: torch.Tensor


def ials_blocks(
    rows: np.ndarray,
    cols: np.ndarray,
    conf: np.ndarray,
    n_rows: int,
    n_cols: int,
    k: int,
    device: torch.device,
    s: IALSSettings,
    dtype: torch.dtype = torch.float32,
) -> list[IALSBlock]:
    """Degree buckets of one side, sized so that a gathered ``(B, L, k)`` block is about 8 MB.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (nnz,)
    conf : numpy.ndarray, shape (nnz,)
        Confidences (see :func:`confidence`).
    n_rows, n_cols : int
    k : int
        Factors; sets the bucket size.
    device : torch.device
    s : IALSSettings
    dtype : torch.dtype
        Of the precomputed weights (the factors' dtype).
    """
    buckets = bucketize(rows, cols, conf, n_rows, n_cols, device, max_elements=max(4096, _BLOCK_BYTES // (4 * k)))
    out = []
    for b in buckets:
        c = b.vals.to(dtype).unsqueeze(1)
        w = (c - s.unobserved_weight) * b.mask.to(dtype).unsqueeze(1)
        lam = ials_penalty(b.counts.to(dtype), n_cols, s).unsqueeze(1)
        out.append(IALSBlock(b.rows, b.cols.reshape(-1), c, w, lam))
    return out


def ials_solve_rows(
    feats: torch.Tensor,
    conf: torch.Tensor,
    weight: torch.Tensor,
    gram: torch.Tensor,
    lam: torch.Tensor,
    init: torch.Tensor | None,
    cg_steps: int,
) -> torch.Tensor:
    """Solve ``A_b x_b = b_b`` for a batch of rows with a shared Gramian.

    ``A_b = gram + F_b^T diag(weight_b) F_b + lam_b I`` and ``b_b = F_b^T conf_b``.

    Parameters
    ----------
    feats : torch.Tensor, shape (B, L, k)
        Other side's factors of each row's entries.
    conf : torch.Tensor, shape (B, 1, L)
        Confidence of each entry, 0 in padding.
    weight : torch.Tensor, shape (B, 1, L)
        ``conf - a0`` of each entry, 0 in padding.
    gram : torch.Tensor, shape (k, k)
        ``a0 * F^T F`` over the whole other side.
    lam : torch.Tensor, shape (B, 1)
        Ridge penalty of each row.
    init : torch.Tensor, shape (B, k), optional
        Warm start for CG; overwritten with the result. None solves exactly.
    cg_steps : int
        0 (or no ``init``) solves exactly by Cholesky; else that many CG steps.

    Returns
    -------
    torch.Tensor, shape (B, k)
    """
    # (B,1,k) @ (B,k,L) on a transposed view: on CPU this is several times
    # faster than the textbook (B,L,k) @ (B,k,1), which misses MKL's fast path
    ft = feats.transpose(1, 2)
    if cg_steps <= 0 or init is None:
        rhs = torch.bmm(conf, feats).squeeze(1)
        A = torch.bmm(ft * weight, feats).add_(gram)
        A.diagonal(dim1=1, dim2=2).add_(lam)
        chol, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):  # only for degenerate input; LU copes
            return torch.linalg.solve(A, rhs)
        return torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)
    x = init
    # r0 = b - A x0 in two passes over the block instead of three:
    # F^T (c - w * (F x0)) - (gram + lam) x0
    scores = torch.addcmul(conf, weight, torch.bmm(x.unsqueeze(1), ft), value=-1.0)
    r = torch.bmm(scores, feats).squeeze(1).addmm_(x, gram, alpha=-1.0).addcmul_(lam, x, value=-1.0)
    p = r.clone()
    rs = torch.linalg.vecdot(r, r).unsqueeze(1)
    for step in range(cg_steps):
        ap = torch.bmm(torch.bmm(p.unsqueeze(1), ft).mul_(weight), feats).squeeze(1)
        ap.addmm_(p, gram).addcmul_(lam, p)
        alpha = rs / torch.linalg.vecdot(p, ap).unsqueeze(1).clamp_min_(1e-30)
        x.addcmul_(alpha, p)
        if step == cg_steps - 1:
            break
        r.addcmul_(alpha, ap, value=-1.0)
        rs_new = torch.linalg.vecdot(r, r).unsqueeze(1)
        p.mul_(rs_new / rs.clamp_min(1e-30)).add_(r)
        rs = rs_new
    return x


def ials_half_sweep(
    blocks: list[IALSBlock],
    factors: torch.Tensor,
    other: torch.Tensor,
    s: IALSSettings,
    with_loss: bool = False,
) -> float:
    """Re-solve every row of one side in place, the other side fixed.

    Parameters
    ----------
    blocks : list of IALSBlock
        This side's rows (:func:`ials_blocks`); ``cols`` index ``other``.
    factors : torch.Tensor, shape (n, k)
        Updated in place (rows without entries are left as they are).
    other : torch.Tensor, shape (n_other, k)
    s : IALSSettings
    with_loss : bool
        Also return the observed-pairs part of the loss at the new factors,
        ``sum c (1 - y)^2 - a0 y^2`` (see :func:`ials_loss`); 0.0 otherwise.

    Returns
    -------
    float
    """
    k = other.shape[1]
    gram = (other.T @ other).mul_(s.unobserved_weight)
    padded = torch.cat([other, other.new_zeros(1, k)])  # padding cols point at the zero row
    size = max(b.cols.numel() for b in blocks) if blocks else 0
    buf = other.new_empty(size * k)  # reused: one fresh block per bucket would page-fault each time
    observed = torch.zeros((), dtype=torch.float64, device=other.device)
    for b in blocks:
        B, L = len(b.rows), b.conf.shape[2]
        feats = buf[: B * L * k].view(B, L, k)
        torch.index_select(padded, 0, b.cols, out=feats.view(B * L, k))
        x = ials_solve_rows(feats, b.conf, b.weight, gram, b.lam, factors.index_select(0, b.rows), s.cg_steps)
        factors.index_copy_(0, b.rows, x)
        if with_loss:
            y = torch.bmm(x.unsqueeze(1), feats.transpose(1, 2))  # (B, 1, L); 0 in padding
            observed += (b.conf * (1 - y).square() - s.unobserved_weight * y.square()).sum()
    return float(observed)


def ials_loss(observed: float, P: torch.Tensor, Q: torch.Tensor, user_counts: torch.Tensor,
              item_counts: torch.Tensor, s: IALSSettings) -> float:
    """Full iALS objective from the observed part of :func:`ials_half_sweep`.

    ``a0 * sum_all y^2 = a0 * <P^T P, Q^T Q>`` costs two ``k x k`` Gramians,
    so the all-pairs term is exact without scoring all pairs.

    Parameters
    ----------
    observed : float
    P : torch.Tensor, shape (n_users, k)
    Q : torch.Tensor, shape (n_items, k)
    user_counts, item_counts : torch.Tensor, shapes (n_users,), (n_items,)
        Observed pairs per row (float).
    s : IALSSettings
    """
    all_pairs = s.unobserved_weight * float(((P.T @ P) * (Q.T @ Q)).sum())
    reg_u = float((ials_penalty(user_counts, Q.shape[0], s) * P.square().sum(1)).sum())
    reg_i = float((ials_penalty(item_counts, P.shape[0], s) * Q.square().sum(1)).sum())
    return observed + all_pairs + reg_u + reg_i
