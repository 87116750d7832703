"""Sharded explicit ALS and iALS: each rank solves its own block of rows with the single-process kernels.

Rank ``r`` owns users ``user_bounds[r]:user_bounds[r+1]`` and items
``item_bounds[r]:item_bounds[r+1]`` with every interaction of those rows
(:mod:`torchmf.distributed.io`). Every rank keeps the whole factor tables
(the all-gather design: tables are small next to the interactions). A sweep is

1. user half: :func:`~torchmf.solvers.als.als_half_sweep` /
   :func:`~torchmf.solvers.ials.ials_half_sweep` on this rank's user rows
   against the full item table (iALS builds its ``a0 * Q^T Q`` Gramian from
   that table, as the single process does), then an all-gather of the user
   rows so every rank has the new user table;
2. item half: the mirror image.

Each row's solve sees exactly the data and the other side's factors it sees
in one process, so the factors match the single-process fit up to the
floating-point order of a few sums (the loss, reduced over ranks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from torchmf.distributed import comm
from torchmf.distributed.io import Shard
from torchmf.solvers.als import als_half_sweep
from torchmf.solvers.als_solver import als_layout
from torchmf.solvers.ials import IALSSettings, confidence, ials_half_sweep, ials_observed, ials_side

__all__ = ["Tables", "gather_block", "make_als_sweep", "make_ials_sweep"]

# the model's tables as plain tensors: P, Q (and bu, bi with biases), full size on every rank
Tables = dict[str, torch.Tensor]


def gather_block(full: list[torch.Tensor], bounds: np.ndarray) -> None:
    """Make every rank's block of ``full`` tables (same rows) known to all ranks, in place.

    One broadcast per rank of exactly its rows (blocks balanced by
    interactions differ a lot in row count, so a padded all-gather would
    send up to W times the table); the tables' columns travel together.
    """
    if comm.world() == 1:
        return
    for r in range(comm.world()):
        a, b = int(bounds[r]), int(bounds[r + 1])
        if a == b:
            continue
        block = torch.cat([t[a:b].reshape(b - a, -1) for t in full], 1) if len(full) > 1 else full[0][a:b]
        block = block.contiguous()
        if r == comm.rank():
            comm.stats.add(block.numel() * block.element_size() * (comm.world() - 1))
        dist.broadcast(block, src=r)
        if r != comm.rank():
            start = 0
            for t in full:
                width = 1 if t.dim() == 1 else t.shape[1]
                t[a:b] = block[:, start:start + width].reshape(t[a:b].shape)
                start += width


def _local(rows: np.ndarray, lo: int) -> np.ndarray:
    return rows - lo


def make_als_sweep(shard: Shard, t: Tables, hp: dict[str, Any], mu: float, device: torch.device
                   ) -> Callable[[], float]:
    """One explicit-ALS sweep over the shard; returns the training loss (as the single process reports it)."""
    kw = dict(global_mean=mu, reg=hp["reg"], reg_bias=hp["reg_bias"], cg_steps=hp["cg_steps"],
              reg_exponent=hp["reg_exponent"])
    ulo, uhi = shard.users_of(comm.rank())
    ilo, ihi = shard.items_of(comm.rank())
    u, i, v = shard.by_user
    by_user = als_layout(_local(u, ulo), i, v, uhi - ulo, shard.n_items, hp, device, t["P"].dtype)
    u, i, v = shard.by_item
    by_item = als_layout(_local(i, ilo), u, v, ihi - ilo, shard.n_users, hp, device, t["P"].dtype)
    bu, bi = t.get("bu"), t.get("bi")
    users = [t["P"]] + ([bu] if bu is not None else [])
    items = [t["Q"]] + ([bi] if bi is not None else [])

    def part(x: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
        return None if x is None else x[lo:hi]

    def sweep() -> float:
        als_half_sweep(by_user, t["P"][ulo:uhi], part(bu, ulo, uhi), t["Q"], bi, **kw)
        gather_block(users, shard.user_bounds)
        sse = als_half_sweep(by_item, t["Q"][ilo:ihi], part(bi, ilo, ihi), t["P"], bu, with_loss=True, **kw)
        gather_block(items, shard.item_bounds)
        return 0.5 * float(comm.all_sum([sse])[0]) / shard.n_total

    return sweep


def make_ials_sweep(shard: Shard, t: Tables, hp: dict[str, Any], device: torch.device) -> Callable[[], float]:
    """One iALS sweep over the shard; returns the full objective per interaction (the single-process loss)."""
    s = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], hp["cg_steps"])
    k = hp["factors"]
    ulo, uhi = shard.users_of(comm.rank())
    ilo, ihi = shard.items_of(comm.rank())

    def side(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lo: int, hi: int, n_other: int):
        conf = confidence(vals, hp["alpha"], hp["confidence"], hp["confidence_eps"])
        return ials_side(_local(rows, lo), cols, conf, hi - lo, n_other, k, device, s)

    u, i, v = shard.by_user
    by_user = side(u, i, v, ulo, uhi, shard.n_items)
    u, i, v = shard.by_item
    by_item = side(i, u, v, ilo, ihi, shard.n_users)
    P, Q = t["P"], t["Q"]

    def sweep() -> float:
        ials_half_sweep(by_user, P[ulo:uhi], Q, s)
        gather_block([P], shard.user_bounds)
        ials_half_sweep(by_item, Q[ilo:ihi], P, s)
        gather_block([Q], shard.item_bounds)
        observed = ials_observed(by_item, Q[ilo:ihi], P, s)[0]
        # ridge terms of this rank's rows; the all-pairs term a0 <P^T P, Q^T Q> from the full tables
        ridge = float(torch.linalg.vecdot(by_user.lam.squeeze(1), P[ulo:uhi].square().sum(1))
                      + torch.linalg.vecdot(by_item.lam.squeeze(1), Q[ilo:ihi].square().sum(1)))
        observed, ridge = comm.all_sum([observed, ridge])
        all_pairs = s.unobserved_weight * float(((P.T @ P) * (Q.T @ Q)).sum())
        return (observed + ridge + all_pairs) / shard.n_total

    return sweep
