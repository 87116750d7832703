"""Ranking queries of :class:`~torchmf.MatrixFactorization`: top-k, recommend, visitors, similar items.

A mixin so the facade stays one screen: every list comes from one
:class:`~torchmf.retrieval.ExactIndex` search with the same seen-item
filtering, for known users, batches and visitors alike.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchmf.checks import check_k, is_scalar, to_id_array
from torchmf.estimator.foldin import fold_in_row
from torchmf.retrieval import ExactIndex, csr_rows, csr_union

__all__ = ["RankingMixin"]


class RankingMixin:
    """Top-k queries over a fitted model; the host class provides ``model``, the id maps and the seen index."""

    def _queries(self, user_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        m, rows = self.model, torch.as_tensor(user_indices, device=self.device)
        offsets = (m.global_bias + m.user_bias.weight[rows, 0]) if m.biases else None
        return m.user_embs.weight[rows], offsets

    def top_k(
        self,
        user_indices: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        exclude: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` item indices per user index: the ranking behind :meth:`recommend`.

        Parameters
        ----------
        user_indices : numpy.ndarray of int64, shape (B,)
        k : int
        exclude_seen : bool
            Drop items the user had in training.
        candidates : numpy.ndarray of int64, shape (M,), optional
            Restrict to these item indices.
        exclude : (indptr (B + 1,), indices), optional
            Extra items to drop per row of ``user_indices``; evaluation uses it to
            exclude a train set other than the one the model saw.

        Returns
        -------
        items : numpy.ndarray of int64, shape (B, k)
            Best first; -1 pads rows with fewer than ``k`` eligible items.
        scores : numpy.ndarray of float32, shape (B, k)
            ``-inf`` where padded.
        """
        k = check_k(k)
        user_indices = np.asarray(user_indices, dtype=np.int64)
        if exclude_seen:
            seen = csr_rows(self.seen_indptr_, self.seen_indices_, user_indices)
            exclude = seen if exclude is None else csr_union(seen, exclude)
        queries, offsets = self._queries(user_indices)
        return ExactIndex.from_model(self.model).search(
            queries, k, offsets=offsets, exclude=exclude, candidates=candidates
        )

    def recommend(
        self,
        user_or_users: Any,
        k: int = 10,
        exclude_seen: bool = True,
        items: Iterable[Hashable] | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items for one user or many.

        Parameters
        ----------
        user_or_users : raw id, or list/array of raw ids
        k : int
            Number of items per user; must be positive.
        exclude_seen : bool
            Leave out items the user had in training.
        items : iterable of raw item ids, optional
            Only rank these candidates.

        Returns
        -------
        pandas.DataFrame
            One user: columns ``item, score``, best first. Many users: columns
            ``user, rank, item, score`` (rank 1 = best). Fewer than ``k`` rows
            per user when fewer items are eligible. ``score`` is the model's raw
            score, not clipped to the rating range (clipping would tie the top
            of the list); :meth:`predict` clips.
        """
        k = check_k(k)
        self.model  # noqa: B018 - raises before fit
        raw = to_id_array(user_or_users)
        u = self.user_map.indices(raw)
        cand = None if items is None else self.item_map.indices(to_id_array(items))
        top_items, top_scores = self.top_k(u, min(k, len(self.item_map)), exclude_seen, cand)
        return self._frame(raw, top_items, top_scores, single=is_scalar(user_or_users))

    def _frame(self, raw: np.ndarray, top_items: np.ndarray, top_scores: np.ndarray, single: bool) -> pd.DataFrame:
        valid = top_items >= 0
        item_raw = self.item_map.raw(np.where(valid, top_items, 0))
        if single:
            return pd.DataFrame({"item": item_raw[0][valid[0]], "score": top_scores[0][valid[0]]})
        rows, cols = np.nonzero(valid)
        return pd.DataFrame(
            {"user": raw[rows], "rank": cols + 1, "item": item_raw[rows, cols], "score": top_scores[rows, cols]}
        )

    def similar_items(self, item: Hashable, k: int = 10) -> pd.DataFrame:
        """Items closest to ``item`` by cosine similarity of their factors.

        Returns
        -------
        pandas.DataFrame
            Columns ``item, score`` (cosine in [-1, 1]), best first, ``item`` itself excluded.
        """
        k = check_k(k)
        self.model  # noqa: B018 - raises before fit
        idx = self.item_map.index(item)
        top_i, top_s = ExactIndex.from_model(self.model).similar(np.array([idx]), k)
        return pd.DataFrame({"item": self.item_map.raw(top_i[0]), "score": top_s[0]})

    def recommend_for(
        self,
        interactions: Mapping[Hashable, float] | Iterable[Hashable],
        k: int = 10,
        exclude_seen: bool = True,
        items: Iterable[Hashable] | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items for a visitor the model has not seen, from their interactions; nothing is stored.

        The visitor is folded in exactly as :meth:`fold_in` would, scored, and forgotten.

        Parameters
        ----------
        interactions : dict of raw item id -> value, or iterable of raw item ids
        k : int
        exclude_seen : bool
            Leave out the visitor's own items.
        items : iterable of raw item ids, optional
            Only rank these candidates.

        Returns
        -------
        pandas.DataFrame
            Columns ``item, score``, best first.
        """
        k = check_k(k)
        self.model  # noqa: B018 - raises before fit
        w, seen = fold_in_row(self, "the visitor", interactions)
        d = self.model.embedding_dim
        offsets = None
        if self.model.biases:
            offsets = (self.model.global_bias + w[d]).reshape(1)
        exclude = (np.array([0, len(seen)]), seen) if exclude_seen else None
        cand = None if items is None else self.item_map.indices(to_id_array(items))
        top_items, top_scores = ExactIndex.from_model(self.model).search(
            w[:d].reshape(1, d), min(k, len(self.item_map)), offsets=offsets, exclude=exclude, candidates=cand
        )
        return self._frame(np.array([None], dtype=object), top_items, top_scores, single=True)

