"""The numba kernel of ``optimizer="hogwild"`` (:mod:`torchmf.solvers.pairwise_cpu`), imported when it runs.

Lock-free per-sample SGD on the BPR loss (Rendle et al. 2009; Hogwild!, Recht
et al. 2011): draw an observed pair ``(u, i)`` and an item ``j`` at random, skip
``j`` when ``(u, j)`` is observed (binary search in ``u``'s sorted keys), and
apply the step of ``-log sigmoid(p_u . (q_i - q_j))`` plus ``reg/2`` times the
three rows' squared norms at once. It releases the GIL; several Python threads
run it on the same tables without locks, so their updates interleave.
Random draws use a xorshift64* stream per call (cheaper than numba's Mersenne
Twister and drawn ahead of use, see :func:`hogwild_bpr`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from torchmf.solvers._numba_util import prefetch_item, prefetch_row, sorted_contains

__all__ = ["hogwild_bpr"]

# reassociation lets LLVM vectorise the length-d loops; no NaN/Inf assumptions
_FAST = {"reassoc", "contract", "nsz"}


_AHEAD = 8  # samples drawn ahead: their key is fetched 2 x _AHEAD steps early, their rows _AHEAD early
_MUL = np.uint64(0x2545F4914F6CDD1D)


@njit(inline="always")
def _next(state):
    """xorshift64* (Vigna 2016): the new state and a 32-bit draw from its high bits."""
    state ^= state >> np.uint64(12)
    state ^= state << np.uint64(25)
    state ^= state >> np.uint64(27)
    return state, (state * _MUL) >> np.uint64(32)


@njit(inline="always")
def _below(r, n):
    """A draw in [0, n) from a 32-bit draw ``r`` (Lemire's multiply-shift; n < 2**32)."""
    return np.int64((r * np.uint64(n)) >> np.uint64(32))


@njit(nogil=True, cache=True, fastmath=_FAST)
def hogwild_bpr(P, Q, keys, starts, counts, pop_items, n_items, lr, reg, n_samples, seed, out, slot):
    """``n_samples`` BPR steps drawn with ``seed``; ``out[slot]`` = (summed loss, negatives skipped).

    Parameters
    ----------
    P, Q : float32 arrays, shape (n_users, d) and (n_items, d)
        Updated in place.
    keys : int64 array, shape (nnz,)
        Sorted ``user * n_items + item`` of the observed pairs.
    starts, counts : int64 arrays, shape (n_users,)
        Each user's slice of ``keys``.
    pop_items : int64 array, shape (nnz,) or (0,)
        Items of the observed pairs, for popularity sampling of negatives (a random
        positive's item); empty for uniform sampling.
    n_items : int
    lr, reg : float32
    n_samples, seed, slot : int
    out : float64 array, shape (threads, 2)

    The draws come from a xorshift64* stream seeded with ``seed``, made ``2 * _AHEAD``
    samples ahead so that the memory system fetches each sample's key and rows while
    earlier samples are computed (the tables do not fit in cache: every row is a miss).
    """
    d = P.shape[1]
    nnz = len(keys)
    n_pop = len(pop_items)
    state = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)  # never 0
    ring_e = np.empty(2 * _AHEAD, np.int64)
    ring_j = np.empty(2 * _AHEAD, np.int64)
    total = 0.0
    skipped = 0
    one = np.float32(1.0)
    for s in range(n_samples + 2 * _AHEAD):
        if s < n_samples:  # draw sample s, fetch its key
            state, r = _next(state)
            e = _below(r, nnz)
            state, r = _next(state)
            j = pop_items[_below(r, n_pop)] if n_pop else _below(r, n_items)
            ring_e[s % (2 * _AHEAD)] = e
            ring_j[s % (2 * _AHEAD)] = j
            prefetch_item(keys, e)
            prefetch_row(Q, j)
        m = s - _AHEAD  # its key has arrived: fetch its rows
        if 0 <= m < n_samples:
            key = keys[ring_e[m % (2 * _AHEAD)]]
            u = key // n_items
            prefetch_row(P, u)
            prefetch_row(Q, key - u * n_items)
        t0 = s - 2 * _AHEAD  # compute this one
        if t0 < 0:
            continue
        key = keys[ring_e[t0 % (2 * _AHEAD)]]
        j = ring_j[t0 % (2 * _AHEAD)]
        u = key // n_items
        i = key - u * n_items
        if sorted_contains(keys, starts[u], starts[u] + counts[u], u * n_items + j):
            skipped += 1
            continue
        x = np.float32(0.0)
        for t in range(d):
            x += P[u, t] * (Q[i, t] - Q[j, t])
        # loss softplus(-x) = -log sigmoid(x); its derivative in x is -sigmoid(-x) = -z
        if x < -20.0:
            total += -x
            z = one
        else:
            ex = math.exp(-x)
            total += math.log1p(ex)
            z = np.float32(ex / (1.0 + ex))
        for t in range(d):
            pu = P[u, t]
            qi = Q[i, t]
            qj = Q[j, t]
            P[u, t] = pu + lr * (z * (qi - qj) - reg * pu)
            Q[i, t] = qi + lr * (z * pu - reg * qi)
            Q[j, t] = qj - lr * (z * pu + reg * qj)
    out[slot, 0] = total
    out[slot, 1] = skipped
