"""Rating and ranking metrics on index-level inputs, vectorised with torch.

Nothing here knows about models: rating metrics take predictions and targets,
ranking metrics take a matrix of recommended item indices and the relevant
items per user in CSR form. No Python loop runs over users.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from torchmf.checks import check_k

__all__ = ["coverage", "mae", "ranking_metrics", "rmse"]

RANKING_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")


# ---------------------------------------------------------------------- rating metrics
def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error ``sqrt(mean((pred - target) ** 2))``.

    Parameters
    ----------
    pred, target : array-like or Tensor, shape (n,), n >= 1

    Returns
    -------
    float
    """
    p, t = _pair(pred, target)
    return float(torch.sqrt(torch.mean((p - t) ** 2)))


def mae(pred: Any, target: Any) -> float:
    """Mean absolute error ``mean(|pred - target|)``.

    Parameters
    ----------
    pred, target : array-like or Tensor, shape (n,), n >= 1

    Returns
    -------
    float
    """
    p, t = _pair(pred, target)
    return float(torch.mean(torch.abs(p - t)))


# ---------------------------------------------------------------------- ranking metrics
def ranking_metrics(
    recommended: Any,
    relevant_indptr: Any,
    relevant_items: Any,
    k: int,
    n_items_known: int | None = None,
) -> dict[str, Any]:
    """Top-k ranking metrics for many users at once.

    Notation, for evaluated user ``u``: ``rec_u[1..k]`` are the first ``k``
    entries of ``recommended[u]``; ``R_u`` is u's relevant set with ``|R_u|``
    entries (entries equal to -1 count in ``|R_u|`` but can never be hit);
    ``hit_i = 1`` when ``rec_u[i] != -1``, ``rec_u[i]`` is in ``R_u`` and does
    not already appear in ``rec_u[1..i-1]`` (a repeated item counts once, at
    its first rank), else 0; ``hits = sum_i hit_i``; ranks ``i`` are 1-based.

    - ``precision@k = hits / k`` (padding -1 counts as a miss, k is not reduced)
    - ``recall@k = hits / |R_u|``
    - ``ndcg@k = DCG / IDCG`` with binary gains,
      ``DCG = sum_{i=1..k} hit_i / log2(i + 1)`` and
      ``IDCG = sum_{i=1..min(k, |R_u|)} 1 / log2(i + 1)``
    - ``map@k = (sum_{i=1..k} hit_i * precision@i) / min(k, |R_u|)``, where
      ``precision@i = (hit_1 + ... + hit_i) / i``
    - ``mrr@k = 1 / (rank of the first hit within the top k)``, 0 if no hit
    - ``hit_rate@k = 1`` if ``hits > 0`` else 0

    Users with an empty relevant set (``|R_u| = 0``) are excluded: their
    per-user values are NaN and they do not enter the means.

    Parameters
    ----------
    recommended : LongTensor or array-like, shape (n_users, m), m >= k
        Item indices per evaluated user, best first, padded with -1 where
        fewer items were available. Only the first ``k`` columns are used.
        ``m < k`` is accepted when ``m >= n_items_known`` (the lists span the
        catalogue; further columns could only be padding, counted as misses).
    relevant_indptr : LongTensor or array-like, shape (n_users + 1,)
        CSR row pointer: u's relevant items are
        ``relevant_items[relevant_indptr[u]:relevant_indptr[u + 1]]``.
    relevant_items : LongTensor or array-like, shape (nnz,)
        Relevant item indices, -1 for an item the model never saw. The known
        (non -1) items of one user must be distinct.
    k : int >= 1
        Cut-off.
    n_items_known : int, optional
        Number of items the model knows; when given, item indices must be
        below it and ``coverage`` is added to the result.

    Returns
    -------
    dict
        ``"precision"``, ``"recall"``, ``"ndcg"``, ``"map"``, ``"mrr"``,
        ``"hit_rate"``: float means over evaluated users (NaN when none);
        ``"per_user"``: dict of the same names to float64 tensors of shape
        (n_users,), NaN for excluded users; ``"evaluated"``: BoolTensor
        (n_users,); ``"n_users"``: number of evaluated users; ``"k"``; and
        ``"coverage"`` (see :func:`coverage`, over the top k of every row) when
        ``n_items_known`` is given.

    Examples
    --------
    >>> out = ranking_metrics([[3, 1, 2]], [0, 2], [1, 4], k=3)
    >>> round(out["precision"], 4), out["recall"]
    (0.3333, 0.5)
    """
    check_k(k)
    rec = _as_long(recommended, "recommended")
    whole_catalogue = n_items_known is not None and rec.dim() == 2 and rec.shape[1] >= n_items_known
    if rec.dim() != 2 or (rec.shape[1] < k and not whole_catalogue):
        raise ValueError(f"recommended must have shape (n_users, >= k={k}), got {tuple(rec.shape)}")
    kk = min(k, rec.shape[1])  # columns past the catalogue could only be padding
    rec = rec[:, :kk]
    indptr = _as_long(relevant_indptr, "relevant_indptr")
    items = _as_long(relevant_items, "relevant_items")
    n_users = rec.shape[0]
    _check_csr(indptr, items, n_users)
    if n_items_known is not None:
        _check_known(n_items_known)
    _check_items(rec, "recommended", n_items_known)
    _check_items(items, "relevant_items", n_items_known)

    n_rel = (indptr[1:] - indptr[:-1]).to(torch.float64)
    hits = _hit_matrix(rec, indptr, items, n_items_known).to(torch.float64)

    ranks = torch.arange(1, kk + 1, dtype=torch.float64)
    discounts = 1.0 / torch.log2(ranks + 1.0)
    n_hits = hits.sum(1)
    ideal_len = torch.clamp(n_rel, max=k).to(torch.int64)
    longest = max(kk, int(ideal_len.max()) if len(ideal_len) else 0)  # bounded by the data, not by k
    ideal = 1.0 / torch.log2(torch.arange(2, longest + 2, dtype=torch.float64))
    idcg = torch.cumsum(ideal, 0)[torch.clamp(ideal_len - 1, min=0)]
    any_hit = n_hits > 0
    first = torch.argmax(hits, dim=1).to(torch.float64)  # first maximal index = first hit

    evaluated = n_rel > 0
    denom = torch.where(evaluated, n_rel, torch.ones_like(n_rel))
    per_user = {
        "precision": n_hits / k,
        "recall": n_hits / denom,
        "ndcg": (hits * discounts).sum(1) / idcg,
        "map": (hits * torch.cumsum(hits, 1) / ranks).sum(1) / torch.clamp(ideal_len, min=1),
        "mrr": torch.where(any_hit, 1.0 / (first + 1.0), torch.zeros_like(first)),
        "hit_rate": any_hit.to(torch.float64),
    }
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    n_eval = int(evaluated.sum())
    out: dict[str, Any] = {}
    for name in RANKING_METRICS:
        per_user[name] = torch.where(evaluated, per_user[name], nan)
        out[name] = float(per_user[name][evaluated].mean()) if n_eval else float("nan")
    out["per_user"] = per_user
    out["evaluated"] = evaluated
    out["n_users"] = n_eval
    out["k"] = k
    if n_items_known is not None:
        out["coverage"] = coverage(rec, n_items_known)
    return out


