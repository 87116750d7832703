"""Fold-in: one user's row from their interactions with the item side fixed, via their solver."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from torchmf import solvers
from torchmf.checks import to_id_array
from torchmf.errors import DataError

__all__ = ["FoldInMixin", "fold_in_row", "item_counts"]


def item_counts(est: Any) -> np.ndarray:
    """Training interactions per item, shape (n_items,), computed once per seen index.

    Every fold-in (and every visitor the service scores) passes them to its solver; the seen
    index is replaced, never edited in place, whenever it changes, so its identity keys the cache.
    """
    cached = getattr(est, "_item_counts_cache", None)
    if cached is None or cached[0] is not est.seen_indices_ or len(cached[1]) != len(est.item_map):
        cached = (est.seen_indices_, np.bincount(est.seen_indices_, minlength=len(est.item_map)))
        est._item_counts_cache = cached
    return cached[1]


def fold_in_row(est: Any, who: Hashable, interactions: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One visitor's row, solved with the item side fixed; nothing is stored.

    Parameters
    ----------
    est : MatrixFactorization
        Fitted.
    who : raw id or str
        Named in error messages.
    interactions : dict of raw item id -> value, or iterable of raw item ids

    Returns
    -------
    row : torch.Tensor, shape (d,) or (d + 1,) with the user bias last
    items : numpy.ndarray of int64, shape (L,)
        The visitor's item indices, sorted.
    values : numpy.ndarray of float32, shape (L,)
        Their values, in the same order.
    """
    est.model  # noqa: B018 - raises before fit
    ranking = solvers.is_ranking_loss(est._hp["loss"])
    if isinstance(interactions, Mapping):
        keys = list(interactions)
        vals = np.array([_finite(v, who, it) for it, v in interactions.items()], dtype=np.float32)
    elif ranking and isinstance(interactions, Iterable) and not isinstance(interactions, (str, bytes)):
        keys = list(interactions)
        vals = np.ones(len(keys), dtype=np.float32)
    else:
        want = "{item: strength} or a list of items" if ranking else "{item: rating}"
        raise DataError(f"fold-in needs a non-empty dict {want} for {who!r}, got {type(interactions).__name__}")
    if not keys:
        raise DataError(f"fold-in needs at least one item for {who!r}")
    items = est.item_map.indices(to_id_array(keys))
    if len(np.unique(items)) != len(items):
        raise DataError(f"fold-in: repeated item in the interactions of {who!r}")
    if not ranking and not est.implicit_:
        lo, hi = est.rating_range_
        bad = (vals < lo) | (vals > hi)
        if bad.any():
            j = int(np.argmax(bad))
            raise DataError(f"fold-in: rating {vals[j]:g} of {who!r} for item {keys[j]!r} is outside the "
                            f"training range [{lo:g}, {hi:g}]")
    counts = item_counts(est)
    solver = solvers.get_solver(est._hp["loss"], est._hp["solver"])
    dev = est.device
    with torch.no_grad():
        row = solver.fold_in(est.model, torch.as_tensor(items, device=dev),
                             torch.as_tensor(vals, device=dev), est._hp, counts)
    order = np.argsort(items)
    return row, items[order], vals[order]


def _finite(v: Any, who: Hashable, item: Hashable) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise DataError(f"fold-in: value of {who!r} for item {item!r} is not a number: {v!r}") from None
    if not np.isfinite(f):
        raise DataError(f"fold-in: value of {who!r} for item {item!r} is not finite: {v!r}")
    return f


class FoldInMixin:
    """``fold_in``: add or refresh one user of a fitted model from their interactions."""

    def fold_in(self, user: Hashable, ratings: Mapping[Hashable, float] | Iterable[Hashable]) -> Any:
        """Add a user, or refresh one, from their ratings; item factors stay fixed.

        The user's factors minimise the training objective with the items held
        fixed (each solver's :meth:`~torchmf.solvers.base.Solver.fold_in`): a
        ridge regression for ``mse``, the exact ALS user solve for ``ials``,
        deterministic L-BFGS on the expected loss for the sampled-negative losses.

        Parameters
        ----------
        user : raw id
            New (appended) or existing (replaced).
        ratings : dict of raw item id -> rating, or iterable of raw item ids
            Items must be known to the model; ratings must lie in the training
            range. Ranking models take interaction strengths, or a plain list of
            items (strength 1 each).

        Returns
        -------
        self
        """
        m = self.model
        w, items, values = fold_in_row(self, user, ratings)
        rank_row = self._fold_in_ranker(items)  # a rating model's ranking component, if any
        if user in self.user_map:
            row = self.user_map.index(user)
        else:
            self.user_map = self.user_map.extend([user])
            row = len(self.user_map) - 1
            m.resize(len(self.user_map))
            if rank_row is not None:
                self._ranker.resize(len(self.user_map))
            self.seen_indptr_ = np.append(self.seen_indptr_, self.seen_indptr_[-1])
        with torch.no_grad():
            m.user_embs.weight[row] = w[: m.embedding_dim]
            if m.biases:
                m.user_bias.weight[row, 0] = w[-1]
            if rank_row is not None:
                self._ranker.user_embs.weight[row] = rank_row
        start, end = self.seen_indptr_[row], self.seen_indptr_[row + 1]
        self.seen_indices_ = np.concatenate([self.seen_indices_[:start], items, self.seen_indices_[end:]])
        self.seen_values_ = np.concatenate([self.seen_values_[:start], values, self.seen_values_[end:]])
        self.seen_indptr_ = self.seen_indptr_.copy()
        self.seen_indptr_[row + 1 :] += len(items) - (end - start)
        return self
