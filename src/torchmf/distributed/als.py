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

With ``exchange="all_to_all"`` (:mod:`torchmf.distributed.rows`) a rank
instead receives, each half-sweep, only the other side's rows its own
interactions reference, as a compact table its layouts index; the iALS
Gramian is then summed over the ranks' blocks, and a rank holds no full
table at all: the sweeps take this rank's blocks (:func:`own_blocks`) and
rank 0 collects them for the model folder at the end.

Each row's solve sees exactly the data and the other side's factors it sees
in one process, so the factors match the single-process fit up to the
floating-point order of a few sums (the loss, the Gramians, reduced over ranks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from torchmf.distributed import comm
from torchmf.distributed.io import Shard
from torchmf.distributed.rows import RowPlan, all_gram, fetch, plan_rows
from torchmf.solvers.als import als_half_sweep
from torchmf.solvers.als_solver import als_layout
from torchmf.solvers.ials import IALSSettings, confidence, ials_half_sweep, ials_observed, ials_side

__all__ = ["Tables", "gather_block", "make_als_sweep", "make_ials_sweep", "own_blocks"]

log = logging.getLogger(__name__)

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


def _take(shard: Shard, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A side's rows (``by_user`` or ``by_item``), released from the shard: the layout keeps its own copy."""
    rows = getattr(shard, side)
    setattr(shard, side, (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)))
    return rows


def own_blocks(t: Tables, shard: Shard) -> Tables:
    """Copies of this rank's rows of the full tables (user rows of P, bu; item rows of Q, bi)."""
    ulo, uhi = shard.users_of(comm.rank())
    ilo, ihi = shard.items_of(comm.rank())
    return {k: (v[ulo:uhi] if k in ("P", "bu") else v[ilo:ihi]).clone() for k, v in t.items()}


def _columns(cols: np.ndarray, bounds: np.ndarray, n_other: int, compact: bool, device: torch.device
             ) -> tuple[RowPlan | None, np.ndarray, int]:
    """A side's columns as the solve sees them: global ids (all_gather) or rows of the compact table (all_to_all)."""
    if not compact:
        return None, cols, n_other
    plan, cols = plan_rows(cols, bounds, n_other, device)
    log.info("rank %d: all_to_all receives %d of %d rows (%.1f%%) from %d owners", comm.rank(), len(plan.needed),
             n_other, 100.0 * len(plan.needed) / max(1, n_other), sum(c > 0 for c in plan.recv_counts))
    return plan, cols, len(plan.needed)


def _block(tables: list[torch.Tensor]) -> torch.Tensor:
    """Tables with the same rows as one (n, w) block (biases as a last column)."""
    return torch.cat([x.reshape(x.shape[0], -1) for x in tables], 1) if len(tables) > 1 else tables[0]


def make_als_sweep(shard: Shard, t: Tables, hp: dict[str, Any], mu: float, device: torch.device,
                   exchange: str = "all_gather") -> Callable[[], float]:
    """One explicit-ALS sweep over the shard; returns the training loss (as the single process reports it).

    ``t`` holds the full tables (all_gather) or only this rank's blocks
    (all_to_all, :func:`own_blocks`); the sweep updates them in place. The
    shard's rows are laid out and then released (``shard.by_user`` and
    ``shard.by_item`` become empty): the layouts hold their own copies.
    """
    kw = dict(global_mean=mu, reg=hp["reg"], reg_bias=hp["reg_bias"], cg_steps=hp["cg_steps"],
              reg_exponent=hp["reg_exponent"])
    compact = exchange == "all_to_all"
    ulo, uhi = shard.users_of(comm.rank())
    ilo, ihi = shard.items_of(comm.rank())
    u, i, v = _take(shard, "by_user")
    item_plan, i, n_i = _columns(i, shard.item_bounds, shard.n_items, compact, device)
    by_user = als_layout(_local(u, ulo), i, v, uhi - ulo, n_i, hp, device, t["P"].dtype)
    u, i, v = _take(shard, "by_item")
    user_plan, u, n_u = _columns(u, shard.user_bounds, shard.n_users, compact, device)
    by_item = als_layout(_local(i, ilo), u, v, ihi - ilo, n_u, hp, device, t["P"].dtype)
    del u, i, v
    bu, bi = t.get("bu"), t.get("bi")
    users = [t["P"]] + ([bu] if bu is not None else [])
    items = [t["Q"]] + ([bi] if bi is not None else [])
    k = t["P"].shape[1]

    mine_u = slice(None) if compact else slice(ulo, uhi)  # this rank's rows of the tables in t
    mine_i = slice(None) if compact else slice(ilo, ihi)

    def part(x: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
        return None if x is None else x[rows]

    def other(plan: RowPlan | None, tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The other side's factors and biases as this half-sweep's layout indexes them."""
        if plan is None:
            return tables[0], tables[1] if len(tables) > 1 else None
        rows = fetch(plan, _block(tables))
        return rows[:, :k].contiguous(), rows[:, k].contiguous() if len(tables) > 1 else None

    def sweep() -> float:
        als_half_sweep(by_user, t["P"][mine_u], part(bu, mine_u), *other(item_plan, items), **kw)
        if not compact:
            gather_block(users, shard.user_bounds)
        sse = als_half_sweep(by_item, t["Q"][mine_i], part(bi, mine_i), *other(user_plan, users), with_loss=True,
                             **kw)
        if not compact:
            gather_block(items, shard.item_bounds)
        return 0.5 * float(comm.all_sum([sse])[0]) / shard.n_total

    return sweep


def make_ials_sweep(shard: Shard, t: Tables, hp: dict[str, Any], device: torch.device,
                    exchange: str = "all_gather") -> Callable[[], float]:
    """One iALS sweep over the shard; returns the full objective per interaction (the single-process loss).

    ``t`` and the shard's rows as in :func:`make_als_sweep`.
    """
    s = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], hp["cg_steps"])
    k = hp["factors"]
    compact = exchange == "all_to_all"
    ulo, uhi = shard.users_of(comm.rank())
    ilo, ihi = shard.items_of(comm.rank())

    def side(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lo: int, hi: int, n_cols: int, n_other: int):
        conf = confidence(vals, hp["alpha"], hp["confidence"], hp["confidence_eps"])
        return ials_side(_local(rows, lo), cols, conf, hi - lo, n_cols, k, device, s, n_other=n_other)

    u, i, v = _take(shard, "by_user")
    item_plan, i, n_i = _columns(i, shard.item_bounds, shard.n_items, compact, device)
    by_user = side(u, i, v, ulo, uhi, n_i, shard.n_items)
    u, i, v = _take(shard, "by_item")
    user_plan, u, n_u = _columns(u, shard.user_bounds, shard.n_users, compact, device)
    by_item = side(i, u, v, ilo, ihi, n_u, shard.n_users)
    del u, i, v
    P, Q = t["P"], t["Q"]
    Pb, Qb = (P, Q) if compact else (P[ulo:uhi], Q[ilo:ihi])
    a0 = s.unobserved_weight

    def sweep_all_gather() -> tuple[float, float]:
        ials_half_sweep(by_user, Pb, Q, s)
        gather_block([P], shard.user_bounds)
        ials_half_sweep(by_item, Qb, P, s)
        gather_block([Q], shard.item_bounds)
        return ials_observed(by_item, Qb, P, s)[0], a0 * float(((P.T @ P) * (Q.T @ Q)).sum())

    def sweep_all_to_all() -> tuple[float, float]:
        # the all-pairs Gramians of the whole tables: sums over the ranks' blocks
        ials_half_sweep(by_user, Pb, fetch(item_plan, Qb), s, gram=all_gram(Qb).mul_(a0))
        gp = all_gram(Pb)
        users = fetch(user_plan, Pb)
        ials_half_sweep(by_item, Qb, users, s, gram=gp * a0)
        return ials_observed(by_item, Qb, users, s)[0], a0 * float((gp * all_gram(Qb)).sum())

    def sweep() -> float:
        observed, all_pairs = sweep_all_to_all() if compact else sweep_all_gather()
        # ridge terms of this rank's rows
        ridge = float(torch.linalg.vecdot(by_user.lam.squeeze(1), Pb.square().sum(1))
                      + torch.linalg.vecdot(by_item.lam.squeeze(1), Qb.square().sum(1)))
        observed, ridge = comm.all_sum([observed, ridge])
        return (observed + ridge + all_pairs) / shard.n_total

    return sweep
