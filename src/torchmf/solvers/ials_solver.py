"""Implicit ALS (Hu et al. 2008) as a :class:`~torchmf.solvers.base.Solver` (kernels in :mod:`torchmf.solvers.ials`)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from torchmf.data.csr import csr_transpose
from torchmf.data.interactions import Interactions
from torchmf.data.profile import ValueProfile, confidence_defaults, value_profile
from torchmf.nn.mf import MFModel
from torchmf.solvers.ials import (
    IALSSettings,
    confidence,
    ials_half_sweep,
    ials_loss,
    ials_observed,
    ials_penalty,
    ials_side_csr,
    ials_solve_rows,
)
from torchmf.solvers.ials_cpu import fused_half_sweep, fused_sides, kernel_applies, start_warm_up
from torchmf.solvers.sgd import model_tables

__all__ = ["IALSSolver"]

log = logging.getLogger(__name__)


class IALSSolver:
    """Weighted squared loss over all pairs, confidence from the values; Rendle et al.'s regularisation."""

    name: ClassVar[str] = "als"
    losses: ClassVar[tuple[str, ...]] = ("ials",)
    ranking: ClassVar[bool] = True
    # Tuned by benchmarks/implicit_tune.py --grid on two validation splits
    # carved out of the *training* part of ML-100k (per-user 80/20 of the 80%),
    # never on the held-out test items; then checked once on the protocol's
    # test split, on two other split seeds and on synthetic(implicit=True):
    # - binary data has no strength signal, so ``alpha`` only sets the ratio of
    #   observed to unobserved weight, (1 + alpha) / unobserved_weight; the
    #   optimum is a ratio of about 5-7 (2 / 0.3 here; 5 / 1 ties), flat
    #   around it; 20 or more (unobserved weight 0.1 or less) loses 0.03-0.1 NDCG;
    # - reg_exponent 1 (Rendle et al.'s nu = 1: the penalty grows with
    #   n_u + a0 * n_items) beat 0.5 and 0.75 by 0.01-0.1; with it the best
    #   reg is 0.02-0.03 for 32 to 128 factors, so the shared default of 48
    #   factors stays (64 and 128 are within the splits' +-0.002 noise);
    # - 8 sweeps with 3 warm-started CG steps match exact Cholesky solves and
    #   4-32 sweeps (the next sweep's warm start corrects the CG error).
    # alpha / confidence / confidence_eps come from the data (data_defaults);
    # these are the binary-data values.
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "ials": {
            "epochs": 8, "reg": 0.03, "reg_exponent": 1.0, "alpha": 1.0, "unobserved_weight": 0.3, "biases": False,
            "confidence": "linear", "confidence_eps": 1.0,
        },
    }
    # What torchmf.autotune searches: (kind, low, high[, "log"]) or ("categorical", choices); epochs come
    # from early stopping. The confidence transform matters for counts, not for binary data (moot_for).
    search_space: ClassVar[dict[str, tuple]] = {
        "factors": ("int", 16, 256, "log"), "reg": ("float", 0.003, 0.3, "log"),
        "alpha": ("float", 0.1, 30.0, "log"), "unobserved_weight": ("float", 0.01, 1.0, "log"),
        "confidence": ("categorical", ("linear", "log")),
    }

    @classmethod
    def moot_for(cls, profile: ValueProfile) -> tuple[str, ...]:
        """Search-space names that cannot change the model on values like these.

        When every value is equal (binary data), ``confidence="log"`` gives every
        pair ``1 + alpha * log(1 + v / eps)`` and ``"linear"`` gives ``1 + alpha * v``:
        the same model for another ``alpha``, which is searched anyway. A search
        over the transform would only split the trials between two copies of one space.
        """
        return ("confidence",) if profile.kind == "binary" else ()

    @classmethod
    def data_defaults(cls, loss: str, profile: ValueProfile | None, given: dict[str, Any]) -> dict[str, Any]:
        """Confidence transform and scale for the training values (:func:`~torchmf.data.profile.confidence_defaults`).

        Binary data and ratings keep ``confidence="linear", alpha=1``;
        heavy-tailed counts get ``confidence="log"`` scaled to their median.
        A transform the user chose keeps the binary-data ``alpha`` and
        ``confidence_eps`` unless the rule picked that same transform.
        """
        rule = confidence_defaults(profile if profile is not None else value_profile([1.0]))
        if given.get("confidence") not in (None, rule["confidence"]):
            return {}
        if profile is not None and profile.kind == "counts":
            chosen = {k: given[k] if given.get(k) is not None else v for k, v in rule.items()}
            log.info("iALS: the values look like heavy-tailed counts, %s; using confidence=%r, "
                     "confidence_eps=%g, alpha=%.4g (1 + alpha * log(1 + count / eps): the median count gets "
                     "confidence %.3g); pass confidence/alpha/confidence_eps to override",
                     profile.describe(), chosen["confidence"], chosen["confidence_eps"], chosen["alpha"],
                     1 + chosen["alpha"] * np.log1p(profile.median / chosen["confidence_eps"]))
        return rule

    def __init__(self, model: MFModel, data: Interactions, hp: dict[str, Any], device: torch.device) -> None:
        self.hp = hp
        self.n = len(data)
        k = hp["factors"]
        self.settings = s = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], hp["cg_steps"])
        # Memory (issue 12): the user side reads the data's own CSR arrays (shared: from_csr data holds the
        # caller's matrix), the item side one transposed pattern, laid out first and the pattern dropped;
        # confidences are computed block by block as the gathered layout is filled, and neither side
        # keeps what its sweeps never read.
        t = model_tables(model)
        self.P, self.Q = t["P"], t["Q"]
        warm_up = start_warm_up(device, self.P.dtype, s.cg_steps, self.n)  # overlaps the sort below
        indptr, items, values = data.row_major()

        def conf(v: np.ndarray) -> np.ndarray:
            return confidence(v, hp["alpha"], hp["confidence"], hp["confidence_eps"])

        self.carried: torch.Tensor | None = None
        self.to_user_order = None
        self.fused = kernel_applies(device, self.P.dtype, s.cg_steps, self.n, warm_up)
        if self.fused:  # one compiled pass per half-sweep, straight from the CSR arrays (ials_cpu)
            self.by_user, self.by_item = fused_sides(indptr, items, values, data.n_items, k, s, conf)
            return
        t_indptr, t_users, order = csr_transpose(indptr, items, data.n_items)
        self.by_item = ials_side_csr(t_indptr, t_users, values, data.n_items, data.n_users, k, device, s,
                                     order=order, conf_map=conf, keep_pairs=False)
        del t_indptr, t_users, order
        self.by_user = ials_side_csr(indptr, items, values, data.n_users, data.n_items, k, device, s,
                                     conf_map=conf, keep_pairs=False)
        # With both sides on the CSR layout, the scores the loss needs after a sweep
        # are the ones the next sweep's user half starts from (same P and Q, pairs
        # in the other order): computing them once saves a pass over the data.
        csr = s.cg_steps > 0 and self.by_user.chunks is None and self.by_item.chunks is None
        self.to_user_order = torch.argsort(self.by_item.order) if csr else None  # the user side's order is 1, 2, ...

    def epoch(self) -> float:
        s, P, Q = self.settings, self.P, self.Q
        if self.fused:
            fused_half_sweep(self.by_user, P, Q, s)
            observed = fused_half_sweep(self.by_item, Q, P, s, with_loss=True)
            return ials_loss(observed, P, Q, self.by_user, self.by_item, s) / self.n
        ials_half_sweep(self.by_user, P, Q, s, scores=self.carried)
        if self.to_user_order is None:
            observed = ials_half_sweep(self.by_item, Q, P, s, with_loss=True)
        else:
            ials_half_sweep(self.by_item, Q, P, s)
            observed, scores = ials_observed(self.by_item, Q, P, s)
            self.carried = scores[self.to_user_order]
        # the full objective per observed pair: comparable across data sizes
        return ials_loss(observed, P, Q, self.by_user, self.by_item, s) / self.n

    def divergence_hint(self) -> str:
        return f"raise reg (now {self.hp['reg']})"

    def finish(self) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The scores carried into the next sweep (bit-identical resume needs them, not a recomputation)."""
        return {} if self.carried is None else {"carried": self.carried}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.carried = state["carried"].to(self.P.device) if "carried" in state else None

    @classmethod
    def fold_in(cls, model: MFModel, items: torch.Tensor, values: torch.Tensor, hp: dict[str, Any],
                item_counts: np.ndarray | None) -> torch.Tensor:
        """The exact user solve of an ALS sweep, shape (d,)."""
        Q = model.item_embs.weight
        dev = Q.device
        s = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], cg_steps=0)
        conf = confidence(values.cpu().numpy(), hp["alpha"], hp["confidence"], hp["confidence_eps"])
        c = torch.as_tensor(conf, device=dev).to(Q.dtype).view(1, 1, -1)
        gram = (Q.T @ Q).mul_(s.unobserved_weight)
        lam = ials_penalty(torch.tensor([[float(len(items))]], dtype=Q.dtype, device=dev), Q.shape[0], s)
        return ials_solve_rows(Q[items].unsqueeze(0), c, c - s.unobserved_weight, gram, lam)[0]
