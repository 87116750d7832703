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

Rows are solved either by a few warm-started conjugate-gradient steps that
never form ``A_u`` (a CG product costs ``O(n_u k)`` instead of the
``O(n_u k^2)`` of building ``A_u``; the default) or exactly, by batched
Cholesky over degree buckets (:mod:`torchmf.solvers.ragged`). CG reads the
pairs in one of two layouts, picked per side by :func:`ials_side`; see
:mod:`torchmf.solvers.cg`.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from torchmf.device import MIN_CHUNK_ENTRIES, chunk_bytes
from torchmf.solvers.cg import (
    IALSChunk,
    cg_rows,
    chunk_data_term,
    chunk_scores,
    each_chunk,
    padded_gather,
)
from torchmf.solvers.ials_layout import IALSSettings, IALSSide, exact_buckets, ials_penalty, ials_side, ials_side_csr

__all__ = [
    "IALSSettings", "IALSSide", "confidence", "ials_half_sweep", "ials_loss", "ials_observed", "ials_penalty",
    "ials_side", "ials_side_csr", "ials_solve_rows",
]

_CONF_BLOCK = 1 << 16


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
    if transform not in ("linear", "log"):
        raise ValueError(f"confidence must be 'linear' or 'log', got {transform!r}")
    values = np.asarray(values)
    out = np.empty(len(values), dtype=np.float32)
    # in float64 as before, block by block: the temporaries stay in cache instead
    # of costing fresh pages (3 float64 arrays of nnz at 50 M pairs: 1.2 GB)
    for start in range(0, len(values), _CONF_BLOCK):
        t = values[start : start + _CONF_BLOCK].astype(np.float64)
        if transform == "log":
            t = np.log1p(np.maximum(t, 0.0) / eps)
        out[start : start + _CONF_BLOCK] = 1.0 + alpha * t  # rounded to float32 as astype does
    return out


def ials_solve_rows(
    feats: torch.Tensor,
    conf: torch.Tensor,
    weight: torch.Tensor,
    gram: torch.Tensor,
    lam: torch.Tensor,
) -> torch.Tensor:
    """Solve ``A_b x_b = b_b`` exactly (batched Cholesky) for rows sharing a Gramian.

    ``A_b = gram + F_b^T diag(weight_b) F_b + lam_b I`` and ``b_b = F_b^T conf_b``.

    Parameters
    ----------
    feats : torch.Tensor, shape (B, L, k)
        Other side's factors of each row's entries; zeros in padding.
    conf : torch.Tensor, shape (B, 1, L)
        Confidence of each entry, 0 in padding.
    weight : torch.Tensor, shape (B, 1, L)
        ``conf - a0`` of each entry, 0 in padding.
    gram : torch.Tensor, shape (k, k)
        ``a0 * F^T F`` over the whole other side.
    lam : torch.Tensor, shape (B, 1)
        Ridge penalty of each row.

    Returns
    -------
    torch.Tensor, shape (B, k)
    """
    rhs = torch.bmm(conf, feats).squeeze(1)
    A = torch.bmm(feats.transpose(1, 2) * weight, feats).add_(gram)
    A.diagonal(dim1=1, dim2=2).add_(lam)
    chol, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):  # only for degenerate input; LU copes
        return torch.linalg.solve(A, rhs)
    return torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)


def _exact(side: IALSSide, other: torch.Tensor, gram: torch.Tensor, x: torch.Tensor, a0: float) -> None:
    """Exact solves of every non-empty row, bucket by bucket (:mod:`torchmf.solvers.ragged`)."""
    buckets = side.exact
    if buckets is None:  # laid out for CG (settings with cg_steps > 0): build the buckets now
        rows = torch.repeat_interleave(torch.arange(side.shape[0], device=x.device), side.crow.diff().long())
        buckets = exact_buckets(rows.cpu().numpy(), side.col.cpu().numpy(), side.conf.cpu().numpy(), *side.shape,
                                 other.shape[1], x.device, x.element_size())
    padded = torch.cat([other, other.new_zeros(1, other.shape[1])])  # padding cols point at the zero row
    for b in buckets:
        conf = b.vals.to(x.dtype).unsqueeze(1)
        weight = (conf - a0) * b.mask.to(x.dtype).unsqueeze(1)
        x[b.rows] = ials_solve_rows(padded[b.cols], conf, weight, gram, side.lam[b.rows])


