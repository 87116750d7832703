"""The all_to_all exchange: each rank receives only the other side's rows its interactions reference.

The all-gather design (:func:`torchmf.distributed.als.gather_block`) gives
every rank the whole other table each half-sweep: ``(n_users + n_items) d``
floats per rank and sweep, whatever the data. Spark ALS's in/out blocks send
instead, to each rank, only the rows that rank's interactions touch. Here that
is a :class:`RowPlan`, computed once per side: the sorted unique ids of the
other side this rank's rows reference (its *needed* rows, the columns of its
compact table), told to their owners in one ``all_to_all_single``, so each
owner knows which of its rows every peer wants. Each half-sweep is then one
``all_to_all_single`` of exactly those rows (:func:`fetch`); the receiver's
buffer, owners in rank order and ids sorted within each, *is* the compact
table, rows in ``needed`` order. The iALS all-pairs Gramian, which needs the
whole table, is the sum over ranks of each block's ``k x k`` Gramian
(:func:`all_gram`).

:func:`choose_exchange` picks the design: all-gather while the full tables
(and the gathered blocks: ``2 (n_users + n_items) d 4`` bytes) fit in a
memory budget, all_to_all beyond it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from torchmf.distributed import comm

__all__ = ["EXCHANGES", "RowPlan", "all_gram", "choose_exchange", "default_budget", "fetch", "plan_rows"]

log = logging.getLogger(__name__)

EXCHANGES = ("auto", "all_gather", "all_to_all")


@dataclass(frozen=True)
class RowPlan:
    """Which rows of the other side this rank needs, and which rows of its own block each peer needs.

    Attributes
    ----------
    needed : numpy.ndarray of int64, shape (m,)
        Sorted global ids of the other side that this rank's interactions
        reference; row ``j`` of the compact table is id ``needed[j]``.
    send_index : torch.LongTensor, shape (s,)
        Rows of this rank's own block (block-local indices) that the peers
        need, grouped by peer in rank order (sorted within each peer).
    send_counts, recv_counts : list of int, length world
        Rows sent to / received from each rank (this rank included).
    """

    needed: np.ndarray
    send_index: torch.Tensor
    send_counts: list[int]
    recv_counts: list[int]


def plan_rows(cols: np.ndarray, bounds: np.ndarray, n_other: int, device: torch.device
              ) -> tuple[RowPlan, np.ndarray]:
    """Plan one side's exchange (collective) and remap its columns to the compact table.

    Parameters
    ----------
    cols : numpy.ndarray of int, shape (nnz,)
        Global ids of the other side referenced by this rank's interactions.
    bounds : numpy.ndarray of int64, shape (world + 1,)
        The other side's blocks: rank ``r`` owns ids ``bounds[r]:bounds[r + 1]``.
    n_other : int
        Size of the other side.
    device : torch.device
        Where the factor blocks live.

    Returns
    -------
    plan : RowPlan
    compact : numpy.ndarray, shape (nnz,)
        ``cols`` as rows of the compact table (same dtype; the map is monotone,
        so sorted columns stay sorted).
    """
    mask = np.zeros(n_other, dtype=bool)
    mask[cols] = True
    needed = np.flatnonzero(mask).astype(np.int64)
    remap = np.cumsum(mask, dtype=np.int64 if n_other >= 2**31 else np.int32)
    del mask
    remap -= 1
    compact = remap[cols].astype(cols.dtype, copy=False)
    del remap
    recv_counts = np.diff(np.searchsorted(needed, bounds)).astype(np.int64)
    lo = int(bounds[comm.rank()])
    if comm.world() == 1:
        index = torch.from_numpy(needed - lo)
        return RowPlan(needed, index.to(device), [len(needed)], [len(needed)]), compact
    send_counts = torch.empty(comm.world(), dtype=torch.int64)
    dist.all_to_all_single(send_counts, torch.from_numpy(recv_counts))
    requests = torch.empty(int(send_counts.sum()), dtype=torch.int64)  # gloo takes empty tensors here
    comm.stats.add((len(needed) - int(recv_counts[comm.rank()])) * 8)
    dist.all_to_all_single(requests, torch.from_numpy(needed), send_counts.tolist(), recv_counts.tolist())
    return RowPlan(needed, (requests - lo).to(device), send_counts.tolist(), recv_counts.tolist()), compact


def fetch(plan: RowPlan, block: torch.Tensor) -> torch.Tensor:
    """The compact table (collective): rows ``plan.needed`` of the other side, from their owners' blocks.

    Parameters
    ----------
    plan : RowPlan
        The plan of the side that will read the table.
    block : torch.Tensor, shape (n_block, w)
        This rank's own block of the table being exchanged (rows of all
        columns travel together: factors and, for explicit ALS, biases).

    Returns
    -------
    torch.Tensor, shape (len(plan.needed), w)
    """
    width = block.shape[1]
    src = block.index_select(0, plan.send_index)
    if comm.world() == 1:
        return src
    out = block.new_empty((len(plan.needed), width))
    comm.stats.add((sum(plan.send_counts) - plan.send_counts[comm.rank()]) * width * block.element_size())
    dist.all_to_all_single(out.view(-1), src.reshape(-1), [c * width for c in plan.recv_counts],
                           [c * width for c in plan.send_counts])
    return out


def all_gram(block: torch.Tensor) -> torch.Tensor:
    """``T^T T`` of the whole table ``T`` from this rank's block of it (collective), shape (w, w)."""
    g = block.T @ block
    if comm.world() > 1:
        comm.stats.add(g.numel() * g.element_size() * (comm.world() - 1))
        dist.all_reduce(g)
    return g


def default_budget() -> int:
    """Bytes the exchanged tables may take on one rank: a quarter of this machine's memory per local rank."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = 16 * 2**30
    local = int(os.environ.get("LOCAL_WORLD_SIZE", comm.world()))
    return int(total // (4 * max(1, local)))


def choose_exchange(option: str, n_users: int, n_items: int, width: int, budget: int | None = None) -> str:
    """The exchange a sharded ALS/iALS fit uses (collective: every rank gets the same answer).

    Parameters
    ----------
    option : {"auto", "all_gather", "all_to_all"}
        "auto" takes all_gather while ``2 (n_users + n_items) width 4`` bytes
        (the full tables plus the gathered blocks) fit in ``budget`` on every
        rank, else all_to_all.
    n_users, n_items, width : int
        Table sizes; ``width`` is factors (+ 1 with biases).
    budget : int, optional
        Bytes; default :func:`default_budget`.

    Returns
    -------
    str
        "all_gather" or "all_to_all".
    """
    if option not in EXCHANGES:
        raise ValueError(f"exchange must be one of {', '.join(EXCHANGES)}; got {option!r}")
    need = 2 * (n_users + n_items) * width * 4
    if option != "auto":
        chosen = option
    else:
        mine = default_budget() if budget is None else int(budget)
        least = int(comm.all_sum([mine], op="min")[0]) if comm.world() > 1 else mine
        chosen = "all_gather" if need <= least else "all_to_all"
        log.info("exchange: %s (tables 2 (n_users + n_items) d 4 = %d bytes, budget %d per rank)", chosen, need, least)
    if comm.world() > 1 and comm.rank() == 0:
        log.info("rank 0: factor exchange by %s", chosen)
    return chosen
