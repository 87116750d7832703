"""Why an item was recommended: each of the user's own items' share of the score.

For ALS-trained models the user's factors are a linear function of their own
interactions, so the score of item ``i`` splits exactly into one term per
interacted item ``j`` (Hu, Koren & Volinsky 2008, section 5):
``score_i = sum_j (q_i^T W_u q_j) * target_uj`` with ``W_u`` the inverse of the
user's regularised normal matrix. Other solvers (and Gibbs sampling, whose
rows average many posterior draws) have no closed form; their
contributions are the item-item dot products ``q_i . q_j`` averaged over the
user's items (how much each of them "pulls" toward ``i``).

A rating model that ranks by its interaction component (``rank_by=
"interactions"``, :mod:`torchmf.estimator.ranker`) recommends by
``x_u . y_i + w * (b_i + p_u . q_i)``; both dot products are linear in the
user's items, so each item's share is its iALS share (value 1) plus ``w``
times its rating-model share (``w * b_i`` belongs to no item).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchmf.solvers.ials import IALSSettings, confidence, ials_penalty

__all__ = ["explain"]


def explain(est: Any, user: Hashable, item: Hashable, k: int = 10) -> pd.DataFrame:
    """The ``k`` items of ``user``'s training history that contributed most to their score of ``item``.

    Parameters
    ----------
    est : MatrixFactorization
        Fitted.
    user, item : raw ids
    k : int

    Returns
    -------
    pandas.DataFrame
        Columns ``item`` (the user's own items), ``contribution`` (share of the
        score, same units), ``value`` (the interaction's value), largest first.
    """
    u, i = est.user_map.index(user), est.item_map.index(item)
    hp, m = est.effective_params, est.model
    mine = est.seen_items(u)
    if len(mine) == 0:
        return pd.DataFrame({"item": [], "contribution": [], "value": []})
    with torch.no_grad():
        values = torch.as_tensor(est.seen_values(u), device=est.device).double()
        contrib = _contributions(m, hp, u, i, mine, values)
        ranker = getattr(est, "_ranker", None)
        if ranker is not None:
            meta = est.extras_["ranker"]
            rank = _contributions(ranker, meta["hp"], u, i, mine, torch.ones_like(values))
            contrib = rank + meta["rating_weight"] * contrib
        return _frame(est, mine, contrib, values, k)


def _contributions(m: Any, hp: dict[str, Any], u: int, i: int, mine: np.ndarray, values: torch.Tensor
                   ) -> torch.Tensor:
    """Each of the user's items' share of ``m``'s factor score of item ``i``, shape (len(mine),)."""
    dev = m.item_embs.weight.device
    Q = m.item_embs.weight.double()
    q_i, Q_u = Q[i], Q[torch.as_tensor(mine, device=dev)]
    if hp["solver"] == "als" and hp["loss"] == "ials":
        s = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], 0)
        c = torch.as_tensor(confidence(values.cpu().numpy(), hp["alpha"], hp["confidence"],
                                       hp["confidence_eps"]), device=dev).double()
        lam = ials_penalty(torch.tensor(float(len(mine)), dtype=torch.float64), Q.shape[0], s)
        A = s.unobserved_weight * (Q.T @ Q) + Q_u.T @ ((c - s.unobserved_weight)[:, None] * Q_u)
        target = c
    elif hp["loss"] == "mse" and hp["solver"] in ("als", "sgd"):  # ridge-shaped user rows
        exponent = hp["reg_exponent"] if hp["solver"] == "als" else 1.0
        lam = hp["reg"] * float(len(mine)) ** exponent
        A = Q_u.T @ Q_u
        target = values
        if m.biases:  # what the factors explain: the rating minus the mean and both biases
            item_bias = m.item_bias.weight[torch.as_tensor(mine, device=dev), 0].double()
            target = values - float(m.global_bias) - item_bias - float(m.user_bias.weight[u, 0])
    else:
        return (Q_u @ q_i) / len(mine)
    A = A + lam * torch.eye(A.shape[0], dtype=A.dtype, device=dev)
    weights = Q_u @ torch.linalg.solve(A, q_i)  # q_j^T W_u q_i for each of the user's items
    return weights * target


def _frame(est: Any, mine: np.ndarray, contrib: torch.Tensor, values: torch.Tensor, k: int) -> pd.DataFrame:
    c = contrib.cpu().numpy()
    order = np.argsort(-c, kind="stable")[:k]
    return pd.DataFrame({"item": est.item_map.raw(mine[order]), "contribution": c[order].astype(np.float32),
                         "value": values.cpu().numpy()[order].astype(np.float32)})
