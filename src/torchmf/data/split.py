"""Train/test splits of :class:`~torchmf.data.interactions.Interactions`.

Every split returns ``(train, test)`` built with :meth:`Interactions.subset`, so
both share the parent's id maps, keep the parent's row order, and no row is
ever in both. Splits that draw at random take ``seed`` (an int or a
:class:`numpy.random.Generator`) and never touch global random state. Each
split logs :func:`split_report` at INFO on the ``torchmf.data.split`` logger.

All per-user work is vectorised (sorts and ranks within user groups), so the
splits handle tens of millions of rows.
"""

from __future__ import annotations

import logging
import numbers
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from torchmf.data.interactions import Interactions
from torchmf.errors import DataError

__all__ = ["kfold", "leave_last_out", "random_split", "split_report", "temporal_split", "user_split"]

logger = logging.getLogger(__name__)

Seed = int | np.random.Generator
Split = tuple[Interactions, Interactions]


# ---------------------------------------------------------------------- public
def random_split(data: Interactions, test_fraction: float = 0.2, seed: Seed = 0) -> Split:
    """Random holdout over interactions.

    Parameters
    ----------
    data : Interactions, n rows
    test_fraction : float in (0, 1)
        Share of rows sent to test: ``round(test_fraction * n)``, clipped to
        ``[1, n - 1]`` so neither side is empty.
    seed : int or numpy.random.Generator

    Returns
    -------
    train, test : Interactions
        ``n - n_test`` and ``n_test`` rows, in the parent's row order.
    """
    _check_fraction("test_fraction", test_fraction)
    rng = _rng(seed)
    n = _check_size(data, 2)
    n_test = int(np.clip(np.rint(test_fraction * n), 1, n - 1))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:n_test]] = True
    return _finish("random_split", data, mask)


