"""``evaluate(model, test)``: rating and full-ranking metrics of a fitted model."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd

from torchmf.data.convert import as_interactions
from torchmf.data.interactions import Interactions
from torchmf.errors import DataError
from torchmf.estimator.protocol import Recommender
from torchmf.metrics import mae, ranking_metrics, rmse

__all__ = ["evaluate"]

log = logging.getLogger(__name__)


def evaluate(
    model: Recommender,
    test: Interactions,
    train: Interactions | None = None,
    k: int = 10,
    threshold: float | None = None,
    per_user: bool = False,
) -> dict[str, Any]:
    """Rating and ranking metrics of ``model`` on ``test``.

    Ranking is over every item the model knows (no sampled negatives); items
    the user had in the model's training data are excluded, so the ranked
    lists are exactly what ``model.recommend(user, k)`` returns. Definitions
    of the ranking metrics are in :func:`torchmf.metrics.ranking_metrics`.

    Parameters
    ----------
    model : MatrixFactorization
        Fitted.
    test : Interactions
        Held-out interactions, raw ids matched to the model's.
    train : Interactions, optional
        Extra interactions to exclude from the ranking, for a model trained on
        something other than this train set; not needed for a model fitted on it.
    k : int
        Cut-off of the ranking metrics.
    threshold : float, optional
        Only test interactions with value >= threshold are relevant (e.g. 4
        stars); all are relevant by default.
    per_user : bool
        Also return a DataFrame of per-user ranking metrics under ``"per_user"``.

    Returns
    -------
    dict
        ``rmse``, ``mae`` (explicit test data; unknown pairs predicted by
        fallback), ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k``,
        ``mrr@k``, ``hit_rate@k``, ``coverage@k``, plus ``users_evaluated`` and
        ``users_skipped`` (test users unknown to the model are skipped) and
        ``test_items_unknown`` (relevant items the model never saw: they count
        in recall's denominator but cannot be hit).
    """
    test = as_interactions(test, "test")
    if train is not None:
        train = as_interactions(train, "train")
    if len(test) == 0:
        raise DataError("test set is empty")
    out: dict[str, Any] = {}
    users_raw = test.user_map.raw(test.users)
    items_raw = test.item_map.raw(test.items)
    if not test.implicit and not model.is_ranking:
        pred = model.predict(users_raw, items_raw, unknown="fallback")
        out["rmse"] = rmse(pred, test.values)
        out["mae"] = mae(pred, test.values)

    rel = np.ones(len(test), dtype=bool) if threshold is None else test.values >= threshold
    u = model.user_map.indices(users_raw[rel], missing="ignore")
    i = model.item_map.indices(items_raw[rel], missing="ignore")
    known_user = u >= 0
    skipped = len(pd.unique(users_raw[rel][~known_user]))
    u, i = u[known_user], i[known_user]
    eval_users, indptr, items = _csr(u, i)
    exclude = None
    if train is not None:
        tu = model.user_map.indices(train.user_map.raw(train.users), missing="ignore")
        ti = model.item_map.indices(train.item_map.raw(train.items), missing="ignore")
        keep = (tu >= 0) & (ti >= 0) & np.isin(tu, eval_users)
        pos = np.searchsorted(eval_users, tu[keep])
        _, ex_indptr, ex_items = _csr(pos, ti[keep], n_rows=len(eval_users))
        exclude = (ex_indptr, ex_items)
    top, _ = model.top_k(eval_users, k, exclude_seen=True, exclude=exclude)
    res = ranking_metrics(top, indptr, items, k, n_items_known=len(model.item_map))
    for name in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage"):
        out[f"{name}@{k}"] = res[name]
    out["users_evaluated"] = res["n_users"]
    out["users_skipped"] = skipped
    n_test_users = len(pd.unique(users_raw[rel]))
    unknown_items = int((i < 0).sum())
    out["test_items_unknown"] = unknown_items
    if skipped > n_test_users / 2 or unknown_items > len(i) / 2:
        message = (f"evaluate: {skipped} of {n_test_users} test users and {unknown_items} of {len(i)} relevant test "
                   "items are unknown to the model: is the test set from the same data?")
        log.warning(message)
        warnings.warn(message, stacklevel=2)
    elif skipped:
        log.info("evaluate: %d test users unknown to the model were skipped", skipped)
    if per_user:
        frame = {"user": model.user_map.raw(eval_users)}
        frame.update({f"{n}@{k}": res["per_user"][n].numpy() for n in res["per_user"]})
        out["per_user"] = pd.DataFrame(frame)
    return out


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group ``cols`` by ``rows``: (distinct rows or arange(n_rows), indptr, cols sorted).

    Repeated (row, col) pairs with a known col are collapsed, so a relevant
    item counts once.
    """
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    dup = np.zeros(len(rows), dtype=bool)
    dup[1:] = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1]) & (cols[1:] >= 0)
    rows, cols = rows[~dup], cols[~dup]
    if n_rows is None:
        uniq, counts = np.unique(rows, return_counts=True)
    else:
        uniq, counts = np.arange(n_rows), np.bincount(rows, minlength=n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return uniq.astype(np.int64), indptr, cols.astype(np.int64)
