"""Per-epoch validation: RMSE for rating models, NDCG@10 for ranking models.

Ranking validation ranks every item minus the user's training items with the
same :class:`~torchmf.retrieval.ExactIndex` that ``recommend`` uses, and scores
the lists with :func:`torchmf.metrics.ranking_metrics`, so the number early
stopping watches is the number ``evaluate`` reports.
"""

from __future__ import annotations

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.metrics import ranking_metrics
from torchmf.nn.mf import MFModel
from torchmf.retrieval import ExactIndex, csr_rows

__all__ = ["VAL_K", "RankingValidation", "Validation"]

# cut-off of the ranking metrics that validate implicit models
VAL_K = 10


class Validation:
    """Validation pairs as index tensors on the device (pairs unknown to train dropped).

    Parameters
    ----------
    users, items : numpy.ndarray of int64, shape (n,)
        Indices in the training id maps; -1 marks unknown ids (dropped).
    values : numpy.ndarray, shape (n,)
    clip : (float, float)
        Rating range predictions are clipped to, as ``predict`` does.
    device : torch.device
    """

    def __init__(
        self, users: np.ndarray, items: np.ndarray, values: np.ndarray, clip: tuple[float, float], device: torch.device
    ) -> None:
        keep = (users >= 0) & (items >= 0)
        self.users = torch.as_tensor(users[keep], device=device)
        self.items = torch.as_tensor(items[keep], device=device)
        self.values = torch.as_tensor(values[keep], dtype=torch.float32, device=device)
        self.clip = clip

    def __len__(self) -> int:
        return len(self.users)

    def __call__(self, model: MFModel) -> dict[str, float]:
        with torch.no_grad():
            pred = model(self.users, self.items).clamp(*self.clip)
        err = pred - self.values
        return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}


class RankingValidation:
    """NDCG@10 and recall@10 of held-out pairs, ranking all items minus the training ones.

    Parameters
    ----------
    validation : Validation
        Held-out pairs (known ids only).
    train : Interactions
        The compacted training data: its items are excluded from each user's
        ranking, as ``recommend(exclude_seen=True)`` does, and a held-out pair
        that is also a training pair is not relevant.
    """

    def __init__(self, validation: Validation, train: Interactions) -> None:
        n_items = train.n_items
        vu, vi = validation.users.cpu().numpy(), validation.items.cpu().numpy()
        key = np.unique(vu.astype(np.int64) * n_items + vi)
        train_key = train.users.astype(np.int64) * n_items + train.items
        key = key[~np.isin(key, train_key)]
        users, counts = np.unique(key // n_items, return_counts=True)
        self.users = users
        self.relevant = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), key % n_items)
        # each validation user's training items, as a CSR indexed like self.users
        order = np.lexsort((train.items, train.users))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(train.users, minlength=train.n_users))]).astype(np.int64)
        self.seen = csr_rows(indptr, train.items[order], users)
        self.device = validation.users.device

    def __call__(self, model: MFModel) -> dict[str, float]:
        index = ExactIndex.from_model(model)
        rows = torch.as_tensor(self.users, device=self.device)
        offsets = model.global_bias + model.user_bias.weight[rows, 0] if model.biases else None
        top, _ = index.search(model.user_embs.weight[rows], VAL_K, offsets=offsets, exclude=self.seen)
        res = ranking_metrics(top, self.relevant[0], self.relevant[1], VAL_K)
        return {f"ndcg@{VAL_K}": float(res["ndcg"]), f"recall@{VAL_K}": float(res["recall"])}