def _gathered_cg(chunks: tuple[IALSChunk, ...], factors: torch.Tensor, other: torch.Tensor, gram: torch.Tensor,
                 s: IALSSettings, with_loss: bool) -> float:
    """CG chunk by chunk over gathered blocks (:func:`~torchmf.solvers.cg.each_chunk`); returns the observed loss."""
    k = other.shape[1]
    gather = padded_gather(other)  # padding cols point past the table: zero rows
    size = max((c.cols.numel() for c in chunks), default=0)
    # Chunks hold up to chunk_bytes of factors unless one row alone is longer (a blockbuster item: 600 k
    # pairs at 50 M, a 150 MB block). Those share one block, taken in turn, so workers never hold two.
    small = min(size, max(MIN_CHUNK_ENTRIES, chunk_bytes(other.device) // (other.element_size() * k)))
    bufs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per worker, reused: fresh blocks would page-fault
    big_lock = threading.Lock()
    terms: list[torch.Tensor | None] = [None] * len(chunks)

    def solve(j: int, worker: int) -> None:
        if chunks[j].cols.numel() > small:
            with big_lock:
                solve_in(j, -1, size)
        else:
            solve_in(j, worker, small)

    def solve_in(j: int, worker: int, room: int) -> None:
        if worker not in bufs:
            bufs[worker] = (other.new_empty(room * k), other.new_empty(room))
        buf, scores_buf = bufs[worker]
        c = chunks[j]
        E = c.cols.numel()
        feats, scores = buf[: E * k].view(E, k), scores_buf[:E]
        gather(c.cols, feats)
        x = factors.index_select(0, c.rows)
        cg_rows(x, gram, c.lam, s.cg_steps, chunk_data_term(c, feats, scores))
        factors.index_copy_(0, c.rows, x)
        if with_loss:  # padding has c = 0 and y = 0: it adds nothing
            y = chunk_scores(c, feats, x, scores)
            terms[j] = (c.conf * (1 - y).square() - s.unobserved_weight * y.square()).sum()

    each_chunk(len(chunks), solve, other.device)
    observed = torch.zeros((), dtype=torch.float64, device=other.device)
    for t in terms if with_loss else ():  # in chunk order, whichever worker solved which chunk
        observed += t
    return float(observed)


def ials_half_sweep(
    side: IALSSide,
    factors: torch.Tensor,
    other: torch.Tensor,
    s: IALSSettings,
    with_loss: bool = False,
    scores: torch.Tensor | None = None,
    gram: torch.Tensor | None = None,
) -> float:
    """Re-solve every row of one side in place, the other side fixed.

    Parameters
    ----------
    side : IALSSide
        This side's observed pairs (:func:`ials_side`); columns index ``other``.
    factors : torch.Tensor, shape (n, k)
        Updated in place (rows without pairs are left as they are).
    other : torch.Tensor, shape (n_other, k)
    s : IALSSettings
        ``cg_steps`` 0 solves exactly (Cholesky), else that many warm-started CG steps.
    with_loss : bool
        Also return the observed-pairs part of the loss at the new factors,
        ``sum c (1 - y)^2 - a0 y^2`` (see :func:`ials_loss`); 0.0 otherwise.
    scores : torch.Tensor, shape (nnz,), optional
        ``factors . other`` of every pair in this side's CSR order at the
        current factors, when the caller has them (:func:`ials_observed`
        after the other side's half-sweep): CG on the CSR layout then skips
        one of its products. Ignored by the other layouts.
    gram : torch.Tensor, shape (k, k), optional
        ``a0 * T^T T`` of the whole other table ``T``, when ``other`` holds
        only the rows this side references (a sharded fit's compact table);
        by default computed from ``other``.

    Returns
    -------
    float
    """
    if gram is None:
        gram = (other.T @ other).mul_(s.unobserved_weight)
    if s.cg_steps > 0 and side.chunks is not None:
        return _gathered_cg(side.chunks, factors, other, gram, s, with_loss)
    kept = factors[side.empty] if len(side.empty) else None
    if s.cg_steps > 0:
        cg_rows(factors, gram, side.lam, s.cg_steps, side.pairs.data_term(other, scores))
    else:
        _exact(side, other, gram, factors, s.unobserved_weight)
    if kept is not None:
        factors[side.empty] = kept
    return ials_observed(side, factors, other, s)[0] if with_loss else 0.0


def ials_observed(side: IALSSide, factors: torch.Tensor, other: torch.Tensor, s: IALSSettings
                  ) -> tuple[float, torch.Tensor]:
    """Observed-pairs part of the loss, ``sum c (1 - y)^2 - a0 y^2``, and the scores ``y``.

    Returns
    -------
    loss : float
    scores : torch.Tensor, shape (nnz,)
        ``factors . other`` of every pair in this side's CSR order.
    """
    y = side.pairs.scores(factors, other)
    # c (1 - y)^2 - a0 y^2 element by element as written, in two pair-sized buffers instead of five
    t = (1 - y).square_().mul_(side.conf)
    t.sub_(y.square().mul_(s.unobserved_weight))
    return float(t.sum(dtype=torch.float64)), y


def _row_norms(T: torch.Tensor, block: int = 1 << 13) -> torch.Tensor:
    """``T.square().sum(1)`` (shape (n,)) a block of rows at a time: no squared copy of the whole table."""
    out = T.new_empty(T.shape[0])
    for start in range(0, T.shape[0], block):
        torch.sum(T[start : start + block].square(), 1, out=out[start : start + block])
    return out


def ials_loss(observed: float, P: torch.Tensor, Q: torch.Tensor, user_side: IALSSide, item_side: IALSSide,
              s: IALSSettings) -> float:
    """Full iALS objective from the observed part of :func:`ials_half_sweep`.

    ``a0 * sum_all y^2 = a0 * <P^T P, Q^T Q>`` costs two ``k x k`` Gramians,
    so the all-pairs term is exact without scoring all pairs; the ridge terms
    use the per-row penalties the sides hold.

    Parameters
    ----------
    observed : float
    P : torch.Tensor, shape (n_users, k)
    Q : torch.Tensor, shape (n_items, k)
    user_side, item_side : IALSSide
        The layouts the sweeps ran on (:func:`ials_side`).
    s : IALSSettings
    """
    all_pairs = s.unobserved_weight * ((P.T @ P) * (Q.T @ Q)).sum()
    ridge = torch.linalg.vecdot(user_side.lam.squeeze(1), _row_norms(P)) + torch.linalg.vecdot(
        item_side.lam.squeeze(1), _row_norms(Q))
    return observed + float(all_pairs + ridge)
