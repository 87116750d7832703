"""Minibatch SGD-family training for explicit ratings (squared loss).

The whole training set lives on the device as three tensors; each epoch draws
one random permutation and walks it in large slices. The gradient of the dot
product model is written out by hand (it is two lines), so a step is a few
gathers, one multiply-add and ``index_add_`` scatters, with no autograd graph
and no DataLoader. Regularisation is applied per rating to the rows a batch
touches (Funk-SVD semantics), so frequent users and items are shrunk more, just
as weighted-lambda ALS does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from torchmf.nn.mf import MFModel
from torchmf.solvers.losses import mse
from torchmf.solvers.optim import RowOptimizer, make_optimizer

__all__ = ["SGDSettings", "make_sgd_epoch", "model_tables"]


@dataclass(frozen=True)
class SGDSettings:
    """Hyperparameters of one SGD fit (validated by the estimator)."""

    lr: float
    reg: float
    reg_bias: float
    batch_size: int
    optimizer: str


def model_tables(model: MFModel) -> dict[str, torch.Tensor]:
    """The model's weights as plain tensors (views), keyed P, Q, bu, bi.

    Biases are returned as 1-D views of the ``(n, 1)`` embedding weights, so
    updating them updates the model.
    """
    tables = {"P": model.user_embs.weight.data, "Q": model.item_embs.weight.data}
    if model.biases:
        tables["bu"] = model.user_bias.weight.data[:, 0]
        tables["bi"] = model.item_bias.weight.data[:, 0]
    return tables


def make_sgd_epoch(
    model: MFModel,
    users: torch.Tensor,
    items: torch.Tensor,
    values: torch.Tensor,
    settings: SGDSettings,
    generator: torch.Generator,
    opt: RowOptimizer | None = None,
) -> Callable[[], float]:
    """Return a function that runs one epoch and returns the mean training loss.

    Parameters
    ----------
    model : MFModel
        Updated in place; its global bias stays fixed (the training mean).
    users, items : torch.LongTensor, shape (n,)
    values : torch.Tensor, shape (n,)
        All on the model's device.
    settings : SGDSettings
    generator : torch.Generator
        On the same device; drives the per-epoch permutation.
    opt : RowOptimizer, optional
        The optimiser over :func:`model_tables` (the caller keeps it to checkpoint
        its state); built from ``settings`` when None.
    """
    tables = model_tables(model)
    if opt is None:
        opt = make_optimizer(settings.optimizer, tables, settings.lr)
    mu = float(model.global_bias.detach()) if model.biases else 0.0
    reg, reg_b, bs = settings.reg, settings.reg_bias, settings.batch_size
    P, Q = tables["P"], tables["Q"]
    bu, bi = tables.get("bu"), tables.get("bi")
    n = len(values)

    # Scratch buffers reused by every batch: fresh multi-megabyte tensors each
    # step would cost a page-faulting allocation apiece, which on CPU takes
    # longer than the arithmetic.
    d = P.shape[1]
    buf_pu, buf_qi = P.new_empty(bs, d), P.new_empty(bs, d)
    buf_gp, buf_gq = P.new_empty(bs, d), P.new_empty(bs, d)

    def epoch() -> float:
        total = torch.zeros((), dtype=torch.float64, device=values.device)
        perm = torch.randperm(n, generator=generator, device=values.device)
        # one gather per epoch, then each batch is a contiguous slice (a view)
        users_p, items_p, values_p = users[perm], items[perm], values[perm]
        for start in range(0, n, bs):
            u, i, r = users_p[start : start + bs], items_p[start : start + bs], values_p[start : start + bs]
            m = len(u)
            pu = torch.index_select(P, 0, u, out=buf_pu[:m])
            qi = torch.index_select(Q, 0, i, out=buf_qi[:m])
            gp, gq = buf_gp[:m], buf_gq[:m]
            pred = torch.mul(pu, qi, out=gp).sum(1).add_(mu)
            if bu is not None:
                bu_u, bi_i = bu.index_select(0, u), bi.index_select(0, i)
                pred.add_(bu_u).add_(bi_i)
            loss, g = mse(pred, r)
            total += loss
            # gradient of loss + reg/2 |row|^2 w.r.t. each row, once per rating
            g1 = g.unsqueeze(1)
            opt.step("P", u, torch.mul(pu, reg, out=gp).addcmul_(g1, qi))
            opt.step("Q", i, torch.mul(qi, reg, out=gq).addcmul_(g1, pu))
            if bu is not None:
                opt.step("bu", u, bu_u.mul_(reg_b).add_(g))
                opt.step("bi", i, bi_i.mul_(reg_b).add_(g))
        return float(total) / n

    return epoch
