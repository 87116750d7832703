"""Distributed SGD (mse, and the sampled-negative losses) by stratified DSGD (Gemulla et al. 2011).

The rating matrix is cut into ``W x W`` blocks: user block ``r`` (rows of rank
``r``) by item block ``b``. An epoch has ``W`` strata; in stratum ``s`` rank
``r`` trains on block ``(r, (r + s) mod W)`` with the single-process epoch
functions (:func:`~torchmf.solvers.sgd.make_sgd_epoch`,
:func:`~torchmf.solvers.pairwise.make_pairwise_epoch`) on a model whose
tables are views of this rank's user rows and of item block ``b``. No two
ranks touch the same user or item row in a stratum, so no update conflicts;
then every rank passes its item block (with its biases) to rank ``r - 1``
(a ring: one item table per epoch through each link). Negatives are drawn
inside the block in hand, so over an epoch they cover every item.

The row optimiser's state (Adagrad accumulators) lives with each
``(rank, block)`` epoch function and is not shipped with the block: with
``optimizer="sgd"`` (the mse default) the updates are exactly those of
serial SGD on a different order of the ratings; with Adagrad the step sizes
differ slightly from one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from torchmf.distributed import comm
from torchmf.distributed.als import gather_block
from torchmf.distributed.io import Shard
from torchmf.nn.mf import MFModel
from torchmf.solvers.pairwise import PairwiseSettings, make_pairwise_epoch
from torchmf.solvers.sgd import SGDSettings, make_sgd_epoch

__all__ = ["DSGD", "PairwiseSGD"]


def _view_model(model: MFModel, users: tuple[int, int], items: tuple[int, int]) -> MFModel:
    """An MFModel whose tables are views of ``model``'s rows ``users`` and ``items`` (updates write through)."""
    (ulo, uhi), (ilo, ihi) = users, items
    m = MFModel(1, 1, model.embedding_dim, biases=model.biases)
    m.user_embs = nn.Embedding.from_pretrained(model.user_embs.weight.data[ulo:uhi], freeze=True)
    m.item_embs = nn.Embedding.from_pretrained(model.item_embs.weight.data[ilo:ihi], freeze=True)
    if model.biases:
        m.user_bias = nn.Embedding.from_pretrained(model.user_bias.weight.data[ulo:uhi], freeze=True)
        m.item_bias = nn.Embedding.from_pretrained(model.item_bias.weight.data[ilo:ihi], freeze=True)
        m.global_bias = nn.Parameter(model.global_bias.data.clone(), requires_grad=False)
    return m


