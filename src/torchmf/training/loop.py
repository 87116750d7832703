"""The epoch loop: build the model, look up the solver, run its epochs under the monitor.

Reads top to bottom. Solvers own the maths (:mod:`torchmf.solvers`); the
monitor owns history, progress, divergence checks and early stopping
(:mod:`torchmf.training.monitor`); this module only wires them together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.device import check_memory, thread_policy
from torchmf.nn.mf import MFModel
from torchmf.solvers import get_solver
from torchmf.training.monitor import Monitor, baseline_loss, divergence_cause
from torchmf.training.validation import VAL_K, RankingValidation, Validation

__all__ = ["fit_model", "new_model"]

log = logging.getLogger(__name__)


def new_model(data: Interactions, hp: dict[str, Any], device: torch.device) -> MFModel:
    """A freshly initialised :class:`MFModel` for ``data``, on ``device``.

    Initialised on the CPU from a generator seeded with ``hp["seed"]`` so the
    start does not depend on the device's RNG; the global bias starts at the
    training mean.
    """
    n_params = (data.n_users + data.n_items) * (hp["factors"] + int(bool(hp["biases"])))
    check_memory(n_params * 4, device, f"factors={hp['factors']} for {data.n_users} users and {data.n_items} items")
    gen = torch.Generator().manual_seed(hp["seed"])
    model = MFModel(
        data.n_users, data.n_items, hp["factors"], biases=hp["biases"], init_std=hp["init_std"], generator=gen
    )
    if hp["biases"]:
        with torch.no_grad():
            model.global_bias.fill_(float(np.mean(data.values, dtype=np.float64)))
    model.requires_grad_(False)  # solvers update weights by hand
    return model.to(device)


def _pair(data: Interactions, j: int) -> str:
    """Interaction ``j`` as "user U, item I" with raw ids."""
    user, item = data.user_map.raw([data.users[j]]).tolist()[0], data.item_map.raw([data.items[j]]).tolist()[0]
    return f"user {user!r}, item {item!r}"


def _kernel_work(hp: dict[str, Any], n_interactions: int) -> int:
    """Elements one kernel call touches, for the thread policy: a minibatch (SGD family) or all pairs (ALS)."""
    if hp["solver"] == "sgd" and hp["batch_size"]:
        return hp["batch_size"] * (1 + (hp["negatives"] or 0)) * hp["factors"]
    return n_interactions * hp["factors"]


def _snapshot(model: MFModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_model(
    data: Interactions,
    hp: dict[str, Any],
    device: torch.device,
    validation: Validation | None = None,
    model: MFModel | None = None,
    extras: dict[str, Any] | None = None,
) -> tuple[MFModel, list[dict[str, float]], int | None]:
    """Train on ``data`` (compacted) with the solver that ``hp`` names.

    Parameters
    ----------
    data : Interactions
        Compacted: indices 0..n-1.
    hp : dict
        Effective hyperparameters (every ``Params`` field resolved). A solver
        may fill in values it resolves from the data (e.g. ``batch_size``).
    device : torch.device
    validation : Validation, optional
        Held-out pairs: RMSE for rating losses, NDCG@10 for ranking losses.
    model : MFModel, optional
        Warm start: train this model (in place, on ``device``) instead of a fresh one.
    extras : dict, optional
        Filled with the solver's ``extras`` (JSON-able metadata, e.g. the width of
        embeddings a solver rewrote in ``finish``) when it has any.

    Returns
    -------
    model : MFModel
        On ``device``.
    history : list of dict
        One row per epoch: ``epoch``, ``train_loss`` and ``val_*`` metrics.
    best_epoch : int or None
        The epoch whose weights were kept, when validating.
    """
    solver_cls = get_solver(hp["loss"], hp["solver"])
    if data.implicit and not solver_cls.ranking:
        log.warning(
            "fitting loss=%r (squared error on ratings) to implicit data, where every value is 1; "
            "pass loss='ials' (or 'bpr') to learn a ranking of items instead", hp["loss"],
        )
    if model is None:
        model = new_model(data, hp, device)
    solver = solver_cls(model, data, hp, device)

    validate: Callable[[], dict[str, float]] | None = None
    if validation is not None and solver_cls.ranking:
        ranking = RankingValidation(validation, data)
        validate = lambda: ranking(model)  # noqa: E731
    elif validation is not None:
        validate = lambda: validation(model)  # noqa: E731
    monitor = Monitor(
        hp["epochs"],
        snapshot=lambda: _snapshot(model),
        restore=lambda state: model.load_state_dict(state),
        validate=validate,
        monitor=f"ndcg@{VAL_K}" if solver_cls.ranking else "rmse",
        higher_is_better=solver_cls.ranking,
        patience=hp["early_stopping"],
        divergence_hint=solver.divergence_hint(),
        baseline=baseline_loss(data.values, hp, data.n_items, solver_cls.ranking),
        cause=lambda: divergence_cause(data.values, lambda j: _pair(data, j), hp),
        verbose=hp["verbose"],
        desc=f"torchmf {hp['loss']}/{hp['solver']}" if solver_cls.ranking else f"torchmf {hp['solver']}",
    )
    # intra-op threads matched to the free cores and to each kernel's work (device.thread_policy)
    with torch.no_grad(), thread_policy(_kernel_work(hp, len(data)), device) as threads:
        for epoch in range(1, hp["epochs"] + 1):
            threads.refresh()
            if monitor.end_epoch(epoch, solver.epoch()):
                break
        monitor.finish()
        solver.finish()
    if extras is not None:
        extras.update(getattr(solver, "extras", {}))
    return model, monitor.history, monitor.best_epoch
