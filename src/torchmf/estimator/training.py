"""Fit a fresh :class:`MFModel` on compacted interactions with the chosen solver.

Reads top to bottom: build the model, move data to the device, set up the
monitor (history, early stopping), then run the solver's epochs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.nn.mf import MFModel
from torchmf.solvers.als import als_half_sweep
from torchmf.solvers.monitor import Monitor
from torchmf.solvers.ragged import bucketize
from torchmf.solvers.sgd import SGDSettings, make_sgd_epoch, model_tables

__all__ = ["fit_model", "Validation"]


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

    def __init__(self, users: np.ndarray, items: np.ndarray, values: np.ndarray, clip: tuple[float, float], device: torch.device) -> None:
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
        One row per epoch: ``epoch``, ``train_loss`` and ``val_*`` metrics.
    best_epoch : int or None
        The epoch whose weights were kept, when validating.
    """
    # Initialise on the CPU from a seeded generator so results do not depend on
    # the device's RNG; then move.
    gen = torch.Generator().manual_seed(hp["seed"])
    model = MFModel(data.n_users, data.n_items, hp["factors"], biases=hp["biases"], init_std=hp["init_std"], generator=gen)
    if hp["biases"]:
        with torch.no_grad():
            model.global_bias.fill_(float(np.mean(data.values, dtype=np.float64)))
    model.to(device)
    model.requires_grad_(False)  # solvers update weights by hand

    monitor = Monitor(
        hp["epochs"],
        snapshot=lambda: _snapshot(model),
        restore=lambda state: model.load_state_dict(state),
        validate=None if validation is None else (lambda: validation(model)),
        monitor="rmse",
        patience=hp["early_stopping"],
        divergence_hint=(
            f"lower lr (now {hp['lr']}) or raise reg (now {hp['reg']})"
            if hp["solver"] == "sgd" else f"raise reg (now {hp['reg']})"
        ),
        verbose=hp["verbose"],
        desc=f"torchmf {hp['solver']}",
    )
    run_epoch = _als_epoch(model, data, hp, device) if hp["solver"] == "als" else _sgd_epoch(model, data, hp, device)
    with torch.no_grad():
        for epoch in range(1, hp["epochs"] + 1):
            if monitor.end_epoch(epoch, run_epoch()):
                break
    monitor.finish()
    return model, monitor.history, monitor.best_epoch


def _sgd_epoch(model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device):
    users = torch.as_tensor(data.users, device=device)
    items = torch.as_tensor(data.items, device=device)
    values = torch.as_tensor(data.values, device=device)
    gen = torch.Generator(device=device).manual_seed(hp["seed"])
    settings = SGDSettings(hp["lr"], hp["reg"], hp["reg_bias"], hp["batch_size"], hp["optimizer"])
    return make_sgd_epoch(model, users, items, values, settings, gen)


def _als_epoch(model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device):
    by_user = bucketize(data.users, data.items, data.values, data.n_users, data.n_items, device)
    by_item = bucketize(data.items, data.users, data.values, data.n_items, data.n_users, device)
    t = model_tables(model)
    mu = float(model.global_bias) if hp["biases"] else 0.0
    users = torch.as_tensor(data.users, device=device)
    items = torch.as_tensor(data.items, device=device)
    values = torch.as_tensor(data.values, device=device)
    kw = dict(global_mean=mu, reg=hp["reg"], reg_bias=hp["reg_bias"], cg_steps=hp["cg_steps"], reg_exponent=hp["reg_exponent"])

    def sweep() -> float:
        als_half_sweep(by_user, t["P"], t.get("bu"), t["Q"], t.get("bi"), **kw)
        als_half_sweep(by_item, t["Q"], t.get("bi"), t["P"], t.get("bu"), **kw)
        # the same per-rating half squared error SGD reports, for comparable histories
        err = model(users, items) - values
        return 0.5 * float(err.pow(2).mean())

    return sweep
