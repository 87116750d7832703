"""Bayesian MF by Gibbs sampling as a :class:`~torchmf.solvers.base.Solver` (sampler in :mod:`torchmf.solvers.gibbs`).

One epoch is one Gibbs sweep; the first ``burn_in`` are discarded, then every
``thin``-th of the next ``samples * thin`` is kept. ``epochs`` defaults to that
chain length; a smaller ``epochs`` (or early stopping) cuts the chain short, and
a chain that ends within its burn-in keeps its last sample. While the chain runs the model holds the current sample
(``factors`` wide), so a validation history shows single-sample errors; after
the last sweep :meth:`GibbsSolver.finish` rewrites the model as the posterior
mean over the kept samples: ``samples * factors``-wide embeddings whose dot
products average the per-sample dot products (see :mod:`torchmf.solvers.gibbs`),
biases averaged. Everything downstream (predict, recommend, save, load) then
works unchanged. The solver's ``extras`` record ``embedding_dim``, ``samples``
and ``rank`` so the per-sample products can be recovered (:func:`posterior_std`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from torchmf.data.interactions import Interactions
from torchmf.nn.mf import MFModel
from torchmf.solvers.gibbs import GibbsSampler

__all__ = ["GibbsSolver"]


def _set_table(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    setattr(module, attr, nn.Parameter(value, requires_grad=False))


class GibbsSolver:
    """Gibbs sampling of a Bayesian MF with biases, robust noise and optional implicit features."""

    name: ClassVar[str] = "gibbs"
    losses: ClassVar[tuple[str, ...]] = ("mse",)
    ranking: ClassVar[bool] = False
    # Chosen on a 90/10 split of ML-100k's u1.base only (benchmarks/gibbs.py --tune;
    # benchmarks/RESULTS.md), never on u1.test: rank 10 (best with implicit features,
    # a tie without); 200 kept samples of every 2nd sweep after 100 of burn-in
    # matched 400 consecutive ones at half the memory and beat 200 after 50 by
    # 0.0003-0.0008 RMSE. The penalties are sampled, not set: reg / reg_bias /
    # reg_exponent do not apply.
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        # epochs is left None: the chain length burn_in + samples * thin is filled in at fit
        "mse": {"factors": 10, "samples": 200, "burn_in": 100, "thin": 2, "implicit_features": False,
                "biases": True, "reg": 0.0, "reg_exponent": 0.0},
    }

    # What torchmf.autotune searches. The noise and prior precisions are sampled (Normal-Gamma hyperpriors,
    # myFM's a0 = b0 = g0 = 1), so there is no penalty to tune; what matters is the rank, the implicit
    # features and the chain (longer is better but costs time: TPE trades them within the budget).
    search_space: ClassVar[dict[str, tuple]] = {
        "factors": ("int", 4, 32, "log"), "samples": ("int", 20, 200, "log"), "burn_in": ("int", 10, 100, "log"),
        "implicit_features": ("categorical", (False, True)),
    }
    # A sampler: its per-epoch validation scores the current draw, not the averaged prediction, so
    # autotune neither stops nor prunes its trials early and refits the chain length a trial ran.
    sampler: ClassVar[bool] = True

    def __init__(self, model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device) -> None:
        if not hp["biases"]:
            raise ValueError("solver='gibbs' always samples biases; leave biases=None (or True)")
        self.model, self.hp = model, hp
        self.burn_in, self.samples, self.thin = int(hp["burn_in"]), int(hp["samples"]), int(hp["thin"])
        if hp["epochs"] is None:  # a sweep per epoch: burn-in, then the kept samples
            hp["epochs"] = self.burn_in + self.samples * self.thin
        gen = torch.Generator(device=device).manual_seed(hp["seed"])
        self.chain = GibbsSampler(
            data.users, data.items, data.values, data.n_users, data.n_items, hp["factors"], gen, device,
            implicit_features=bool(hp["implicit_features"]), init_std=hp["init_std"], robust=True,
        )
        self.sweeps = 0
        self.extras: dict[str, Any] = {}

    def epoch(self) -> float:
        rmse = self.chain.sweep()
        self.sweeps += 1
        after = self.sweeps - self.burn_in
        if after > 0 and after % self.thin == 0 and self.chain.n_kept < self.samples:
            self.chain.keep()
        m = self.model
        for name, t in self.chain.current().items():
            m.get_parameter(name).copy_(t.reshape(m.get_parameter(name).shape))
        return 0.5 * rmse * rmse  # per-rating half squared error, as ALS and SGD report

    def divergence_hint(self) -> str:
        return "Gibbs sampling has no step size; check the ratings for extreme values"

    def finish(self) -> None:
        """Replace the model's tables by the posterior mean over the kept samples."""
        if self.chain.n_kept == 0:  # stopped during burn-in (early stopping): keep what there is
            self.chain.keep()
        res = self.chain.result()
        m, s, k = self.model, self.chain.n_kept, self.chain.rank
        for side in ("user", "item"):
            emb = m.get_submodule(f"{side}_embs")
            _set_table(emb, "weight", res[f"{side}_embs.weight"])
            emb.embedding_dim = s * k
            _set_table(m.get_submodule(f"{side}_bias"), "weight", res[f"{side}_bias.weight"])
        _set_table(m, "global_bias", res["global_bias"])
        self.hp["samples"] = s
        self.hp["noise_precision"] = float(res["noise_precision"])
        self.extras = {"embedding_dim": s * k, "samples": s, "rank": k}

    @classmethod
    def fold_in(cls, model: MFModel, items: torch.Tensor, values: torch.Tensor, hp: dict[str, Any],
                item_counts: np.ndarray | None) -> torch.Tensor:
        """Posterior mean of a new user's row, averaged over the stored samples.

        Per sample ``s`` the user's ``[p^s, b^s]`` is the mean of its Gaussian
        conditional given that sample's item factors, with the prior fitted to the
        stored users' rows of that sample (mean and precision per dimension) and
        the noise precision of the chain; the rows are concatenated like the
        training users' (so the dot products average over samples) and the bias
        averaged. Implicit-feature prior shifts are not applied to new users.
        """
        s, k = int(hp["samples"]), int(hp["factors"])
        scale = math.sqrt(s)
        users = model.user_embs.weight.reshape(-1, s, k) * scale  # (n_users, S, k)
        q = model.item_embs.weight[items].reshape(-1, s, k).transpose(0, 1) * scale  # (S, L, k)
        target = (values.to(q.dtype) - model.global_bias - model.item_bias.weight[items, 0])
        feats = torch.cat([q, q.new_ones(s, q.shape[1], 1)], 2)  # (S, L, k + 1)
        rows = torch.cat([users, model.user_bias.weight[:, None, :].expand(-1, s, 1)], 2)  # (n_users, S, k + 1)
        mu = rows.mean(0)  # (S, k + 1)
        lam = 1.0 / rows.var(0, unbiased=False).clamp_min(1e-6)
        gram = feats.transpose(1, 2) @ feats
        h = (feats.transpose(1, 2) @ target[:, None]).squeeze(2)
        alpha = float(hp.get("noise_precision", 1.0))
        prec = gram * alpha + torch.diag_embed(lam)
        w = torch.linalg.solve(prec, (h * alpha + lam * mu).unsqueeze(2)).squeeze(2)  # (S, k + 1)
        return torch.cat([w[:, :k].reshape(-1) / scale, w[:, k].mean().reshape(1)])
