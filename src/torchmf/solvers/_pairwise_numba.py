"""The numba functions behind :mod:`torchmf.solvers.pairwise_cpu` (imported only when the kernel runs).

Arrays come from torch tensors (``.numpy()``, shared memory); tables are float32.
Sums over a row's occurrences run in batch order and the loss is summed over
``chunks`` fixed chunks, so no result depends on the number of threads.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from torchmf.solvers._numba_util import prefetch_row as _prefetch_row
from torchmf.solvers._numba_util import sorted_contains

__all__ = [
    "build_filter", "group_both", "group_rows", "is_positive", "is_positive_serial", "score_batch", "set_threads",
    "update_rows", "update_rows_serial",
]

# GNU OpenMP's idle threads spin for a while after each parallel region, and so do torch's: on a
# few cores the two pools steal each other's time between the many short regions of an epoch (2x
# the CPU seconds, 2 threads, shared machine). numba's own pool sleeps instead; the lock in
# pairwise_cpu keeps it to one caller at a time. An explicit NUMBA_THREADING_LAYER wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# reassociation lets LLVM vectorise the length-d dot products and sums; no NaN/Inf assumptions
_FAST = {"reassoc", "contract", "nsz"}


def set_threads(n: int) -> None:
    """numba's threads for this Python thread: ``n``, within the pool numba started with."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


_PREFETCH_AHEAD = 8  # positives ahead whose rows the scoring loop asks the memory system for


_HASH_MUL = np.uint64(0x5851F42D4C957F2D)  # odd 64-bit multiplier, as the torch sampler's filter


@njit(inline="always")
def _hashes(key, bits):
    # two slots from one multiplicative hash: its top ``bits`` bits and the ``bits`` below them
    h = np.uint64(key) * _HASH_MUL
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    return h >> np.uint64(64 - bits), (h >> np.uint64(64 - 2 * bits)) & mask


@njit(cache=True)
def build_filter(keys, bits):
    """Bloom filter of the keys: 2**bits bits (uint64 words), two bits set per key."""
    words = np.zeros(max(1, (1 << bits) >> 6), np.uint64)
    for e in range(len(keys)):
        h1, h2 = _hashes(keys[e], bits)
        words[h1 >> np.uint64(6)] |= np.uint64(1) << (h1 & np.uint64(63))
        words[h2 >> np.uint64(6)] |= np.uint64(1) << (h2 & np.uint64(63))
    return words


@njit(parallel=True, cache=True)
def is_positive(keys, indptr, words, bits, n_items, users, cand):
    """Mask, shape (L,): is ``(users[e], cand[e])`` observed?

    A clear filter bit answers no (nearly every query: the filter fits in the cache);
    otherwise a binary search in the user's slice ``keys[indptr[u]:indptr[u + 1]]`` decides.
    """
    L = len(cand)
    out = np.zeros(L, np.bool_)
    one = np.uint64(1)
    for e in prange(L):
        uu = users[e]
        if uu >= len(indptr) - 1:
            continue
        key = uu * n_items + cand[e]
        h1, h2 = _hashes(key, bits)
        if (words[h1 >> np.uint64(6)] >> (h1 & np.uint64(63))) & one == 0:
            continue
        if (words[h2 >> np.uint64(6)] >> (h2 & np.uint64(63))) & one == 0:
            continue
        out[e] = sorted_contains(keys, indptr[uu], indptr[uu + 1], key)
    return out


@njit(inline="always")
def _softplus_sigmoid(x):
    """``(softplus(x), sigmoid(x))`` in float32 from one exp (torch's softplus threshold 20)."""
    one = np.float32(1.0)
    if x > np.float32(20.0):
        return x, one / (one + math.exp(-x))
    e = math.exp(x)
    return np.float32(math.log1p(e)), e / (one + e)


@njit(inline="always", fastmath=_FAST)
def _apply(T, acc, r, G, S, lr, eps, adagrad):
    """Row ``r`` of ``T`` takes summed gradient ``G`` (squares summed in ``S``): Adagrad or SGD."""
    if adagrad:
        for t in range(T.shape[1]):
            a2 = acc[r, t] + S[t]
            acc[r, t] = a2
            T[r, t] += G[t] * (-lr / (math.sqrt(a2) + eps))
    else:
        for t in range(T.shape[1]):
            T[r, t] += -lr * G[t]


