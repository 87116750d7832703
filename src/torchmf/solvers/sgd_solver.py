"""Minibatch SGD on squared error as a :class:`~torchmf.solvers.base.Solver` (kernels in :mod:`torchmf.solvers.sgd`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.nn.mf import MFModel
from torchmf.solvers.als_solver import ridge_fold_in
from torchmf.solvers.optim import load_training_state, make_optimizer, training_state
from torchmf.solvers.sgd import SGDSettings, make_sgd_epoch, model_tables

__all__ = ["MinibatchSolver", "SGDSolver", "auto_batch_size"]


def auto_batch_size(loss: str, n_interactions: int) -> int:
    """Batch size used when ``batch_size=None``.

    Squared-error SGD sums per-rating gradients (Funk-SVD), so a row that
    appears ``c`` times in a batch takes a step ``c`` times as long; on small
    data a 16k batch holds a popular item dozens of times and diverges. About
    64 batches an epoch keeps that count low; large data still gets large,
    fast batches. Ranking losses were tuned with 16384.
    """
    if loss == "mse":
        return int(min(16384, max(256, n_interactions // 64)))
    return 16384


class MinibatchSolver:
    """What the minibatch solvers share: one epoch closure, an lr/reg hint, and RNG + optimiser checkpoints.

    Subclasses set ``hp``, ``gen`` (the epoch's generator), ``opt`` (the row optimiser) and
    ``_run_epoch`` in ``__init__``.
    """

    hp: dict[str, Any]
    gen: torch.Generator
    opt: Any
    _run_epoch: Callable[[], float]

    def epoch(self) -> float:
        return self._run_epoch()

    def divergence_hint(self) -> str:
        return f"lower lr (now {self.hp['lr']}) or raise reg (now {self.hp['reg']})"

    def finish(self) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        """RNG and optimiser state (the model's weights are checkpointed separately)."""
        return training_state(self.gen, self.opt)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_training_state(self.gen, self.opt, state)


class SGDSolver(MinibatchSolver):
    """Funk-SVD style SGD (per-rating L2) with a row-sparse optimiser."""

    name: ClassVar[str] = "sgd"
    losses: ClassVar[tuple[str, ...]] = ("mse",)
    ranking: ClassVar[bool] = False
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "mse": {
            "epochs": 40, "lr": 0.01, "reg": 0.1, "reg_bias": 0.01, "reg_exponent": 1.0, "optimizer": "sgd",
            "biases": True,
        },
    }
    # What torchmf.autotune searches: (kind, low, high[, "log"]); epochs come from early stopping.
    search_space: ClassVar[dict[str, tuple]] = {
        "factors": ("int", 8, 256, "log"), "lr": ("float", 0.002, 0.05, "log"),
        "reg": ("float", 0.01, 0.5, "log"), "reg_bias": ("float", 0.001, 0.2, "log"),
    }

    def __init__(self, model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device) -> None:
        if hp["batch_size"] is None:
            hp["batch_size"] = auto_batch_size(hp["loss"], len(data))
        self.hp = hp
        users = torch.as_tensor(data.users, device=device)
        items = torch.as_tensor(data.items, device=device)
        values = torch.as_tensor(data.values, device=device)
        gen = torch.Generator(device=device).manual_seed(hp["seed"])
        settings = SGDSettings(hp["lr"], hp["reg"], hp["reg_bias"], hp["batch_size"], hp["optimizer"])
        self.gen, self.opt = gen, make_optimizer(hp["optimizer"], model_tables(model), hp["lr"])
        self._run_epoch = make_sgd_epoch(model, users, items, values, settings, gen, self.opt)

    @classmethod
    def fold_in(cls, model: MFModel, items: torch.Tensor, values: torch.Tensor, hp: dict[str, Any],
                item_counts: np.ndarray | None) -> torch.Tensor:
        # SGD applies reg once per rating: a ridge penalty growing linearly with the user's ratings
        return ridge_fold_in(model, items, values, hp["reg"], hp["reg_bias"], 1.0)