def coverage(recommended: Any, n_items_known: int, k: int | None = None) -> float:
    """Catalogue coverage: distinct recommended items / ``n_items_known``.

    Padding entries (-1) are ignored.

    Parameters
    ----------
    recommended : LongTensor or array-like, shape (n_users, m)
    n_items_known : int >= 1
        Number of items the model could recommend.
    k : int, optional
        Use only the first ``k`` columns.

    Returns
    -------
    float in [0, 1]
    """
    _check_known(n_items_known)
    rec = _as_long(recommended, "recommended")
    if rec.dim() != 2:
        raise ValueError(f"recommended must be 2-D (n_users, m), got shape {tuple(rec.shape)}")
    if k is not None:
        check_k(k)
        rec = rec[:, :k]
    _check_items(rec, "recommended", n_items_known)
    valid = rec[rec >= 0]
    return torch.unique(valid).numel() / n_items_known


# ---------------------------------------------------------------------- helpers
def _hit_matrix(rec: torch.Tensor, indptr: torch.Tensor, items: torch.Tensor, n_known: int | None) -> torch.Tensor:
    """Bool (n_users, k): rec[u, j] is a first occurrence and in u's relevant set."""
    n_users, k = rec.shape
    if n_known is not None:
        width = n_known
    else:
        width = 1 + max([0] + [int(t.max()) for t in (rec, items) if t.numel()])
    owners = torch.repeat_interleave(torch.arange(n_users), indptr[1:] - indptr[:-1])
    known = items >= 0
    keys = torch.sort(owners[known] * width + items[known]).values
    if keys.numel() > 1 and bool((keys[1:] == keys[:-1]).any()):
        pos = int(torch.nonzero(keys[1:] == keys[:-1])[0, 0])
        user, item = divmod(int(keys[pos]), width)
        raise ValueError(f"relevant_items repeats item {item} for user {user}")
    query = torch.arange(n_users).unsqueeze(1) * width + rec
    if keys.numel():
        pos = torch.clamp(torch.searchsorted(keys, query), max=keys.numel() - 1)
        hit = keys[pos] == query
    else:
        hit = torch.zeros_like(rec, dtype=torch.bool)
    hit &= rec >= 0
    if k > 1:  # drop repeats: after a stable sort, equal runs keep their first column first
        vals, idx = torch.sort(rec, dim=1, stable=True)
        repeat = torch.zeros_like(hit)
        repeat[:, 1:] = vals[:, 1:] == vals[:, :-1]
        hit &= ~torch.zeros_like(hit).scatter(1, idx, repeat)
    return hit