@njit(parallel=True, cache=True, fastmath=_FAST)
def score_batch(P, Q, accP, accQ, u, idx, N, loss_id, n_items, reg, lr, eps, adagrad, mult, mult_i, where,
                gp, gq, coef, partial, chunks):
    """Scores, loss and gradients of one batch; rows seen once in the batch updated at once.

    ``idx`` is ``cat(i, j.reshape(-1))``, shape (m (1 + N),); ``gq[where[e]]`` ends as the gradient
    of item entry ``e``, ``reg Q[idx[e]] + coef[e] P[u[k]]`` with ``coef[e]`` d loss / d score
    (``where`` from :func:`group_rows` of ``idx``: each item's gradients end up contiguous).
    A user row with ``mult[k] > 1`` occurrences keeps its gradient in ``gp[k]`` for
    :func:`update_rows`; an item entry with ``mult_i[e] > 1`` likewise in ``gq``.
    ``partial[c]`` is chunk ``c``'s summed loss.
    """
    m = len(u)
    d = P.shape[1]
    zero = np.float32(0.0)
    for c in prange(chunks):
        G = np.empty(d, np.float32)
        H = np.empty(d, np.float32)
        S = np.empty(d, np.float32)
        tot = 0.0
        hi = (c + 1) * m // chunks
        for k in range(c * m // chunks, hi):
            if k + _PREFETCH_AHEAD < hi:  # the user rows miss the cache; ask for them early
                _prefetch_row(P, u[k + _PREFETCH_AHEAD])
                if adagrad:
                    _prefetch_row(accP, u[k + _PREFETCH_AHEAD])
            uk, ik = u[k], idx[k]
            pos = zero
            for t in range(d):
                pos += P[uk, t] * Q[ik, t]
            base = m + k * N
            for n in range(N):
                jn = idx[base + n]
                s = zero
                for t in range(d):
                    s += P[uk, t] * Q[jn, t]
                coef[base + n] = s
            gpos = zero
            if loss_id == 0:  # bpr: -log sigmoid(pos - neg)
                for n in range(N):
                    x = pos - coef[base + n]
                    sp, sg = _softplus_sigmoid(-x)
                    tot += sp
                    g = -sg
                    gpos += g
                    coef[base + n] = -g
            elif loss_id == 1:  # logistic
                sp, sg = _softplus_sigmoid(-pos)
                tot += sp
                gpos = -sg
                for n in range(N):
                    s = coef[base + n]
                    sp, sg = _softplus_sigmoid(s)
                    tot += sp
                    coef[base + n] = sg
            else:  # warp, as torchmf.solvers.losses.warp with margin 1
                cnt = 0
                hsum = zero
                for n in range(N):
                    h = np.float32(1.0) - pos + coef[base + n]
                    if h > 0:
                        cnt += 1
                        hsum += h
                rank = math.floor(np.float32(n_items - 1) * np.float32(cnt) / np.float32(N))
                w = np.float32(math.log1p(np.float32(rank)) / np.float32(max(cnt, 1)))
                tot += w * hsum
                for n in range(N):
                    v = w if np.float32(1.0) - pos + coef[base + n] > 0 else zero
                    coef[base + n] = v
                    gpos -= v
            coef[k] = gpos
            # user gradient g_pos q_i + sum_n g_n q_jn + reg p_u, from the old item rows
            for t in range(d):
                G[t] = gpos * Q[ik, t] + reg * P[uk, t]
            for n in range(N):
                cf = coef[base + n]
                jn = idx[base + n]
                for t in range(d):
                    G[t] += cf * Q[jn, t]
            # item gradients reg q + g p_u, from the old user row; an item row no other entry of
            # the batch touches is updated at once, the others wait in gq for update_rows
            for n in range(N + 1):
                e = k if n == 0 else base + n - 1
                r = idx[e]
                cf = coef[e]
                for t in range(d):
                    H[t] = reg * Q[r, t] + cf * P[uk, t]
                if mult_i[e] == 1:
                    for t in range(d):
                        S[t] = H[t] * H[t]
                    _apply(Q, accQ, r, H, S, lr, eps, adagrad)
                else:
                    we = where[e]
                    for t in range(d):
                        gq[we, t] = H[t]
            if mult[k] == 1:  # no other entry reads or writes this user row
                for t in range(d):
                    S[t] = G[t] * G[t]
                _apply(P, accP, uk, G, S, lr, eps, adagrad)
            else:
                for t in range(d):
                    gp[k, t] = G[t]
        partial[c] = tot


@njit(cache=True)
def group_rows(rows, slot, uniq, seg, order, mult, where):
    """Stable counting sort of ``rows``: distinct rows ``uniq[:n]``, row s's entries ``order[seg[s]:seg[s+1]]``.

    ``mult[e]`` is how often ``rows[e]`` occurs, ``where[e]`` its position in ``order``.
    ``slot`` (one per table row, all -1) is left as it was found; returns n.
    """
    n = 0
    for e in range(len(rows)):
        r = rows[e]
        s = slot[r]
        if s < 0:
            s = n
            slot[r] = s
            uniq[s] = r
            seg[s + 1] = 0
            n += 1
        seg[s + 1] += 1
    for e in range(len(rows)):
        mult[e] = seg[slot[rows[e]] + 1]
    seg[0] = 0
    for s in range(n):
        seg[s + 1] += seg[s]
        slot[uniq[s]] = seg[s]  # reused as each row's fill pointer
    for e in range(len(rows)):
        r = rows[e]
        order[slot[r]] = e
        where[e] = slot[r]
        slot[r] += 1
    for s in range(n):
        slot[uniq[s]] = -1
    return n


@njit(parallel=True, cache=True)
def group_both(u, slot_u, uniq_u, seg_u, order_u, mult_u, where_u, idx, slot_i, uniq_i, seg_i, order_i, mult_i,
               where_i, counts):
    """:func:`group_rows` of the user rows and of the item rows at once (two threads); ``counts`` gets both n."""
    for side in prange(2):
        if side == 0:
            counts[0] = group_rows(u, slot_u, uniq_u, seg_u, order_u, mult_u, where_u)
        else:
            counts[1] = group_rows(idx, slot_i, uniq_i, seg_i, order_i, mult_i, where_i)


@njit(parallel=True, cache=True, fastmath=_FAST)
def update_rows(T, acc, grads, lr, eps, adagrad, n, uniq, seg, order, skip_single, grouped):
    """Sum each distinct row's gradients ``grads[e]`` (batch order) and update the row in place.

    With ``skip_single`` rows that occur once are left alone (already updated). With ``grouped``
    the gradients are already in ``order``'s order (``grads[a]`` for position ``a``).
    Rows are dealt to 64 chunks round-robin, so that the popular rows (seen first) spread over threads.
    """
    d = T.shape[1]
    chunks = 64
    for c in prange(chunks):
        G = np.empty(d, np.float32)
        S = np.empty(d, np.float32)
        for s in range(c, n, chunks):
            if skip_single and seg[s + 1] - seg[s] == 1:
                continue
            ahead = s + 2 * chunks
            if ahead < n:
                _prefetch_row(T, uniq[ahead])
                if adagrad:
                    _prefetch_row(acc, uniq[ahead])
            for t in range(d):
                G[t] = 0.0
                S[t] = 0.0
            for a in range(seg[s], seg[s + 1]):
                e = a if grouped else order[a]
                for t in range(d):
                    g = grads[e, t]
                    G[t] += g
                    S[t] += g * g
            _apply(T, acc, uniq[s], G, S, lr, eps, adagrad)


# Serial twins for small calls: on a busy machine waking a second thread for a few dozen
# rows (the sampler's redraws, a batch's few repeated users) costs more than the work.
is_positive_serial = njit(cache=True)(is_positive.py_func)
update_rows_serial = njit(cache=True, fastmath=_FAST)(update_rows.py_func)
