"""``predict``: ratings (or ranking scores) of (user, item) pairs, and the Gibbs posterior spread."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchmf.checks import is_scalar, to_id_array

__all__ = ["PredictMixin"]


class PredictMixin:
    """Pointwise predictions of a fitted model; the host class provides ``model`` and the id maps."""

    def predict(self, users: Any, items: Any, unknown: str = "error", return_std: bool = False) -> Any:
        """Predicted ratings for (user, item) pairs of raw ids.

        Parameters
        ----------
        users, items : raw id, or array-like of raw ids, shape (n,)
        unknown : {"error", "fallback"}
            For an id not seen in fit: raise :class:`UnknownIdError`, or
            predict the global mean plus whichever bias is known.
        return_std : bool
            ``solver="gibbs"`` only: also return the posterior standard deviation of
            each pair's score over the kept samples (NaN for a pair with an unknown id).

        Returns
        -------
        float for a single pair, else numpy.ndarray of float32, shape (n,);
        clipped to the training rating range for rating models. With
        ``return_std``, a (mean, std) pair of those.
        """
        if unknown not in ("error", "fallback"):
            raise ValueError(f"unknown must be 'error' or 'fallback', got {unknown!r}")
        m = self.model
        u_raw, i_raw = to_id_array(users), to_id_array(items)
        if len(u_raw) != len(i_raw):
            raise ValueError(f"users and items differ in length: {len(u_raw)} vs {len(i_raw)}")
        missing = "error" if unknown == "error" else "ignore"
        ut = torch.as_tensor(self.user_map.indices(u_raw, missing=missing), device=self.device)
        it = torch.as_tensor(self.item_map.indices(i_raw, missing=missing), device=self.device)
        known_u, known_i = ut >= 0, it >= 0
        uc, ic = ut.clamp_min(0), it.clamp_min(0)  # -1 (unknown) falls back to mean + known bias
        with torch.no_grad():
            score = (m.user_embs.weight[uc] * m.item_embs.weight[ic]).sum(1) * (known_u & known_i)
            if m.biases:
                score = score + m.global_bias
                score = score + m.user_bias.weight[uc, 0] * known_u + m.item_bias.weight[ic, 0] * known_i
        if not self.is_ranking:  # ratings live in the training range; ranking scores are raw
            score = score.clamp(*self.rating_range_)
        out = score.float().cpu().numpy()
        std = self._posterior_std(uc, ic, known_u & known_i) if return_std else None
        if is_scalar(users) and is_scalar(items):
            return (float(out[0]), float(std[0])) if return_std else float(out[0])
        return (out, std) if return_std else out

    def _posterior_std(self, u: torch.Tensor, i: torch.Tensor, known: torch.Tensor) -> np.ndarray:
        from torchmf.solvers.gibbs_draws import posterior_std

        if "samples" not in self.extras_:
            raise ValueError(f"return_std=True needs a model sampled by solver='gibbs', not {self._hp['solver']!r}")
        m = self.model
        with torch.no_grad():
            std = posterior_std(m.user_embs.weight[u], m.item_embs.weight[i], int(self.extras_["samples"]))
        return torch.where(known, std, torch.nan).float().cpu().numpy()