def _as_long(x: Any, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be an integer tensor or array: {exc}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        if t.numel() == 0:
            return t.to(torch.int64)
        raise ValueError(f"{name} must hold integer item indices, got dtype {t.dtype}")
    return t.to(device="cpu", dtype=torch.int64)


def _pair(pred: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(pred).detach().to(device="cpu", dtype=torch.float64)
    t = torch.as_tensor(target).detach().to(device="cpu", dtype=torch.float64)
    if p.dim() != 1:
        raise ValueError(f"pred must be 1-D, got shape {tuple(p.shape)}")
    if t.shape != p.shape:
        raise ValueError(f"target must have the shape of pred {tuple(p.shape)}, got {tuple(t.shape)}")
    if p.numel() == 0:
        raise ValueError("pred must not be empty")
    return p, t


def _check_known(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n_items_known must be an int >= 1, got {n!r}")


def _check_csr(indptr: torch.Tensor, items: torch.Tensor, n_users: int) -> None:
    if indptr.dim() != 1 or indptr.numel() != n_users + 1:
        shape = tuple(indptr.shape)
        raise ValueError(f"relevant_indptr must have shape (n_users + 1,) = ({n_users + 1},), got {shape}")
    if items.dim() != 1:
        raise ValueError(f"relevant_items must be 1-D, got shape {tuple(items.shape)}")
    if int(indptr[0]) != 0 or int(indptr[-1]) != items.numel() or bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError(
            f"relevant_indptr must rise from 0 to len(relevant_items)={items.numel()} without decreasing"
        )


def _check_items(t: torch.Tensor, name: str, n_known: int | None) -> None:
    if t.numel() == 0:
        return
    if int(t.min()) < -1:
        raise ValueError(f"{name} holds {int(t.min())}; item indices must be >= 0, or -1")
    if n_known is not None and int(t.max()) >= n_known:
        raise ValueError(f"{name} holds item {int(t.max())}, not below n_items_known={n_known}")
