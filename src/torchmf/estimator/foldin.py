"""Fold-in: one user's row from their interactions with the item side fixed, via their solver."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from torchmf import solvers
from torchmf.checks import to_id_array
from torchmf.errors import DataError

__all__ = ["fold_in_row"]


def fold_in_row(est: Any, who: Hashable, interactions: Any) -> tuple[torch.Tensor, np.ndarray]:
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
    counts = np.bincount(est.seen_indices_, minlength=len(est.item_map))
    solver = solvers.get_solver(est._hp["loss"], est._hp["solver"])
    dev = est.device
    with torch.no_grad():
        row = solver.fold_in(est.model, torch.as_tensor(items, device=dev),
                             torch.as_tensor(vals, device=dev), est._hp, counts)
    return row, np.sort(items)


def _finite(v: Any, who: Hashable, item: Hashable) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise DataError(f"fold-in: value of {who!r} for item {item!r} is not a number: {v!r}") from None
    if not np.isfinite(f):
        raise DataError(f"fold-in: value of {who!r} for item {item!r} is not finite: {v!r}")
    return f
