"""Fused CPU kernels (numba) for the pairwise losses: one minibatch step and the negatives' lookup.

The torch path of :func:`torchmf.solvers.pairwise.make_pairwise_epoch` is a
chain of gathers, elementwise ops and ``index_add_`` scatters that torch cannot
fuse on the CPU; here a few compiled passes per minibatch do the same arithmetic:

1. group the batch's user rows and item rows (serial, stable counting sort:
   every row's occurrences in batch order);
2. per positive (parallel over fixed chunks): gather ``P[u]``, ``Q[i]``,
   ``Q[j_n]``, score, loss coefficients and the rows' gradients, all from the
   old rows; a row that occurs once in the batch is updated right there (no
   other entry reads it), the others' gradients go to buffers;
3. per repeated row (parallel): sum its gradients in batch order and apply the
   same Adagrad or SGD update as :mod:`torchmf.solvers.optim`.

Every sum runs in an order fixed by the batch alone, so results do not depend
on the thread count, and they equal the torch path up to float reassociation.
Sampling stays in torch (same generator stream); the sampler's "is this pair
observed" test becomes a Bloom filter that fits in the cache, then a binary
search in the user's own sorted keys.
Only float32 tables on the CPU with the ``sgd`` or ``adagrad`` optimiser use it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchmf.solvers.compiled import compiled_available, run_on_threads

__all__ = ["MIN_KERNEL_PAIRS", "kernel_applies", "make_hogwild_epoch", "make_kernel_step", "make_positive_lookup"]

# Private switch: "auto" (kernel when it pays), "numba" (always, where supported), "torch" (never).
_MODE = "auto"
# Positives per epoch from which the kernel pays for importing numba and loading its cached
# machine code (~0.5 s; a first compile in a fresh install takes several seconds more).
MIN_KERNEL_PAIRS = 500_000
_FILTER_MAX_BITS = 30
_CHUNKS = 64  # fixed parallel chunks: the loss's partial sums do not depend on the thread count
_SERIAL_BELOW = 2048  # lookups / repeated rows under which a call stays on the calling thread
_LOSS_IDS = {"bpr": 0, "logistic": 1, "warp": 2}
_LOCK = threading.Lock()  # numba's workqueue threading layer must not be entered from two threads
_KERNELS: dict[str, Any] = {}


def kernel_applies(device: torch.device, dtype: torch.dtype, optimizer: str, n_pairs: int) -> bool:
    """Whether an epoch of ``n_pairs`` positives should run on the fused kernel."""
    if _MODE == "torch" or device.type != "cpu" or dtype != torch.float32 or optimizer not in ("sgd", "adagrad"):
        return False
    if _MODE != "numba" and n_pairs < MIN_KERNEL_PAIRS:
        return False
    return compiled_available(_kernels, "pairwise", "training stays on the torch path")


def _kernels() -> dict[str, Any]:
    """Compile (or load from numba's cache) the kernels once per process."""
    if not _KERNELS:
        from torchmf.solvers import _pairwise_numba as k

        _KERNELS.update(filter=k.build_filter, lookup=k.is_positive, lookup_serial=k.is_positive_serial,
                        score=k.score_batch, group=k.group_both, update=k.update_rows,
                        update_serial=k.update_rows_serial, set_threads=k.set_threads)
    return _KERNELS


def make_positive_lookup(keys: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor,
                         n_items: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``is_positive(users, cand)`` by binary search in each user's slice of the sorted keys.

    Parameters
    ----------
    keys : torch.LongTensor, shape (nnz,)
        Sorted ``user * n_items + item`` of the observed pairs.
    starts, counts : torch.LongTensor, shape (n_users,)
        Each user's slice of ``keys``.
    n_items : int

    Returns
    -------
    callable
        ``(users, cand) -> mask``: ``users`` broadcasts against ``cand``; the mask has ``cand``'s shape.
    """
    k = _kernels()
    keys_np = keys.numpy()
    indptr = torch.cat([starts, (starts[-1:] + counts[-1:])]).numpy() if len(starts) else np.zeros(1, np.int64)
    # Bloom filter, 8-16 bits per key, 2 bits each: ~2% of non-positives pass to the search; 8 MB at 5 M keys
    bits = max(10, min(_FILTER_MAX_BITS, int(8 * len(keys_np)).bit_length()))
    words = k["filter"](keys_np, bits)

    def lookup(users: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        u = users.expand_as(cand).reshape(-1).numpy()
        c = cand.reshape(-1).numpy()
        with _LOCK:
            k["set_threads"](torch.get_num_threads())
            fn = k["lookup"] if len(c) >= _SERIAL_BELOW else k["lookup_serial"]
            out = fn(keys_np, indptr, words, bits, n_items, u, c)
        return torch.from_numpy(out).view(cand.shape)

    return lookup


def make_kernel_step(P: torch.Tensor, Q: torch.Tensor, acc: dict[str, torch.Tensor] | None, lr: float, eps: float,
                     loss: str, reg: float, negatives: int, n_items: int,
                     batch_size: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """One minibatch step on the fused kernel, the same update as the torch path's ``step``.

    Parameters
    ----------
    P, Q : torch.Tensor, shape (n_users, d) and (n_items, d)
        float32, contiguous, on the CPU; updated in place.
    acc : dict with "P" and "Q" of the same shapes, optional
        Adagrad's accumulators (updated in place); None for plain SGD.
    lr, eps : float
        The optimiser's step size and Adagrad's epsilon.
    loss : {"bpr", "logistic", "warp"}
    reg : float
        L2 weight, once per occurrence of a row (Funk-SVD style, as the torch path).
    negatives : int
        N, negatives per positive.
    n_items : int
    batch_size : int
        Largest batch the step will see (sizes the scratch buffers).

    Returns
    -------
    callable
        ``step(u, i, j) -> loss`` with ``u, i`` of shape (B,), ``j`` of shape (B, N); the
        summed loss of the batch as a float64 scalar tensor.
    """
    k = _kernels()
    N, d = negatives, P.shape[1]
    P_np, Q_np = P.numpy(), Q.numpy()
    adagrad = acc is not None
    accP = acc["P"].numpy() if adagrad else np.zeros((1, d), np.float32)
    accQ = acc["Q"].numpy() if adagrad else np.zeros((1, d), np.float32)
    loss_id = _LOSS_IDS[loss]
    L = batch_size * (1 + N)
    gp, gq = np.empty((batch_size, d), np.float32), np.empty((L, d), np.float32)
    coef = np.empty(L, np.float32)
    partial = np.empty(_CHUNKS, np.float64)
    counts = np.zeros(2, np.int64)
    # grouping scratch: slot per table row (-1 = not in this batch), reset after each batch
    slot_u, slot_i = np.full(P.shape[0], -1, np.int64), np.full(Q.shape[0], -1, np.int64)
    scratch_i = [np.empty(L + 1, np.int64) for _ in range(5)]  # uniq, seg, order, mult, where
    scratch_u = [np.empty(batch_size + 1, np.int64) for _ in range(5)]
    f32 = np.float32
    reg32, lr32, eps32 = f32(reg), f32(lr), f32(eps)

    def step(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        idx = torch.cat([i, j.reshape(-1)]).numpy()
        u_np = u.numpy()
        with _LOCK:
            k["set_threads"](torch.get_num_threads())
            k["group"](u_np, slot_u, *scratch_u, idx, slot_i, *scratch_i, counts)
            n_u, n_i = int(counts[0]), int(counts[1])
            # rows seen once in the batch are updated inside score (no other entry reads them); the
            # others' gradients are written grouped by row, so that their sums read them in sequence
            k["score"](P_np, Q_np, accP, accQ, u_np, idx, N, loss_id, n_items, reg32, lr32, eps32, adagrad,
                       scratch_u[3], scratch_i[3], scratch_i[4], gp, gq, coef, partial, _CHUNKS)
            if n_u < len(u_np):  # some user occurs twice: sum its gradients, then update
                fn = k["update"] if len(u_np) - n_u >= _SERIAL_BELOW else k["update_serial"]
                fn(P_np, accP, gp, lr32, eps32, adagrad, n_u, *scratch_u[:3], True, False)
            k["update"](Q_np, accQ, gq, lr32, eps32, adagrad, n_i, *scratch_i[:3], True, True)
            total = float(partial.sum())
        return torch.tensor(total, dtype=torch.float64)

    return step


def make_hogwild_epoch(P: torch.Tensor, Q: torch.Tensor, keys: torch.Tensor, starts: torch.Tensor,
                       counts: torch.Tensor, pop_items: torch.Tensor | None, lr: float, reg: float,
                       generator: torch.Generator) -> Callable[[], float]:
    """One epoch of ``optimizer="hogwild"`` BPR: as many lock-free SGD steps as there are observed pairs.

    The steps are split among as many Python threads as torch has intra-op threads, each
    running :func:`~torchmf.solvers._hogwild_numba.hogwild_bpr` (GIL released) with a seed
    drawn from ``generator``. With one thread two fits with the same seed are identical;
    with more, the threads' updates interleave as the OS schedules them.

    Parameters
    ----------
    P, Q : torch.Tensor, float32, contiguous, on the CPU; updated in place
    keys, starts, counts : torch.LongTensor
        The negative sampler's sorted pair keys and each user's slice of them.
    pop_items : torch.LongTensor, optional
        Items of the observed pairs (popularity sampling); None samples negatives uniformly.
    lr, reg : float
    generator : torch.Generator

    Returns
    -------
    callable
        ``epoch() -> mean loss per step taken``.
    """
    from torchmf.solvers._hogwild_numba import hogwild_bpr

    args = (P.numpy(), Q.numpy(), keys.numpy(), starts.numpy(), counts.numpy(),
            np.zeros(0, np.int64) if pop_items is None else pop_items.numpy().astype(np.int64, copy=False),
            Q.shape[0], np.float32(lr), np.float32(reg))
    n = len(keys)

    def epoch() -> float:
        threads = max(1, min(torch.get_num_threads(), n))
        seeds = torch.randint(2**31 - 1, (threads,), generator=generator).tolist()
        out = np.zeros((threads, 2), np.float64)
        shares = [n // threads + (t < n % threads) for t in range(threads)]
        run_on_threads([functools.partial(hogwild_bpr, *args, shares[t], seeds[t], out, t) for t in range(threads)],
                       "torchmf-hogwild")
        taken = n - out[:, 1].sum()
        return float(out[:, 0].sum() / max(taken, 1.0))

    return epoch
