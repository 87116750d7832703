"""Fit a fresh :class:`MFModel` on compacted interactions with the chosen solver.

Reads top to bottom: build the model, move data to the device, set up the
monitor (history, early stopping), then run the solver's epochs. Explicit
losses are validated by RMSE, implicit ones by NDCG@10 over all items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.device import prefer_csr, thread_policy
from torchmf.estimator.params import auto_batch_size, is_implicit_loss
from torchmf.nn.mf import MFModel
from torchmf.solvers.als import ALSSide, als_half_sweep, als_side
from torchmf.solvers.ials import IALSSettings, confidence, ials_half_sweep, ials_loss, ials_observed, ials_side
from torchmf.solvers.monitor import Monitor
from torchmf.solvers.pairwise import PairwiseSettings, make_pairwise_epoch
from torchmf.solvers.ragged import Bucket, bucketize
from torchmf.solvers.sgd import SGDSettings, make_sgd_epoch, model_tables

__all__ = ["RankingValidation", "Validation", "fit_model"]

log = logging.getLogger(__name__)

# cut-off of the ranking metrics that validate implicit models
_VAL_K = 10


class Validation:
    """Validation pairs as index tensors on the device (pairs unknown to train dropped).

    Parameters
    ----------
    users, items : numpy.ndarray of int64, shape (n,)
        Indices in the training id maps; -1 marks unknown ids (dropped).
    values : numpy.ndarray, shape (n,)
    clip : (float, float)
        Rating range predictions are clipped to, as ``predict`` does.
    """

    def __init__(
        self, users: np.ndarray, items: np.ndarray, values: np.ndarray, clip: tuple[float, float], device: torch.device
    ) -> None:
        keep = (users >= 0) & (items >= 0)
        self.users = torch.as_tensor(users[keep], device=device)
        self.items = torch.as_tensor(items[keep], device=device)
        self.values = torch.as_tensor(values[keep], dtype=torch.float32, device=device)
        self.clip = clip

    def __call__(self, model: MFModel) -> dict[str, float]:
        with torch.no_grad():
            pred = model(self.users, self.items).clamp(*self.clip)
        err = pred - self.values
        return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}


class RankingValidation:
    """NDCG@10 and recall@10 of held-out pairs, ranking all items minus the training ones.

    Parameters
    ----------
    val_users, val_items : torch.LongTensor, shape (n,)
        Held-out pairs (known ids only), on the device.
    train : Interactions
        The (compacted) training data: its items are excluded from each
        user's ranking, as ``recommend(exclude_seen=True)`` does.
    """

    def __init__(self, val_users: torch.Tensor, val_items: torch.Tensor, train: Interactions) -> None:
        dev = val_users.device
        self.users, inverse = torch.unique(val_users, return_inverse=True)
        n_items = train.n_items
        # relevance as a dense (n_val_users, n_items) 0/1 block: validation sets are small
        self.relevant = torch.zeros(len(self.users), n_items, device=dev)
        self.relevant[inverse, val_items] = 1.0
        row_of = torch.full((train.n_users,), -1, dtype=torch.long, device=dev)
        row_of[self.users] = torch.arange(len(self.users), device=dev)
        tu = row_of[torch.as_tensor(train.users, device=dev)]
        keep = tu >= 0
        self.seen_rows, self.seen_cols = tu[keep], torch.as_tensor(train.items, device=dev)[keep]
        self.relevant[self.seen_rows, self.seen_cols] = 0.0  # a training item is never a hit
        self.n_rel = self.relevant.sum(1)
        k = min(_VAL_K, n_items)
        self.discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=dev, dtype=torch.float32))
        self.ideal = torch.cumsum(self.discount, 0)

    def __call__(self, model: MFModel) -> dict[str, float]:
        with torch.no_grad():
            scores = model.score_all(self.users).float()
            scores[self.seen_rows, self.seen_cols] = -torch.inf
            top = torch.topk(scores, len(self.discount), dim=1).indices
        hits = self.relevant.gather(1, top)
        dcg = (hits * self.discount).sum(1)
        idcg = self.ideal[(self.n_rel.clamp(1, len(self.discount)) - 1).long()]
        ok = self.n_rel > 0
        ndcg = (dcg / idcg)[ok].mean()
        recall = (hits.sum(1) / self.n_rel.clamp_min(1))[ok].mean()
        return {f"ndcg@{_VAL_K}": float(ndcg), f"recall@{_VAL_K}": float(recall)}


def _snapshot(model: MFModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_model(
    data: Interactions,
    hp: dict[str, Any],
    device: torch.device,
    validation: Validation | None = None,
) -> tuple[MFModel, list[dict[str, float]], int | None]:
    """Train a model on ``data`` (already compacted) with hyperparameters ``hp``.

    Returns
    -------
    model : MFModel
        On ``device``.
    history : list of dict
        One row per epoch: ``epoch``, ``train_loss`` and ``val_*`` metrics
        (RMSE/MAE for explicit losses, NDCG@10/recall@10 for implicit ones).
    best_epoch : int or None
        The epoch whose weights were kept, when validating.
    """
    implicit = is_implicit_loss(hp["loss"])
    if hp["batch_size"] is None:
        hp["batch_size"] = auto_batch_size(hp["loss"], len(data))
    if data.implicit and not implicit:
        log.warning(
            "fitting loss=%r (squared error on ratings) to implicit data, where every value is 1; "
            "pass loss='ials' (or 'bpr') to learn a ranking of items instead", hp["loss"],
        )
    # Initialise on the CPU from a seeded generator so results do not depend on
    # the device's RNG; then move.
    gen = torch.Generator().manual_seed(hp["seed"])
    model = MFModel(
        data.n_users, data.n_items, hp["factors"], biases=hp["biases"], init_std=hp["init_std"], generator=gen
    )
    if hp["biases"]:
        with torch.no_grad():
            model.global_bias.fill_(float(np.mean(data.values, dtype=np.float64)))
    model.to(device)
    model.requires_grad_(False)  # solvers update weights by hand

    validate: Callable[[], dict[str, float]] | None = None
    if validation is not None and implicit:
        ranking = RankingValidation(validation.users, validation.items, data)
        validate = lambda: ranking(model)  # noqa: E731
    elif validation is not None:
        validate = lambda: validation(model)  # noqa: E731
    sgd_like = hp["solver"] == "sgd"
    monitor = Monitor(
        hp["epochs"],
        snapshot=lambda: _snapshot(model),
        restore=lambda state: model.load_state_dict(state),
        validate=validate,
        monitor=f"ndcg@{_VAL_K}" if implicit else "rmse",
        higher_is_better=implicit,
        patience=hp["early_stopping"],
        divergence_hint=(
            f"lower lr (now {hp['lr']}) or raise reg (now {hp['reg']})" if sgd_like else f"raise reg (now {hp['reg']})"
        ),
        verbose=hp["verbose"],
        desc=f"torchmf {hp['loss']}/{hp['solver']}" if implicit else f"torchmf {hp['solver']}",
    )
    if hp["loss"] == "ials":
        run_epoch = _ials_epoch(model, data, hp, device)
    elif implicit:
        run_epoch = _pairwise_epoch(model, data, hp, device)
    elif hp["solver"] == "als":
        run_epoch = _als_epoch(model, data, hp, device)
    else:
        run_epoch = _sgd_epoch(model, data, hp, device)
    # intra-op threads matched to the free cores and to each kernel's work (see device.thread_policy)
    minibatch = hp["solver"] == "sgd"
    work = (hp["batch_size"] * (1 + (hp["negatives"] or 0)) if minibatch else len(data)) * hp["factors"]
    with torch.no_grad(), thread_policy(work, device) as threads:
        for epoch in range(1, hp["epochs"] + 1):
            threads.refresh()
            if monitor.end_epoch(epoch, run_epoch()):
                break
    monitor.finish()
    return model, monitor.history, monitor.best_epoch


def _ials_epoch(model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device) -> Callable[[], float]:
    conf = confidence(data.values, hp["alpha"], hp["confidence"], hp["confidence_eps"])
    k = hp["factors"]
    settings = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], hp["cg_steps"])
    by_user = ials_side(data.users, data.items, conf, data.n_users, data.n_items, k, device, settings)
    by_item = ials_side(data.items, data.users, conf, data.n_items, data.n_users, k, device, settings)
    t = model_tables(model)
    P, Q = t["P"], t["Q"]

    # With both sides on the CSR layout, the scores the loss needs after a sweep
    # are the ones the next sweep's user half starts from (same P and Q, pairs
    # in the other order): computing them once saves a pass over the data.
    csr = settings.cg_steps > 0 and by_user.chunks is None and by_item.chunks is None
    to_user_order = torch.argsort(by_item.order)[by_user.order] if csr else None
    carried: list[torch.Tensor | None] = [None]

    def sweep() -> float:
        ials_half_sweep(by_user, P, Q, settings, scores=carried[0])
        if to_user_order is None:
            observed = ials_half_sweep(by_item, Q, P, settings, with_loss=True)
        else:
            ials_half_sweep(by_item, Q, P, settings)
            observed, scores = ials_observed(by_item, Q, P, settings)
            carried[0] = scores[to_user_order]
        # the full objective per observed pair: comparable across data sizes
        return ials_loss(observed, P, Q, by_user, by_item, settings) / len(data)

    return sweep


def _pairwise_epoch(
    model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device
) -> Callable[[], float]:
    users = torch.as_tensor(data.users, device=device)
    items = torch.as_tensor(data.items, device=device)
    gen = torch.Generator(device=device).manual_seed(hp["seed"])
    settings = PairwiseSettings(
        hp["loss"], hp["lr"], hp["reg"], hp["batch_size"], hp["optimizer"], hp["negatives"], hp["negative_sampling"]
    )
    return make_pairwise_epoch(model, users, items, settings, gen)


def _sgd_epoch(model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device):
    users = torch.as_tensor(data.users, device=device)
    items = torch.as_tensor(data.items, device=device)
    values = torch.as_tensor(data.values, device=device)
    gen = torch.Generator(device=device).manual_seed(hp["seed"])
    settings = SGDSettings(hp["lr"], hp["reg"], hp["reg_bias"], hp["batch_size"], hp["optimizer"])
    return make_sgd_epoch(model, users, items, values, settings, gen)


def _als_epoch(model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device):
    t = model_tables(model)
    mu = float(model.global_bias) if hp["biases"] else 0.0
    kw = dict(
        global_mean=mu, reg=hp["reg"], reg_bias=hp["reg_bias"], cg_steps=hp["cg_steps"], reg_exponent=hp["reg_exponent"]
    )
    width = hp["factors"] + int(hp["biases"])
    itemsize = t["P"].element_size()

    def layout(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> ALSSide | list[Bucket]:
        # matrix-free CG on CSR kernels where it wins; else degree buckets (also the exact solves)
        n_active = int(np.count_nonzero(np.bincount(rows, minlength=n_rows)))
        if hp["cg_steps"] > 0 and prefer_csr(len(rows), n_active, n_cols, width, itemsize, device):
            return als_side(rows, cols, data.values, n_rows, n_cols, device, t["P"].dtype)
        return bucketize(rows, cols, data.values, n_rows, n_cols, device)

    by_user = layout(data.users, data.items, data.n_users, data.n_items)
    by_item = layout(data.items, data.users, data.n_items, data.n_users)

    def sweep() -> float:
        als_half_sweep(by_user, t["P"], t.get("bu"), t["Q"], t.get("bi"), **kw)
        # the item step's residuals are the model's training errors after the sweep:
        # the same per-rating half squared error SGD reports, for comparable histories
        sse = als_half_sweep(by_item, t["Q"], t.get("bi"), t["P"], t.get("bu"), with_loss=True, **kw)
        return 0.5 * sse / len(data)

    return sweep