def user_split(data: Interactions, test_fraction: float = 0.2, min_interactions: int = 5, seed: Seed = 0) -> Split:
    """Per-user random holdout.

    For each user with ``n_u >= min_interactions`` interactions,
    ``round(test_fraction * n_u)`` of them (at least 1, at most ``n_u - 1`` so
    the user stays known to train) are chosen at random for test. Users with
    fewer interactions keep all of them in train. ``round`` rounds halves to
    even, like Python's :func:`round`.

    Parameters
    ----------
    data : Interactions, n rows
    test_fraction : float in (0, 1)
    min_interactions : int >= 2
    seed : int or numpy.random.Generator

    Returns
    -------
    train, test : Interactions

    Raises
    ------
    DataError
        When no user has ``min_interactions`` interactions.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_int("min_interactions", min_interactions, 2)
    rng = _rng(seed)
    n = _check_size(data, 1)
    # random order within each user: shuffle, then stable sort by user
    perm = rng.permutation(n)
    order = perm[np.argsort(data.users[perm], kind="stable")]
    counts, rank = _group_ranks(data.users[order], data.n_users)
    n_test_u = np.clip(np.rint(test_fraction * counts), 1, np.maximum(counts - 1, 1)).astype(np.int64)
    n_test_u[counts < min_interactions] = 0
    if not n_test_u.any():
        raise DataError(f"no user has at least min_interactions={min_interactions} interactions; nothing to hold out")
    mask = np.zeros(n, dtype=bool)
    mask[order] = rank < n_test_u[data.users[order]]
    return _finish("user_split", data, mask)


def temporal_split(
    data: Interactions, test_fraction: float | None = None, cutoff: int | datetime | np.datetime64 | None = None
) -> Split:
    """Global time cut: the latest interactions go to test.

    Give either ``test_fraction`` (default 0.2 when neither is given) or
    ``cutoff``, not both.

    Parameters
    ----------
    data : Interactions, n rows, with timestamps
    test_fraction : float in (0, 1), optional
        The ``round(test_fraction * n)`` (clipped to ``[1, n - 1]``) latest rows
        go to test; rows with equal timestamps are ordered by row position.
    cutoff : int or datetime-like, optional
        Rows with ``timestamp >= cutoff`` go to test. A datetime is converted
        to seconds since the epoch (UTC), like timestamps read from datetimes.

    Returns
    -------
    train, test : Interactions
        Every test timestamp is ``>=`` every train timestamp.

    Raises
    ------
    DataError
        When ``data`` has no timestamps, or ``cutoff`` leaves one side empty.
    """
    if test_fraction is not None and cutoff is not None:
        raise ValueError("give test_fraction or cutoff, not both")
    if cutoff is None:
        test_fraction = 0.2 if test_fraction is None else test_fraction
        _check_fraction("test_fraction", test_fraction)
    else:
        cutoff = _as_seconds(cutoff)
    ts = _require_timestamps(data, "temporal_split")
    n = _check_size(data, 2)
    if cutoff is not None:
        mask = ts >= cutoff
        if mask.all() or not mask.any():
            side = "train" if mask.all() else "test"
            raise DataError(f"cutoff={cutoff} leaves {side} empty (timestamps range {ts.min()} .. {ts.max()})")
    else:
        n_test = int(np.clip(np.rint(test_fraction * n), 1, n - 1))
        order = np.argsort(ts, kind="stable")
        mask = np.zeros(n, dtype=bool)
        mask[order[n - n_test:]] = True
    return _finish("temporal_split", data, mask)


def leave_last_out(data: Interactions, n: int = 1, min_interactions: int = 2) -> Split:
    """Per user, the last ``n`` interactions by timestamp go to test.

    Ties in timestamp are broken by row order (a later row counts as later).
    Users with fewer than ``min_interactions`` interactions stay whole in train.

    Parameters
    ----------
    data : Interactions, with timestamps
    n : int >= 1
    min_interactions : int > n
        So every held-out user keeps at least one training interaction.

    Returns
    -------
    train, test : Interactions
        For each user, every test timestamp is ``>=`` each of their train ones.

    Raises
    ------
    DataError
        When ``data`` has no timestamps or no user has ``min_interactions``.
    """
    _check_int("n", n, 1)
    _check_int("min_interactions", min_interactions, n + 1)
    ts = _require_timestamps(data, "leave_last_out")
    size = _check_size(data, 1)
    order = np.lexsort((np.arange(size), ts, data.users))
    counts, rank = _group_ranks(data.users[order], data.n_users)
    u_sorted = data.users[order]
    from_end = counts[u_sorted] - 1 - rank
    eligible = counts[u_sorted] >= min_interactions
    if not eligible.any():
        raise DataError(f"no user has at least min_interactions={min_interactions} interactions; nothing to hold out")
    mask = np.zeros(size, dtype=bool)
    mask[order] = eligible & (from_end < n)
    return _finish("leave_last_out", data, mask)


def kfold(data: Interactions, k: int = 5, seed: Seed = 0) -> list[Split]:
    """K-fold cross-validation over interactions.

    Rows are shuffled and dealt into ``k`` folds of sizes differing by at most
    one; fold ``f``'s test set is fold ``f`` and its train set is the rest, so
    the k test sets partition the data.

    Parameters
    ----------
    data : Interactions, n >= k rows
    k : int >= 2
    seed : int or numpy.random.Generator

    Returns
    -------
    list of k (train, test) pairs
    """
    _check_int("k", k, 2)
    rng = _rng(seed)
    n = _check_size(data, 1)
    if n < k:
        raise DataError(f"cannot make k={k} folds of {n} interactions")
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(n)] = np.arange(n) % k
    return [_finish(f"kfold[{f}/{k}]", data, fold == f) for f in range(k)]


def split_report(train: Interactions, test: Interactions) -> dict[str, int]:
    """Summary of a split.

    Parameters
    ----------
    train, test : Interactions sharing id maps

    Returns
    -------
    dict
        ``n_train``, ``n_test`` (rows); ``test_users_unknown_to_train`` and
        ``test_items_unknown_to_train``: the number of distinct user (item)
        indices in test that never appear in train.
    """
    for kind in ("user_map", "item_map"):
        a, b = getattr(train, kind), getattr(test, kind)
        if a is not b and a != b:
            raise ValueError(f"train and test must share the same {kind}")
    return {
        "n_train": len(train),
        "n_test": len(test),
        "test_users_unknown_to_train": _n_unknown(train.users, test.users, train.n_users),
        "test_items_unknown_to_train": _n_unknown(train.items, test.items, train.n_items),
    }


# ---------------------------------------------------------------------- helpers
def _finish(name: str, data: Interactions, test_mask: np.ndarray) -> Split:
    train, test = data.subset(~test_mask), data.subset(test_mask)
    report = split_report(train, test)
    logger.info(
        "%s: %d train, %d test; %d test users and %d test items unknown to train",
        name,
        report["n_train"],
        report["n_test"],
        report["test_users_unknown_to_train"],
        report["test_items_unknown_to_train"],
    )
    return train, test


def _n_unknown(train_idx: np.ndarray, test_idx: np.ndarray, size: int) -> int:
    seen = np.zeros(size, dtype=bool)
    seen[train_idx] = True
    in_test = np.zeros(size, dtype=bool)
    in_test[test_idx] = True
    return int(np.count_nonzero(in_test & ~seen))


def _group_ranks(sorted_users: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user counts (n_users,) and each sorted row's 0-based rank in its user's group."""
    counts = np.bincount(sorted_users, minlength=n_users)
    starts = np.cumsum(counts) - counts
    return counts, np.arange(len(sorted_users)) - starts[sorted_users]


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise ValueError(f"seed must be a non-negative int or a numpy.random.Generator, got {seed!r}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_size(data: Interactions, minimum: int) -> int:
    if not isinstance(data, Interactions):
        raise TypeError(f"data must be Interactions, got {type(data).__name__}")
    if len(data) < minimum:
        raise DataError(f"need at least {minimum} interaction(s) to split, got {len(data)}")
    return len(data)


def _require_timestamps(data: Interactions, name: str) -> np.ndarray:
    if not isinstance(data, Interactions):
        raise TypeError(f"data must be Interactions, got {type(data).__name__}")
    if data.timestamps is None:
        raise DataError(f"{name} needs timestamps, and this data has none; use random_split or user_split instead")
    return data.timestamps


def _as_seconds(cutoff: Any) -> int:
    if isinstance(cutoff, (datetime, np.datetime64, pd.Timestamp)):
        return int(pd.Timestamp(cutoff).value // 10**9)
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not np.isfinite(cutoff):
        raise ValueError(f"cutoff must be a finite timestamp or a datetime, got {cutoff!r}")
    return int(np.ceil(cutoff))  # integer timestamps: ts >= 3.5 exactly when ts >= 4