class DSGD:
    """Stratified SGD over a shard; call :meth:`epoch` with the 1-based epoch number.

    Parameters
    ----------
    shard : Shard
    model : MFModel
        Full-size tables on every rank; only this rank's user rows and the
        item block in hand are current during an epoch (:meth:`gather` makes
        the whole model current everywhere).
    hp : dict
        Resolved hyperparameters (``batch_size`` set).
    device : torch.device
    """

    def __init__(self, shard: Shard, model: MFModel, hp: dict[str, Any], device: torch.device) -> None:
        self.shard, self.model, self.hp = shard, model, hp
        self.W, self.r = comm.world(), comm.rank()
        users = shard.users_of(self.r)
        u, i, v = shard.by_user
        block = np.searchsorted(shard.item_bounds, i, side="right") - 1
        # serial SGD's batch holds each row about as often as a 1/W batch of one block does
        bs = max(1, hp["batch_size"] // self.W)
        self.fns: list[Callable[[], float] | None] = []
        self.gens: list[torch.Generator] = []
        self.sizes: list[int] = []
        for b in range(self.W):
            items = shard.items_of(b)
            rows = np.flatnonzero(block == b)
            gen = torch.Generator(device=device)
            self.gens.append(gen)
            self.sizes.append(len(rows))
            if len(rows) == 0:
                self.fns.append(None)
                continue
            m = _view_model(model, users, items)
            ut = torch.as_tensor(u[rows] - users[0], device=device)
            it = torch.as_tensor(i[rows] - items[0], device=device)
            if hp["loss"] == "mse":
                vt = torch.as_tensor(v[rows], device=device)
                s = SGDSettings(hp["lr"], hp["reg"], hp["reg_bias"], bs, hp["optimizer"])
                self.fns.append(make_sgd_epoch(m, ut, it, vt, s, gen))
            else:
                s = PairwiseSettings(hp["loss"], hp["lr"], hp["reg"], bs, hp["optimizer"], hp["negatives"],
                                     hp["negative_sampling"])
                self.fns.append(make_pairwise_epoch(m, ut, it, s, gen))

    def _item_tables(self) -> list[torch.Tensor]:
        m = self.model
        return [m.item_embs.weight.data] + ([m.item_bias.weight.data] if m.biases else [])

    def _pass_block(self, b: int) -> None:
        """Send item block ``b`` to rank r - 1 and receive block ``b + 1`` from rank r + 1."""
        if self.W == 1:
            return
        lo, hi = self.shard.items_of(b)
        out = torch.cat([t[lo:hi].reshape(hi - lo, -1) for t in self._item_tables()], 1).contiguous()
        nb = (b + 1) % self.W
        nlo, nhi = self.shard.items_of(nb)
        got = out.new_empty((nhi - nlo, out.shape[1]))
        comm.stats.add(out.numel() * out.element_size())
        ops = []  # both ends know every block's size, so empty blocks are skipped on both
        if out.numel():
            ops.append(dist.P2POp(dist.isend, out, (self.r - 1) % self.W))
        if got.numel():
            ops.append(dist.P2POp(dist.irecv, got, (self.r + 1) % self.W))
        for work in dist.batch_isend_irecv(ops) if ops else []:
            work.wait()
        start = 0
        for t in self._item_tables():
            w = 1 if t.dim() == 1 else t.shape[1]
            t[nlo:nhi] = got[:, start:start + w].reshape(t[nlo:nhi].shape)
            start += w

    def epoch(self, epoch: int) -> float:
        """Run epoch ``epoch`` (W strata); returns the mean training loss over all ranks."""
        total = 0.0
        for s in range(self.W):
            b = (self.r + s) % self.W
            fn = self.fns[b]
            if fn is not None:
                # a seed per (epoch, rank, block): a resumed fit replays the same order
                self.gens[b].manual_seed(hash((self.hp["seed"], epoch, self.r, b)) & 0x7FFFFFFFFFFF)
                total += fn() * self.sizes[b]
            self._pass_block(b)
        return float(comm.all_sum([total])[0]) / self.shard.n_total

    def gather(self) -> None:
        """Make the whole model current on every rank (after an epoch: each rank holds its own item block)."""
        m = self.model
        users = [m.user_embs.weight.data] + ([m.user_bias.weight.data] if m.biases else [])
        gather_block(users, self.shard.user_bounds)
        gather_block(self._item_tables(), self.shard.item_bounds)


class PairwiseSGD:
    """Sampled-negative losses (BPR, ...): each rank trains its users against all items, item deltas summed.

    A negative may be any item, so item blocks cannot be kept apart as in
    :class:`DSGD` (negatives drawn inside a block never rank a popular item
    against an unpopular one, and lose most of the ranking signal). Instead
    every rank runs the single-process epoch on its own users (rows no other
    rank touches) with a full copy of the item table; after the epoch the
    item tables' changes are summed over ranks (one all-reduce of the item
    table per epoch), as if the ranks' updates had been applied one after
    the other to the same starting table. Each rank keeps the full batch
    size (so an epoch has 1/W as many steps per rank): on ML-100k that
    matched one process's NDCG@10 best (0.397 vs 0.402 at W = 2; halving the
    batch 0.392, averaging instead of summing the changes 0.389-0.394).

    Parameters
    ----------
    shard, model, hp, device
        As :class:`DSGD`.
    """

    def __init__(self, shard: Shard, model: MFModel, hp: dict[str, Any], device: torch.device) -> None:
        self.shard, self.model, self.hp = shard, model, hp
        self.W, self.r = comm.world(), comm.rank()
        users = shard.users_of(self.r)
        u, i, _ = shard.by_user
        self.gen = torch.Generator(device=device)
        self.n = len(u)
        m = _view_model(model, users, (0, shard.n_items))
        s = PairwiseSettings(hp["loss"], hp["lr"], hp["reg"], hp["batch_size"], hp["optimizer"],
                             hp["negatives"], hp["negative_sampling"])
        ut = torch.as_tensor(u - users[0], device=device)
        self.fn = make_pairwise_epoch(m, ut, torch.as_tensor(i, device=device), s, self.gen) if self.n else None

    def epoch(self, epoch: int) -> float:
        """Run epoch ``epoch``; returns the mean training loss over all ranks."""
        Q = self.model.item_embs.weight.data
        start = Q.clone()
        total = 0.0
        if self.fn is not None:
            self.gen.manual_seed(hash((self.hp["seed"], epoch, self.r)) & 0x7FFFFFFFFFFF)
            total = self.fn() * self.n
        if self.W > 1:
            delta = Q.sub_(start)
            comm.stats.add(2 * delta.numel() * delta.element_size() * (self.W - 1) // self.W)
            dist.all_reduce(delta)
            Q.add_(start)
        return float(comm.all_sum([total])[0]) / self.shard.n_total

    def gather(self) -> None:
        """Make every rank's user rows known to all (items are current everywhere after each epoch)."""
        gather_block([self.model.user_embs.weight.data], self.shard.user_bounds)
