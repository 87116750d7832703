"""BPR, logistic and WARP on sampled negatives as a :class:`~torchmf.solvers.base.Solver`.

Kernels in :mod:`torchmf.solvers.pairwise`. Defaults were tuned with
``benchmarks/implicit_tune.py --grid --loss bpr`` on validation splits carved
from ML-100k's training part, then reg checked per loss: Adagrad copes with
the very different update frequencies of popular and rare items and beat
plain SGD by ~0.006 NDCG; lr 0.05 beat 0.02 and 0.1; reg peaked at
0.016-0.03. They reach validation NDCG@10 0.249 (BPR), 0.251 (logistic),
0.221 (WARP) against iALS's 0.280, which is why iALS is the recommended
implicit loss (as Rendle et al. 2022 also found).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.nn.mf import MFModel
from torchmf.solvers.optim import make_optimizer
from torchmf.solvers.pairwise import PairwiseSettings, fold_in_pairwise, make_pairwise_epoch
from torchmf.solvers.sgd import model_tables
from torchmf.solvers.sgd_solver import MinibatchSolver, auto_batch_size

__all__ = ["PairwiseSolver"]

_COMMON = {"epochs": 30, "lr": 0.05, "reg": 0.016, "reg_exponent": 1.0, "optimizer": "adagrad", "biases": False}


class PairwiseSolver(MinibatchSolver):
    """Minibatch SGD on a ranking loss over sampled negatives."""

    name: ClassVar[str] = "sgd"
    losses: ClassVar[tuple[str, ...]] = ("bpr", "logistic", "warp")
    ranking: ClassVar[bool] = True
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "bpr": {**_COMMON, "negatives": 1},
        "logistic": {**_COMMON, "negatives": 4},
        # WARP estimates a positive's rank from how many of N negatives beat it,
        # so it needs more than one negative to be anything but BPR with a hinge.
        "warp": {**_COMMON, "negatives": 10},
    }
    # What torchmf.autotune searches: (kind, low, high[, "log"]); epochs come from early stopping.
    search_space: ClassVar[dict[str, tuple]] = {
        "factors": ("int", 16, 256, "log"), "lr": ("float", 0.005, 0.3, "log"), "reg": ("float", 0.001, 0.1, "log"),
    }

    def __init__(self, model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device) -> None:
        if hp["batch_size"] is None:
            hp["batch_size"] = auto_batch_size(hp["loss"], len(data))
        self.hp = hp
        users = torch.as_tensor(data.users, device=device)
        items = torch.as_tensor(data.items, device=device)
        gen = torch.Generator(device=device).manual_seed(hp["seed"])
        settings = PairwiseSettings(
            hp["loss"], hp["lr"], hp["reg"], hp["batch_size"], hp["optimizer"], hp["negatives"],
            hp["negative_sampling"],
        )
        self.gen, self.opt = gen, make_optimizer(hp["optimizer"], model_tables(model), hp["lr"])
        self._run_epoch = make_pairwise_epoch(model, users, items, settings, gen, self.opt)

    @classmethod
    def fold_in(cls, model: MFModel, items: torch.Tensor, values: torch.Tensor, hp: dict[str, Any],
                item_counts: np.ndarray | None) -> torch.Tensor:
        """Deterministic L-BFGS on the expected loss, shape (d,)."""
        Q = model.item_embs.weight
        weights = None
        if hp["negative_sampling"] == "popularity" and item_counts is not None:  # the training sampler's law
            weights = torch.as_tensor(item_counts, device=Q.device)
        return fold_in_pairwise(Q, items, hp["loss"], hp["negatives"], hp["reg"], weights, hp["seed"])
