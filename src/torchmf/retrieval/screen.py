"""Exact top-k for many queries at once, screened by a bfloat16 product.

Scoring every item for a large block of queries is a matrix product, and on
CPUs that multiply bfloat16 natively (:func:`torchmf.device.cpu_has_bf16_dot`)
a bfloat16 product runs about 3.5x faster than a float32 one. Its scores are
not the float32 scores, but they are never far from them, and by a margin that
can be computed. With ``a`` a query row ``[p, 1]`` and ``w`` an item row
``[q, b]`` (``n`` coordinates), bfloat16 rounds each coordinate to within a
relative ``u = 2**-8``; each product of rounded coordinates is exact in the
float32 accumulator, the ``n``-term float32 sum adds at most
``gamma = n * 2**-24`` relative to ``sum |a_k w_k|``, and rounding the result
to bfloat16 adds ``u`` again (``2u`` allowed, in case the library truncates
instead of rounding). So, with ``A = sum_k |a_k| |w_k| <= |a| |w|``::

    |score_bf16 - a . w| <= delta * A,   delta = 4u + 6u**2 + 2 * gamma   (0.0157 at n = 65)

``tests/test_screen.py`` checks the bound against the product itself on rows
built to stress it (wide dynamic range, cancellation).

The search therefore (1) scores every item in bfloat16 and keeps each row's
best ``k + margin`` (seen items excluded as in the float32 path; chosen by a
two-level search on the scores' bits read as int16, :func:`_int16_group_select`), (2) re-scores
those candidates exactly in float32, and (3) accepts a row when its k-th exact
score ``t`` exceeds ``c + delta * |a| * max_i |w_i|``, where ``c`` is the
lowest bfloat16 score kept: no item left out can then score ``t`` or more, so
the row's exact top-k is among the candidates. Rows that fail the test (none of
100,000 users of an iALS model fitted to the 5 M set of benchmarks/implicit_speed.py,
6-8 % on random factors: the slack is ~1.5 % of the score scale) are scored
again the float32 way by the caller. The result is the float32 search's, up to the order of scores that
float32 itself cannot tell apart.
"""

from __future__ import annotations

import torch

from torchmf.retrieval.base import CSR
from torchmf.retrieval.topk import GROUP, best_groups, mask_excluded

__all__ = ["MIN_SCREEN_QUERIES", "error_bound", "screened_top_k"]

# Below a few hundred queries a block is too small for the product to dominate (a single query
# reads the item table once, bound by memory, not arithmetic): float32 as before.
MIN_SCREEN_QUERIES = 256
_UNIT = 2.0**-8  # bfloat16's unit roundoff (8 significant bits)


def error_bound(width: int) -> float:
    """``delta`` of the module docstring for rows of ``width`` coordinates."""
    gamma = width * 2.0**-24
    return 4 * _UNIT + 6 * _UNIT**2 + 2 * gamma


def margin_for(k: int) -> int:
    """Candidates kept beyond ``k`` per row: enough that the test rarely fails, few enough to re-score cheaply."""
    return max(16, k)


def _int16_group_select(s: torch.Tensor, kc: int,
                        group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best ``kc`` entries of each row of bfloat16 ``s`` (R, n) by a two-level search on int16 keys.

    Reading a bfloat16 as an int16 keeps the order of non-negative numbers and puts every
    negative one (and -inf) below them, and int16 reductions are ~5x faster than bfloat16
    ones on the CPU. Group maxima by those keys are the true maxima for every group holding
    a non-negative score; so when a row's ``kc``-th best group key is non-negative the ``kc``
    best groups are the true ones and hold the row's best ``kc`` entries (the argument of
    ``topk.topk_rows``). Other rows are reported as not ``ok``.

    Returns
    -------
    values : torch.Tensor of float32, shape (R, kc)
        The entries, best first.
    cols : torch.Tensor of int64, shape (R, kc)
    ok : torch.Tensor of bool, shape (R,)
    """
    keys = s.view(torch.int16)
    gkey, cols, beyond = best_groups(keys, min(kc, -(-s.shape[1] // group)), group)
    ok = gkey[:, -1] >= 0
    cand = (torch.gather(keys, 1, cols).to(torch.int32) << 16).view(torch.float32)  # bfloat16 -> float32, exactly
    cand.masked_fill_(beyond, -torch.inf)
    values, pos = torch.topk(cand, kc, dim=1)
    return values, torch.gather(cols, 1, pos), ok


def screened_top_k(
    a: torch.Tensor,
    w16: torch.Tensor,
    w32: torch.Tensor,
    w_norm_max: float,
    k: int,
    exclude: CSR | None,
    start: int,
    buf: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of one block of augmented queries, screened in bfloat16.

    Parameters
    ----------
    a : torch.Tensor of float32, shape (R, n)
        Query rows ``[p, 1]`` (or ``[p]`` without item biases).
    w16, w32 : torch.Tensor, shape (n_items, n)
        Item rows ``[q, b]`` in bfloat16 and in float32.
    w_norm_max : float
        ``max_i |w32[i]|``.
    k : int
        At most a quarter of ``n_items``.
    exclude : (indptr, indices) or None
        Items to leave out, rows ``start .. start + R`` of the CSR belonging to this block.
    buf : torch.Tensor of bfloat16, at least ``R * n_items`` elements
        Scratch for the scores.

    Returns
    -------
    scores : torch.Tensor of float32, shape (R, k)
        Exact scores, best first (``-inf`` where fewer than ``k`` items are left).
    items : torch.Tensor of int64, shape (R, k)
    ok : torch.Tensor of bool, shape (R,)
        Rows whose result is proven exact; the others must be scored in float32.
    """
    R, n_items = a.shape[0], w16.shape[0]
    kc = min(n_items, k + margin_for(k))
    s = buf[: R * n_items].view(R, n_items)
    torch.matmul(a.to(torch.bfloat16), w16.T, out=s)
    if exclude is not None:
        mask_excluded(s, exclude, start, start + R, None)
    cand_s, cand_i, ok = _int16_group_select(s, kc)
    # exact float32 scores of the candidates; excluded ones (bf16 -inf) stay -inf
    exact = torch.bmm(w32[cand_i], a.unsqueeze(2)).squeeze(2)
    exact.masked_fill_(torch.isneginf(cand_s), -torch.inf)
    top_s, pos = torch.topk(exact, k, dim=1)
    top_i = torch.gather(cand_i, 1, pos)
    # every item left out scored <= low in bfloat16, so <= low + slack exactly; a row with a -inf
    # candidate kept every item that was not excluded
    low = cand_s[:, -1]
    slack = error_bound(a.shape[1]) * torch.linalg.vector_norm(a, dim=1) * w_norm_max
    ok &= torch.isneginf(low) | (low + slack < top_s[:, -1])
    return top_s, top_i, ok
