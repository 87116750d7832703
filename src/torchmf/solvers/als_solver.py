"""Explicit ALS as a :class:`~torchmf.solvers.base.Solver` (kernels in :mod:`torchmf.solvers.als`)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from torchmf.data.interactions import Interactions
from torchmf.device import prefer_csr
from torchmf.nn.mf import MFModel
from torchmf.solvers.als import ALSSide, als_half_sweep, als_side, ridge_rows
from torchmf.solvers.ragged import Bucket, bucketize
from torchmf.solvers.sgd import model_tables

__all__ = ["ALSSolver", "als_layout", "ridge_fold_in"]


def als_layout(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int,
               hp: dict[str, Any], device: torch.device, dtype: torch.dtype = torch.float32,
               indptr: np.ndarray | None = None) -> ALSSide | list[Bucket]:
    """One side's ratings laid out for :func:`~torchmf.solvers.als.als_half_sweep`.

    Matrix-free CG on CSR kernels where :func:`~torchmf.device.prefer_csr`
    says it wins; else degree buckets (also the exact solves). Also used by the
    sharded fit (:mod:`torchmf.distributed.als`) on each rank's rows.

    Parameters
    ----------
    rows, cols : numpy.ndarray of int64, shape (nnz,)
        Rated pairs; rows index this side, cols the other.
    values : numpy.ndarray, shape (nnz,)
    n_rows, n_cols : int
    hp : dict
        Effective hyperparameters (``factors``, ``biases``, ``cg_steps``).
    device : torch.device
    dtype : torch.dtype
        Of the factors.
    indptr : numpy.ndarray of int64, shape (n_rows + 1,), optional
        Row pointers of pairs already in CSR order (by row, then column; the
        update's selections): the CSR layout then takes them as they are.
    """
    width = hp["factors"] + int(hp["biases"])
    itemsize = torch.finfo(dtype).bits // 8
    counts = np.diff(indptr) if indptr is not None else np.bincount(rows, minlength=n_rows)
    n_active = int(np.count_nonzero(counts))
    if hp["cg_steps"] > 0 and prefer_csr(len(rows), n_active, n_cols, width, itemsize, device):
        return als_side(rows, cols, values, n_rows, n_cols, device, dtype, indptr=indptr)
    return bucketize(rows, cols, values, n_rows, n_cols, device)


class ALSSolver:
    """Alternating least squares on squared error with biases (weighted-lambda regularisation)."""

    name: ClassVar[str] = "als"
    losses: ClassVar[tuple[str, ...]] = ("mse",)
    ranking: ClassVar[bool] = False
    # Chosen on ML-100k's five canonical folds (benchmarks/explicit.py; results
    # in benchmarks/RESULTS.md): they trade a little accuracy for a fit time no
    # slower than Surprise's SVD.
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "mse": {"epochs": 5, "reg": 0.35, "reg_bias": 0.2, "reg_exponent": 0.75, "biases": True},
    }
    # What torchmf.autotune searches: (kind, low, high[, "log"]); epochs come from early stopping.
    search_space: ClassVar[dict[str, tuple]] = {
        "factors": ("int", 8, 256, "log"), "reg": ("float", 0.05, 2.0, "log"),
        "reg_bias": ("float", 0.01, 2.0, "log"), "reg_exponent": ("float", 0.5, 1.0),
    }

    def __init__(self, model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device) -> None:
        self.t = model_tables(model)
        self.n = len(data)
        self.hp = hp
        mu = float(model.global_bias) if hp["biases"] else 0.0
        self.kw = dict(
            global_mean=mu, reg=hp["reg"], reg_bias=hp["reg_bias"], cg_steps=hp["cg_steps"],
            reg_exponent=hp["reg_exponent"],
        )
        self.by_user = als_layout(data.users, data.items, data.values, data.n_users, data.n_items, hp, device)
        self.by_item = als_layout(data.items, data.users, data.values, data.n_items, data.n_users, hp, device)

    def epoch(self) -> float:
        t = self.t
        als_half_sweep(self.by_user, t["P"], t.get("bu"), t["Q"], t.get("bi"), **self.kw)
        # the item step's residuals are the model's training errors after the sweep:
        # the same per-rating half squared error SGD reports, for comparable histories
        sse = als_half_sweep(self.by_item, t["Q"], t.get("bi"), t["P"], t.get("bu"), with_loss=True, **self.kw)
        return 0.5 * sse / self.n

    def divergence_hint(self) -> str:
        return f"raise reg (now {self.hp['reg']})"

    def finish(self) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Nothing beyond the weights: the next sweep depends only on them (checkpoints opt in by defining this)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    @classmethod
    def fold_in(cls, model: MFModel, items: torch.Tensor, values: torch.Tensor, hp: dict[str, Any],
                item_counts: np.ndarray | None) -> torch.Tensor:
        return ridge_fold_in(model, items, values, hp["reg"], hp["reg_bias"], hp["reg_exponent"])


def ridge_fold_in(model: MFModel, items: torch.Tensor, values: torch.Tensor, reg: float, reg_bias: float,
                  exponent: float) -> torch.Tensor:
    """Ridge regression of one user's ``[p_u, b_u]`` on their rated items, shape (d [+ 1],).

    The penalty is the training one: ``reg * n ** exponent`` on the factors
    and ``reg_bias * n ** exponent`` on the bias, ``n`` the user's ratings.
    """
    q = model.item_embs.weight[items]
    target = values.to(q.dtype)
    if model.biases:
        target = target - model.global_bias - model.item_bias.weight[items, 0]
        q = torch.cat([q, q.new_ones(len(items), 1)], 1)
    per_dim = torch.full((q.shape[1],), float(reg), device=q.device, dtype=q.dtype)
    if model.biases:
        per_dim[-1] = reg_bias
    lam = (per_dim * float(len(items)) ** exponent).clamp_min(1e-6)
    return ridge_rows(q.unsqueeze(0), target.unsqueeze(0), lam.unsqueeze(0))[0]
