"""Pairwise / sampled-negative training for implicit feedback: BPR, logistic, WARP.

Each epoch walks a random permutation of the observed pairs in large slices;
every positive ``(u, i)`` gets ``N`` negatives ``j`` drawn on the device, never
one of ``u``'s own positives. As in :mod:`torchmf.solvers.sgd` the gradient of
the dot product is written by hand, so a step is a few gathers, two batched
products and the row optimiser's scatters, with no autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from torchmf.nn.mf import MFModel
from torchmf.solvers import pairwise_cpu
from torchmf.solvers.losses import PAIRWISE
from torchmf.solvers.optim import SGD, Adagrad, Hogwild, RowOptimizer, make_optimizer
from torchmf.solvers.sgd import model_tables

__all__ = ["NegativeSampler", "PairwiseSettings", "fold_in_pairwise", "make_pairwise_epoch"]

# Rejection rounds before the exact (complement) fallback; with a density below
# 50% each round leaves fewer than half of the collisions, so 8 rounds leave
# well under 1% for the fallback's extra binary searches.
_REJECTION_ROUNDS = 8
# Hash prefilter of the positive keys: one byte per slot, at least 4 slots per
# positive (so under ~25% of the slots are set), at most 2^27 bytes. A lookup
# is a single gather, 30-50x cheaper than a binary search over millions of
# keys; only the queries whose slot is set go on to the exact search.
_FILTER_SLOTS_PER_KEY, _FILTER_MAX_BITS = 4, 27
_HASH_MUL = 0x5851F42D4C957F2D  # odd 64-bit multiplier (Knuth/PCG's LCG constant)


@dataclass(frozen=True)
class PairwiseSettings:
    """Hyperparameters of one pairwise fit (validated by the estimator)."""

    loss: str
    lr: float
    reg: float
    batch_size: int
    optimizer: str
    negatives: int
    sampling: str


class NegativeSampler:
    """Draw items a user has not interacted with, vectorised on the device.

    Candidates come from ``sampling`` ("uniform" over items, or "popularity":
    proportional to each item's count of positives, by drawing a random
    observed pair's item). Collisions with the user's positives are found by a
    binary search of ``u * n_items + j`` in the sorted positive keys (behind a
    hashed byte filter that clears most queries with one gather) and redrawn;
    after a few rounds the rare survivors are drawn exactly, uniformly from the
    user's complement (so the result never contains a positive even for users
    who have seen almost everything).

    Parameters
    ----------
    users, items : torch.LongTensor, shape (nnz,)
        Observed pairs (no duplicates), on the device.
    n_items : int
    sampling : {"uniform", "popularity"}
    generator : torch.Generator
        On the same device.
    compiled_lookup : bool
        Test membership with the fused CPU kernel's binary search in each
        user's slice of the keys instead of the hashed filter (same answers,
        so the same draws; CPU only).
    keys_only : bool
        Build only ``keys``, ``starts`` and ``counts`` (for a kernel that samples
        by itself: ``optimizer="hogwild"``); :meth:`sample` is then unavailable.
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_items: int, sampling: str,
                 generator: torch.Generator, compiled_lookup: bool = False, keys_only: bool = False) -> None:
        if sampling not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling must be 'uniform' or 'popularity', got {sampling!r}")
        self.n_items, self.sampling, self.gen = n_items, sampling, generator
        key = users * n_items + items
        self.keys, order = torch.sort(key)
        self.items = items  # popularity sampling draws a random positive's item
        # Exact fallback: with user u's positives sorted p_0 < p_1 < ..., the
        # r-th non-positive item is r + #{t : p_t - t <= r}. Keys u*n + (p_t - t)
        # are sorted too, so one searchsorted answers it for every row at once.
        sorted_users, sorted_items = users[order], items[order]
        counts = torch.bincount(sorted_users, minlength=int(users.max()) + 1 if len(users) else 0)
        starts = torch.cumsum(counts, 0) - counts
        self.starts, self.counts = starts, counts
        self._lookup = None
        if keys_only:
            return
        rank_in_user = torch.arange(len(users), device=users.device) - starts[sorted_users]
        self.gap_keys = sorted_users * n_items + (sorted_items - rank_in_user)
        if compiled_lookup:
            self._lookup = pairwise_cpu.make_positive_lookup(self.keys, starts, counts, n_items)
            return
        bits = min(_FILTER_MAX_BITS, max(10, int(len(key) * _FILTER_SLOTS_PER_KEY - 1).bit_length()))
        self._shift, self._mask = 61 - bits, (1 << bits) - 1
        self.filter = torch.zeros(1 << bits, dtype=torch.bool, device=users.device)
        self.filter[self._hash(self.keys)] = True

    def _hash(self, key: torch.Tensor) -> torch.Tensor:
        # multiplicative hashing: the product's high bits mix every key bit (wrap-around is intended)
        return ((key * _HASH_MUL) >> self._shift) & self._mask

    def is_positive(self, users: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Boolean mask, shape of ``cand``: is ``(users, cand)`` an observed pair?

        ``users`` broadcasts against ``cand`` (e.g. shape (B, 1) against (B, N)).
        """
        if self._lookup is not None:
            return self._lookup(users, cand)
        full = users * self.n_items + cand
        q = full.reshape(-1)
        maybe = torch.index_select(self.filter, 0, self._hash(q))
        idx = maybe.nonzero().squeeze(1)
        sub = q[idx]
        pos = torch.searchsorted(self.keys, sub).clamp_max_(len(self.keys) - 1)
        maybe[idx] = self.keys[pos] == sub
        return maybe.view(full.shape)

    def _draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self.sampling == "uniform":
            return torch.randint(self.n_items, shape, generator=self.gen, device=device)
        idx = torch.randint(len(self.items), shape, generator=self.gen, device=device)
        return self.items[idx]

    def sample(self, users: torch.Tensor, n: int) -> torch.Tensor:
        """Negatives for each user, shape (B, n); callers must not pass users with no negative.

        Parameters
        ----------
        users : torch.LongTensor, shape (B,)
        n : int
        """
        u = users.unsqueeze(1).expand(-1, n)
        neg = self._draw(u.shape, users.device)
        bad = self.is_positive(u, neg).nonzero(as_tuple=True)
        for _ in range(_REJECTION_ROUNDS):
            if len(bad[0]) == 0:
                return neg
            redraw = self._draw((len(bad[0]),), users.device)
            neg[bad] = redraw
            still = self.is_positive(u[bad], redraw)
            bad = (bad[0][still], bad[1][still])
        if len(bad[0]):
            neg[bad] = self._complement(u[bad])
        return neg

    def _complement(self, users: torch.Tensor) -> torch.Tensor:
        """Uniform draws from each user's non-positive items (exact, no rejection)."""
        free = self.n_items - self.counts[users]
        r = (torch.rand(users.shape, generator=self.gen, device=users.device) * free).long()
        r = torch.minimum(r, free - 1)
        below = torch.searchsorted(self.gap_keys, users * self.n_items + r, right=True) - self.starts[users]
        return r + below


def make_pairwise_epoch(
    model: MFModel,
    users: torch.Tensor,
    items: torch.Tensor,
    settings: PairwiseSettings,
    generator: torch.Generator,
    opt: RowOptimizer | None = None,
) -> Callable[[], float]:
    """Return a function that runs one epoch and returns the mean loss per positive.

    Parameters
    ----------
    model : MFModel
        Without biases; updated in place.
    users, items : torch.LongTensor, shape (nnz,)
        Observed pairs on the model's device. Users who interacted with every
        item have nothing to rank and are left out.
    settings : PairwiseSettings
    generator : torch.Generator
        On the same device; drives permutations and negative sampling.
    opt : RowOptimizer, optional
        The optimiser over ``model_tables(model)`` (the caller keeps it to
        checkpoint its state); built from ``settings`` when None.
    """
    n_items = model.num_items
    tables = model_tables(model)
    if opt is None:
        opt = make_optimizer(settings.optimizer, tables, settings.lr)
    P, Q = tables["P"], tables["Q"]
    # the fused CPU kernel (same arithmetic) where it pays; the torch ops below are the reference
    fused = (type(opt) in (SGD, Adagrad) and P.is_contiguous() and Q.is_contiguous()
             and pairwise_cpu.kernel_applies(P.device, P.dtype, settings.optimizer, len(users)))
    hogwild = isinstance(opt, Hogwild)
    sampler = NegativeSampler(users, items, n_items, settings.sampling, generator, compiled_lookup=fused,
                              keys_only=hogwild)
    if hogwild:  # implicit's algorithm: lock-free per-sample steps on the CPU
        if P.device.type != "cpu" or P.dtype != torch.float32:
            raise ValueError("optimizer='hogwild' runs on the CPU with float32 factors; use 'sgd' or 'adagrad' "
                             "on other devices")
        return pairwise_cpu.make_hogwild_epoch(P, Q, sampler.keys, sampler.starts, sampler.counts,
                                               items if settings.sampling == "popularity" else None,
                                               settings.lr, settings.reg, generator)
    full = sampler.counts >= n_items
    if bool(full.any()):
        keep = ~full[users]
        users, items = users[keep], items[keep]
    loss_fn = PAIRWISE[settings.loss]
    reg, bs, N = settings.reg, settings.batch_size, settings.negatives
    n = len(users)
    d = P.shape[1]
    # Reused scratch: a fresh multi-MB tensor per step page-faults on CPU. The
    # positive and negative item rows share one block so that their gradients
    # reach the optimiser as a single scatter.
    rows = 0 if fused else bs
    buf_pu, buf_gp = P.new_empty(rows, d), P.new_empty(rows, d)
    buf_q = P.new_empty(rows * (1 + N), d)
    buf_idx = torch.empty(rows * (1 + N), dtype=torch.long, device=P.device)

    def torch_step(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        m = len(u)
        pu = torch.index_select(P, 0, u, out=buf_pu[:m])
        idx = torch.cat([i, j.reshape(-1)], out=buf_idx[: m * (1 + N)])
        q = torch.index_select(Q, 0, idx, out=buf_q[: m * (1 + N)])
        qi, qj = q[:m], q[m:].view(m, N, d)
        prod = buf_gp[:m]  # scratch for the row-wise dot products, reused below for grad_p
        pos = torch.mul(pu, qi, out=prod).sum(1)
        if N == 1:  # elementwise beats a batch of 1x1 matrix products
            q1 = qj[:, 0]
            neg = torch.mul(pu, q1, out=prod).sum(1, keepdim=True)
        else:  # (B,1,d) @ (B,d,N) on a transposed view takes MKL's fast path on CPU
            neg = torch.bmm(pu.unsqueeze(1), qj.transpose(1, 2)).squeeze(1)
        if settings.loss == "warp":
            loss, g_pos, g_neg = loss_fn(pos, neg, n_items)
        else:
            loss, g_pos, g_neg = loss_fn(pos, neg)
        # d/d pu = g_pos qi + sum_n g_neg qj + reg pu   (reg once per positive, Funk-SVD style)
        if N == 1:
            grad_p = torch.mul(q1, g_neg, out=buf_gp[:m])
        else:
            grad_p = torch.bmm(g_neg.unsqueeze(1), qj, out=buf_gp[:m].unsqueeze(1)).squeeze(1)
        grad_p.addcmul_(g_pos.unsqueeze(1), qi).add_(pu, alpha=reg)
        # item gradients overwrite their own rows in place: reg q + g pu
        qi.mul_(reg).addcmul_(g_pos.unsqueeze(1), pu)
        qj.mul_(reg).addcmul_(g_neg.unsqueeze(2), pu.unsqueeze(1))
        opt.step("P", u, grad_p)
        opt.step("Q", idx, q)
        return loss

    step = torch_step
    if fused:
        acc = opt.acc if isinstance(opt, Adagrad) else None
        step = pairwise_cpu.make_kernel_step(P, Q, acc, opt.lr, getattr(opt, "eps", 0.0), settings.loss, reg, N,
                                             n_items, bs)

    # one random gather per epoch instead of two: both ids packed in an int64 (ids stay below 2^31)
    packed = (users << 32) | items
    device = users.device
    del users, items

    def epoch() -> float:
        total = torch.zeros((), dtype=torch.float64, device=device)
        perm = torch.randperm(n, generator=generator, device=device)
        shuffled = packed[perm]
        users_p, items_p = shuffled >> 32, shuffled & 0xFFFFFFFF
        for start in range(0, n, bs):
            u, i = users_p[start : start + bs], items_p[start : start + bs]
            total += step(u, i, sampler.sample(u, N))
        return float(total) / max(1, n)

    return epoch


def fold_in_pairwise(
    Q: torch.Tensor,
    items: torch.Tensor,
    loss: str,
    negatives: int,
    reg: float,
    sampling_weights: torch.Tensor | None,
    seed: int,
    steps: int = 50,
    pool_size: int = 2048,
) -> torch.Tensor:
    """Factors of one new user from their positives, item factors fixed.

    Minimises the expected training loss of the user's positives, each with
    ``negatives`` negatives, plus ``reg / 2`` per positive times ``|p|^2``,
    by L-BFGS from zero. The expectation over negatives is taken over a pool
    of up to ``pool_size`` non-positive items (all of them in small catalogues),
    drawn once with ``seed``, so the result is deterministic. BPR and the
    logistic loss are convex in ``p``, so this finds their unique optimum.

    Parameters
    ----------
    Q : torch.Tensor, shape (n_items, k)
    items : torch.LongTensor, shape (L,)
        The user's positives (distinct).
    loss : {"bpr", "logistic", "warp"}
    negatives : int
        Negatives per positive in training (N).
    reg : float
    sampling_weights : torch.Tensor, shape (n_items,), optional
        Popularity weights of the training sampler; None is uniform.
    seed : int
    steps : int
        L-BFGS iterations.
    pool_size : int

    Returns
    -------
    torch.Tensor, shape (k,)
    """
    n_items, k = Q.shape
    dev = Q.device
    allowed = torch.ones(n_items, dtype=torch.bool, device=dev)
    allowed[items] = False
    free = allowed.nonzero().squeeze(1)
    if len(free) == 0:  # the user has seen everything: nothing to rank below the positives
        return Q[items].mean(0)
    if len(free) > pool_size:
        gen = torch.Generator(device=dev).manual_seed(seed)
        w = torch.ones(len(free), device=dev) if sampling_weights is None else sampling_weights[free].float()
        free = free[torch.multinomial(w.clamp_min(1e-12), pool_size, replacement=False, generator=gen)]
    q_pos, q_neg = Q[items].float(), Q[free].float()
    L, S = len(items), len(free)
    fn = PAIRWISE[loss]
    p = torch.zeros(k, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        pos, neg = q_pos @ p, q_neg @ p
        grid = neg.unsqueeze(0).expand(L, S)
        if loss == "warp":
            value = fn(pos, grid, n_items)[0]  # its rank estimate already normalises by the pool size
        elif loss == "bpr":
            value = fn(pos, grid)[0] * (negatives / S)
        else:  # logistic: each positive is one term, its N negatives N terms
            value = torch.nn.functional.softplus(-pos).sum() + torch.nn.functional.softplus(neg).sum() * (
                negatives * L / S
            )
        value = value + 0.5 * reg * L * p.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
    return p.detach().to(Q.dtype)
