"""Ranking queries of :class:`~torchmf.MatrixFactorization`: top-k, recommend, visitors, similar items.

A mixin so the facade stays one screen: every list comes from one
:class:`~torchmf.retrieval.ExactIndex` search with the same seen-item
filtering, for known users, batches and visitors alike; ``approximate=True``
searches the model's approximate index instead (:meth:`RankingMixin.build_index`).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchmf.checks import check_k, is_scalar, to_id_array
from torchmf.estimator.foldin import fold_in_row, item_counts
from torchmf.estimator.ranker import RANKER, fold_in_ranker, ranker_index, ranker_queries
from torchmf.retrieval import ExactIndex, Index, csr_rows, csr_union

log = logging.getLogger(__name__)

__all__ = ["RankingMixin"]


class RankingMixin:
    """Top-k queries over a fitted model; the host class provides ``model``, the id maps and the seen index."""

    def _queries(self, user_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        m, rows = self.model, torch.as_tensor(user_indices, device=self.device)
        if self._ranker is not None:  # a rating model ranking by interactions (torchmf.estimator.ranker)
            weight = self.extras_[RANKER]["rating_weight"]
            return ranker_queries(self._ranker.user_embs.weight[rows], m.user_embs.weight[rows], weight), None
        offsets = (m.global_bias + m.user_bias.weight[rows, 0]) if m.biases else None
        return m.user_embs.weight[rows], offsets

    def build_index(self, kind: str = "hnsw", **params: Any) -> Index:
        """Build an approximate index over the item factors; ``approximate=True`` queries then use it.

        The index is saved with the model (:meth:`save`) and dropped when the model is refitted.
        Needs the ``ann`` extra (``pip install 'torchmf[ann]'``).

        Parameters
        ----------
        kind : {"hnsw"}
        **params
            Passed to :func:`torchmf.retrieval.hnsw.build_hnsw`: ``graphs`` (``"mobius"``, the
            default: an hnswlib Euclidean graph over Möbius-transformed vectors; ``"ip"``: a faiss
            inner-product graph; ``"union"``: one hnswlib graph holding the edges of an
            inner-product and an angular graph), ``m``, ``ef_construction``, ``ef_search``
            (defaults per graph type: 16/100/100 for ``"mobius"``, 32/200/100 for ``"ip"``,
            24/128/300 for ``"union"``),
            ``n_recall`` (1000 users sampled to measure recall@10 against exact search), ``seed`` (0).

        Returns
        -------
        Index
            Also kept as ``index_``; ``index_.info["recall_at_10"]`` holds the measured recall.
        """
        from torchmf.retrieval.hnsw import build_hnsw

        self.model  # noqa: B018 - raises before fit
        if kind != "hnsw":
            raise ValueError(f"kind must be 'hnsw', got {kind!r}")
        if "recall_queries" in params:
            raise TypeError("build_index samples the model's own users for recall; recall_queries is not accepted")
        exact = self._exact_index()  # what the model ranks by: with a ranking component, its vectors
        queries, _ = self._queries(np.arange(len(self.user_map)))
        self.index_ = build_hnsw(exact.item_vectors, exact.item_bias, recall_queries=queries, **params)
        return self.index_

    def _index(self, approximate: bool) -> Index:
        """The approximate index when asked for and built (and still matching the items), else exact search."""
        index = self.index_ if approximate else None
        if index is not None and index.n_items != self.model.num_items:
            log.warning("the approximate index covers %d items, the model has %d: using exact search",
                        index.n_items, self.model.num_items)
            index = None
        return self._exact_index() if index is None else index

    def _exact_index(self) -> ExactIndex:
        """Exact search over the items as the ranking scores them."""
        if self._ranker is not None:
            return ranker_index(self.model, self._ranker, self.extras_[RANKER]["rating_weight"])
        return ExactIndex.from_model(self.model)

    def _fold_in_ranker(self, items: np.ndarray) -> torch.Tensor | None:
        """A visitor's row of the ranking component (None without one), shape (d_rank,)."""
        if self._ranker is None:
            return None
        return fold_in_ranker(self._ranker, self.extras_[RANKER], items, item_counts(self))

    def top_k(
        self,
        user_indices: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        exclude: tuple[np.ndarray, np.ndarray] | None = None,
        approximate: bool = False,
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
        approximate : bool
            Search the index built by :meth:`build_index` (exact search when there is none).

        Returns
        -------
        items : numpy.ndarray of int64, shape (B, min(k, n_items))
            Best first; -1 pads rows with fewer eligible items. ``k`` beyond
            the catalogue is clamped to it (no row can hold more).
        scores : numpy.ndarray of float32, shape (B, min(k, n_items))
            ``-inf`` where padded.
        """
        k = min(check_k(k), len(self.item_map))
        user_indices = np.asarray(user_indices, dtype=np.int64)
        if exclude_seen:
            seen = csr_rows(self.seen_indptr_, self.seen_indices_, user_indices)
            exclude = seen if exclude is None else csr_union(seen, exclude)
        queries, offsets = self._queries(user_indices)
        return self._index(approximate).search(queries, k, offsets=offsets, exclude=exclude, candidates=candidates)

    def recommend(
        self,
        user_or_users: Any,
        k: int = 10,
        exclude_seen: bool = True,
        items: Iterable[Hashable] | None = None,
        approximate: bool = False,
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
        approximate : bool
            Use the approximate index built by :meth:`build_index` (exact search when there is
            none): much faster on big catalogues, may miss a few of the best items.

        Returns
        -------
        pandas.DataFrame
            One user: columns ``item, score``, best first. Many users: columns
            ``user, rank, item, score`` (rank 1 = best). Fewer than ``k`` rows
            per user when fewer items are eligible. ``score`` is the ranking
            score: for a rating model with ``rank_by="interactions"`` (the
            default) the ranking component's score
            (:mod:`torchmf.estimator.ranker`), not a rating; with
            ``rank_by="scores"`` the raw predicted rating, not clipped to the
            rating range (clipping would tie the top of the list). Use
            :meth:`predict` for ratings.
        """
        k = check_k(k)
        self.model  # noqa: B018 - raises before fit
        raw = to_id_array(user_or_users)
        u = self.user_map.indices(raw)
        cand = None if items is None else self.item_map.indices(to_id_array(items))
        top_items, top_scores = self.top_k(u, min(k, len(self.item_map)), exclude_seen, cand, approximate=approximate)
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

        For a rating model with ``rank_by="interactions"`` (the default) the
        factors of its ranking component (items chosen by the same users),
        so items with one or two ratings do not crowd the list.

        Returns
        -------
        pandas.DataFrame
            Columns ``item, score`` (cosine in [-1, 1]), best first, ``item`` itself excluded.
        """
        k = check_k(k)
        self.model  # noqa: B018 - raises before fit
        idx = self.item_map.index(item)
        index = ExactIndex.from_model(self.model if self._ranker is None else self._ranker)
        top_i, top_s = index.similar(np.array([idx]), k)
        return pd.DataFrame({"item": self.item_map.raw(top_i[0]), "score": top_s[0]})

    def recommend_for(
        self,
        interactions: Mapping[Hashable, float] | Iterable[Hashable],
        k: int = 10,
        exclude_seen: bool = True,
        items: Iterable[Hashable] | None = None,
        approximate: bool = False,
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
        approximate : bool
            Use the approximate index, as in :meth:`recommend`.

        Returns
        -------
        pandas.DataFrame
            Columns ``item, score``, best first.
        """
        top_items, top_scores = self.top_k_for(interactions, k, exclude_seen, items, approximate)
        return pd.DataFrame({"item": self.item_map.raw(top_items), "score": top_scores})

    def top_k_for(
        self,
        interactions: Mapping[Hashable, float] | Iterable[Hashable],
        k: int = 10,
        exclude_seen: bool = True,
        items: Iterable[Hashable] | None = None,
        approximate: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`recommend_for` as arrays: the ranking behind it, without building a DataFrame.

        Returns
        -------
        items : numpy.ndarray of int64, shape (m,)
            Item indices (``item_map.raw(items)`` gives the ids), best first; m <= k.
        scores : numpy.ndarray of float32, shape (m,)
        """
        k = check_k(k)
        self.model  # noqa: B018 - raises before fit
        w, seen, _ = fold_in_row(self, "the visitor", interactions)
        d = self.model.embedding_dim
        query, offsets = w[:d].reshape(1, d), None
        rank_row = self._fold_in_ranker(seen)
        if rank_row is not None:
            query = ranker_queries(rank_row.reshape(1, -1), query, self.extras_[RANKER]["rating_weight"])
        elif self.model.biases:
            offsets = (self.model.global_bias + w[d]).reshape(1)
        exclude = (np.array([0, len(seen)]), seen) if exclude_seen else None
        cand = None if items is None else self.item_map.indices(to_id_array(items))
        top_items, top_scores = self._index(approximate).search(
            query, min(k, len(self.item_map)), offsets=offsets, exclude=exclude, candidates=cand
        )
        valid = top_items[0] >= 0
        return top_items[0][valid], top_scores[0][valid]
