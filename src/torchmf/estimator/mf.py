"""The estimator users call: :class:`MatrixFactorization`."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchmf.data.csr import csr_order
from torchmf.data.interactions import Interactions
from torchmf.device import resolve_device
from torchmf.errors import DataError, NotFittedError
from torchmf.estimator import params as hparams
from torchmf.estimator.training import Validation, fit_model
from torchmf.nn.mf import MFModel
from torchmf.solvers.als import ridge_rows
from torchmf.solvers.ials import IALSSettings, confidence, ials_penalty, ials_solve_rows
from torchmf.solvers.pairwise import fold_in_pairwise

__all__ = ["MatrixFactorization"]

log = logging.getLogger(__name__)

# users scored at once by recommend(): bounds the (batch, n_items) score block
_SCORE_BLOCK = 1 << 24


class MatrixFactorization:
    """Matrix factorization recommender: fit, predict, recommend, save.

    Parameters
    ----------
    factors : int, default 48
        Latent dimension ``d``.
    epochs : int, optional
        Epochs (SGD) or full sweeps, users then items (ALS).
    solver : {"als", "sgd"}, optional
        Closed-form alternating least squares or minibatch SGD. Default: "als"
        for ``mse`` and ``ials``, "sgd" for the sampled-negative losses.
    loss : {"mse", "ials", "bpr", "logistic", "warp"}, default "mse"
        ``mse``: squared error on explicit ratings. ``ials``: weighted squared
        loss over all pairs with confidence from the values (Hu et al. 2008),
        the recommended loss for implicit data. ``bpr``, ``logistic``,
        ``warp``: ranking losses over sampled negatives (SGD solver).
        An impossible loss/solver pair is a ValueError.
    lr : float, optional
        Learning rate (SGD only).
    reg : float, optional
        L2 penalty on factors. ALS penalises row ``u`` by ``reg * n_u **
        reg_exponent`` (iALS: ``reg * (n_u + unobserved_weight * n_items) **
        reg_exponent``); SGD applies ``reg`` once per interaction (Funk-SVD).
    reg_bias : float, optional
        L2 penalty on biases, same scaling.
    reg_exponent : float, optional
        Frequency scaling of the ALS penalty (1 = weighted-lambda).
    optimizer : {"sgd", "adagrad", "adam", "sparse_adam"}, optional
        Update rule of the SGD solver ("sgd" for mse, "adagrad" for ranking losses).
    batch_size : int, optional
        Interactions per SGD step; automatic by default (see
        :func:`torchmf.estimator.params.auto_batch_size`).
    biases : bool, optional
        Global mean plus user and item biases; on for ``mse``, off (and not
        allowed) for implicit losses.
    init_std : float, default 0.1
        Standard deviation of the initial factors.
    cg_steps : int, default 3
        ALS: conjugate-gradient steps per solve; 0 solves exactly (Cholesky).
    alpha : float, optional
        iALS: confidence ``1 + alpha * transform(value)`` of observed pairs.
    confidence : {"linear", "log"}, default "linear"
        iALS: ``transform(v) = v`` or ``log(1 + v / confidence_eps)``.
    confidence_eps : float, default 1.0
    unobserved_weight : float, optional
        iALS: weight of every unobserved pair.
    negatives : int, optional
        Sampled negatives per positive (ranking losses).
    negative_sampling : {"uniform", "popularity"}, default "uniform"
    early_stopping : int, optional
        With a validation set: stop after this many epochs without
        improvement of validation RMSE (mse) or NDCG@10 (implicit losses).
        The best epoch's weights are always restored.
    device : str, default "auto"
        "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    seed : int, default 0
        Seeds initialisation, shuffling and sampling; CPU fits are reproducible.
    verbose : bool, default True
        Show a progress bar.

    Notes
    -----
    Parameters left as None take the default of the chosen loss and solver
    (``effective_params`` shows them after construction); ``get_params()``
    returns what was given.

    Examples
    --------
    >>> mf = MatrixFactorization(factors=8, verbose=False)
    >>> mf = mf.fit({"u1": {"i1": 5, "i2": 3}, "u2": {"i1": 2, "i3": 5}})
    >>> round(mf.predict("u2", "i2"), 2) >= 1.0
    True
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(hparams.Params.names())
        if unknown:
            raise TypeError(f"unknown hyperparameter {sorted(unknown)[0]!r}; valid: {hparams.Params.names()}")
        self._params = hparams.Params(**kwargs)
        hparams.validate(self._params)
        self._model: MFModel | None = None
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int | None = None

    # ------------------------------------------------------------------ params
    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given (None = the solver's default)."""
        return {name: getattr(self._params, name) for name in hparams.Params.names()}

    def set_params(self, **kwargs: Any) -> MatrixFactorization:
        """Change hyperparameters (validated); takes effect at the next fit."""
        merged = {**self.get_params(), **kwargs}
        unknown = set(kwargs) - set(hparams.Params.names())
        if unknown:
            raise TypeError(f"unknown hyperparameter {sorted(unknown)[0]!r}")
        new = hparams.Params(**merged)
        hparams.validate(new)
        self._params = new
        return self

    @property
    def effective_params(self) -> dict[str, Any]:
        """Hyperparameters with solver defaults filled in."""
        return hparams.resolve(self._params)

    def __repr__(self) -> str:
        given = {k: v for k, v in self.get_params().items() if v != getattr(hparams.Params, k, None)}
        args = ", ".join(f"{k}={v!r}" for k, v in given.items())
        return f"MatrixFactorization({args})"

    # ------------------------------------------------------------------ fit
    def fit(self, train: Interactions | Mapping, validation: Interactions | None = None) -> MatrixFactorization:
        """Train on ``train``; optionally monitor RMSE on ``validation``.

        Parameters
        ----------
        train : Interactions or dict
            A nested ``{user: {item: rating}}`` dict is converted with
            :meth:`Interactions.from_dict`.
        validation : Interactions, optional
            Raw ids are matched to the training ids; pairs unknown to training
            are left out of the validation RMSE.

        Returns
        -------
        self
        """
        if isinstance(train, Mapping):
            train = Interactions.from_dict(train)
        if not isinstance(train, Interactions):
            raise DataError(f"fit expects Interactions or a nested dict, got {type(train).__name__}")
        if len(train) == 0:
            raise DataError("cannot fit on empty interactions")
        data = train.compact()
        hp = hparams.resolve(self._params)
        device = resolve_device(hp["device"])
        self.user_map, self.item_map = data.user_map, data.item_map
        self.implicit_ = data.implicit
        self.rating_range_ = data.rating_range()
        self._set_seen(data.users, data.items, data.n_users, data.n_items)
        val = None
        if validation is not None:
            val = Validation(
                data.user_map.indices(validation.user_map.raw(validation.users), missing="ignore"),
                data.item_map.indices(validation.item_map.raw(validation.items), missing="ignore"),
                validation.values,
                self.rating_range_,
                device,
            )
        log.info("fitting %s on %s", self, data)
        self._model, self.history_, self.best_epoch_ = fit_model(data, hp, device, val)
        self._hp = hp
        return self

    # ------------------------------------------------------------------ state
    @property
    def model(self) -> MFModel:
        """The trained :class:`MFModel` (raises :class:`NotFittedError` before fit)."""
        self._require_fitted()
        return self._model

    def _require_fitted(self) -> None:
        if self._model is None:
            raise NotFittedError("this MatrixFactorization is not fitted yet; call fit() first")

    @property
    def device(self) -> torch.device:
        return self.model.user_embs.weight.device

    @property
    def user_factors(self) -> np.ndarray:
        """User embeddings, shape (n_users, factors), rows in ``user_map`` order."""
        return self.model.user_embs.weight.detach().cpu().numpy()

    @property
    def item_factors(self) -> np.ndarray:
        """Item embeddings, shape (n_items, factors), rows in ``item_map`` order."""
        return self.model.item_embs.weight.detach().cpu().numpy()

    def _set_seen(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> None:
        self.seen_indptr_, order = csr_order(users, items, n_users, n_items)
        self.seen_indices_ = items[order].astype(np.int64)
        self._seen_device: tuple[torch.Tensor, torch.Tensor] | None = None

    def seen_items(self, user_index: int) -> np.ndarray:
        """Item indices the user had in training, shape (n_seen,)."""
        return self.seen_indices_[self.seen_indptr_[user_index] : self.seen_indptr_[user_index + 1]]

    # ------------------------------------------------------------------ predict
    def predict(self, users: Any, items: Any, unknown: str = "error") -> float | np.ndarray:
        """Predicted ratings for (user, item) pairs of raw ids.

        Parameters
        ----------
        users, items : raw id, or array-like of raw ids, shape (n,)
        unknown : {"error", "fallback"}
            For an id not seen in fit: raise :class:`UnknownIdError`, or
            predict the global mean plus whichever bias is known.

        Returns
        -------
        float for a single pair, else numpy.ndarray of float32, shape (n,);
        clipped to the training rating range for explicit data.
        """
        self._require_fitted()
        if unknown not in ("error", "fallback"):
            raise ValueError(f"unknown must be 'error' or 'fallback', got {unknown!r}")
        scalar = _is_scalar(users) and _is_scalar(items)
        u_raw = np.atleast_1d(np.asarray(users, dtype=object)) if _is_scalar(users) else _to_array(users)
        i_raw = np.atleast_1d(np.asarray(items, dtype=object)) if _is_scalar(items) else _to_array(items)
        if len(u_raw) != len(i_raw):
            raise ValueError(f"users and items differ in length: {len(u_raw)} vs {len(i_raw)}")
        u = self.user_map.indices(u_raw, missing="error" if unknown == "error" else "ignore")
        i = self.item_map.indices(i_raw, missing="error" if unknown == "error" else "ignore")
        out = self._predict_indices(u, i)
        return float(out[0]) if scalar else out

    def _predict_indices(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Scores for index pairs; -1 (unknown) falls back to mean + known bias."""
        m = self.model
        dev = self.device
        ut = torch.as_tensor(u, device=dev)
        it = torch.as_tensor(i, device=dev)
        known_u, known_i = ut >= 0, it >= 0
        uc, ic = ut.clamp_min(0), it.clamp_min(0)
        with torch.no_grad():
            dot = (m.user_embs.weight[uc] * m.item_embs.weight[ic]).sum(1) * (known_u & known_i)
            score = dot
            if m.biases:
                score = score + m.global_bias
                score = score + m.user_bias.weight[uc, 0] * known_u + m.item_bias.weight[ic, 0] * known_i
        if not self._ranks_only():  # ratings live in the training range; ranking scores are raw
            score = score.clamp(*self.rating_range_)
        return score.float().cpu().numpy()

    def _ranks_only(self) -> bool:
        """True when scores rank items rather than predict ratings (implicit data or loss)."""
        return bool(self.implicit_) or hparams.is_implicit_loss(self._hp.get("loss", "mse"))

    # ------------------------------------------------------------------ recommend
    def top_k(
        self,
        user_indices: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        exclude: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` item indices per user index: the ranking behind :meth:`recommend`.

        Parameters
        ----------
        user_indices : numpy.ndarray of int64, shape (B,)
        k : int
        exclude_seen : bool
            Drop items the user had in training.
        candidates : numpy.ndarray of int64, shape (M,), optional
            Restrict to these item indices.
        exclude : (indptr, indices), optional
            Extra items to drop, as CSR arrays indexed like ``user_indices``
            (``indptr`` of shape (B + 1,)); used by evaluation to exclude a
            train set other than the one the model saw.

        Returns
        -------
        items : numpy.ndarray of int64, shape (B, k)
            Best first; -1 pads rows with fewer than ``k`` eligible items.
        scores : numpy.ndarray of float32, shape (B, k)
            ``-inf`` where padded.
        """
        _check_k(k)
        m = self.model
        dev = self.device
        cand_t = None if candidates is None else torch.as_tensor(candidates, device=dev)
        n_cols = m.num_items if cand_t is None else len(cand_t)
        kk = min(k, n_cols)
        block = max(1, _SCORE_BLOCK // max(1, n_cols))
        out_items = np.full((len(user_indices), k), -1, dtype=np.int64)
        out_scores = np.full((len(user_indices), k), -np.inf, dtype=np.float32)
        for start in range(0, len(user_indices), block):
            rows = user_indices[start : start + block]
            with torch.no_grad():
                scores = m.score_all(torch.as_tensor(rows, device=dev), cand_t).float()
                if exclude_seen:
                    self._mask(scores, self.seen_indptr_, self.seen_indices_, rows, cand_t)
                if exclude is not None:
                    local = np.arange(start, start + len(rows))
                    self._mask(scores, exclude[0], exclude[1], local, cand_t)
                top_s, top_i = torch.topk(scores, kk, dim=1)
            if cand_t is not None:
                top_i = cand_t[top_i]
            top_i = torch.where(torch.isfinite(top_s), top_i, torch.full_like(top_i, -1))
            out_items[start : start + len(rows), :kk] = top_i.cpu().numpy()
            out_scores[start : start + len(rows), :kk] = top_s.cpu().numpy()
        return out_items, out_scores

    def _mask(
        self,
        scores: torch.Tensor,
        indptr: np.ndarray,
        indices: np.ndarray,
        rows: np.ndarray,
        cand_t: torch.Tensor | None,
    ) -> None:
        """Set ``scores[j, indices of row rows[j]]`` to -inf, in place, without a Python loop."""
        starts, ends = indptr[rows], indptr[rows + 1]
        counts = ends - starts
        if counts.sum() == 0:
            return
        row_ids = np.repeat(np.arange(len(rows)), counts)
        pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        cols = indices[pos]
        if cand_t is not None:
            # map item index -> column among candidates (-1 when not a candidate)
            col_of = np.full(self.model.num_items, -1, dtype=np.int64)
            col_of[cand_t.cpu().numpy()] = np.arange(len(cand_t))
            cols = col_of[cols]
            row_ids, cols = row_ids[cols >= 0], cols[cols >= 0]
        dev = scores.device
        scores[torch.as_tensor(row_ids, device=dev), torch.as_tensor(cols, device=dev)] = -torch.inf

    def recommend(
        self,
        user_or_users: Any,
        k: int = 10,
        exclude_seen: bool = True,
        items: Iterable[Hashable] | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items for one user or many.

        Parameters
        ----------
        user_or_users : raw id, or list/array of raw ids
        k : int
            Number of items per user; must be positive.
        exclude_seen : bool
            Leave out items the user had in training.
        items : iterable of raw item ids, optional
            Only rank these candidates.

        Returns
        -------
        pandas.DataFrame
            One user: columns ``item, score``, best first. Many users: columns
            ``user, rank, item, score`` (rank 1 = best). Fewer than ``k`` rows
            per user when fewer items are eligible. ``score`` is the model's raw
            score, not clipped to the rating range (clipping would tie the top
            of the list); :meth:`predict` clips.
        """
        _check_k(k)
        self._require_fitted()
        single = _is_scalar(user_or_users)
        raw = np.atleast_1d(np.asarray(user_or_users, dtype=object)) if single else _to_array(user_or_users)
        u = self.user_map.indices(raw)
        cand = None if items is None else self.item_map.indices(_to_array(items))
        top_items, top_scores = self.top_k(u, k, exclude_seen, cand)
        valid = top_items >= 0
        item_raw = self.item_map.raw(np.where(valid, top_items, 0))
        if single:
            return pd.DataFrame({"item": item_raw[0][valid[0]], "score": top_scores[0][valid[0]]})
        rows, cols = np.nonzero(valid)
        return pd.DataFrame(
            {"user": raw[rows], "rank": cols + 1, "item": item_raw[rows, cols], "score": top_scores[rows, cols]}
        )

    def similar_items(self, item: Hashable, k: int = 10) -> pd.DataFrame:
        """Items closest to ``item`` by cosine similarity of their factors.

        Returns
        -------
        pandas.DataFrame
            Columns ``item, score`` (cosine in [-1, 1]), best first, ``item`` itself excluded.
        """
        _check_k(k)
        self._require_fitted()
        idx = self.item_map.index(item)
        with torch.no_grad():
            w = torch.nn.functional.normalize(self.model.item_embs.weight.float(), dim=1)
            sims = w @ w[idx]
            sims[idx] = -torch.inf
            top_s, top_i = torch.topk(sims, min(k, len(sims) - 1))
        return pd.DataFrame({"item": self.item_map.raw(top_i.cpu().numpy()), "score": top_s.cpu().numpy()})

    # ------------------------------------------------------------------ fold-in
    def fold_in(self, user: Hashable, ratings: Mapping[Hashable, float] | Iterable[Hashable]) -> MatrixFactorization:
        """Add a user, or refresh one, from their ratings; item factors stay fixed.

        The user's factors minimise the training objective with the items held
        fixed: for ``loss="mse"`` a ridge regression on the rated items'
        factors (and bias), for ``loss="ials"`` the same closed-form weighted
        solve an ALS sweep does (exact Cholesky), and for the sampled-negative
        losses 50 deterministic L-BFGS steps on the expected loss
        (:func:`~torchmf.solvers.pairwise.fold_in_pairwise`).

        Parameters
        ----------
        user : raw id
            New (appended) or existing (replaced).
        ratings : dict of raw item id -> rating, or iterable of raw item ids
            Items must be known to the model. Implicit models take the
            interaction strengths as values, or a plain list of items
            (strength 1 each).

        Returns
        -------
        self
        """
        m = self.model
        implicit_loss = hparams.is_implicit_loss(self._hp.get("loss", "mse"))
        if isinstance(ratings, Mapping):
            keys = list(ratings)
            vals = np.array([_finite(v, user, it) for it, v in ratings.items()], dtype=np.float32)
        elif implicit_loss and isinstance(ratings, Iterable) and not isinstance(ratings, (str, bytes)):
            keys = list(ratings)
            vals = np.ones(len(keys), dtype=np.float32)
        else:
            want = "{item: strength} or a list of items" if implicit_loss else "{item: rating}"
            raise DataError(f"fold_in needs a non-empty dict {want} for user {user!r}, got {type(ratings).__name__}")
        if not keys:
            raise DataError(f"fold_in needs at least one item for user {user!r}")
        items = self.item_map.indices(keys)
        if len(np.unique(items)) != len(items):
            raise DataError(f"fold_in: repeated item in ratings of user {user!r}")
        with torch.no_grad():
            if self._hp.get("loss", "mse") == "ials":
                w = self._fold_in_ials(items, vals)
            elif implicit_loss:
                w = self._fold_in_pairwise(items)
            else:
                w = self._fold_in_ridge(items, vals)
        if user in self.user_map:
            row = self.user_map.index(user)
        else:
            self.user_map = self.user_map.extend([user])
            row = len(self.user_map) - 1
            m.resize(len(self.user_map))
        with torch.no_grad():
            m.user_embs.weight[row] = w[: m.embedding_dim]
            if m.biases:
                m.user_bias.weight[row, 0] = w[-1]
        self._replace_seen(row, np.sort(items))
        return self

    def _fold_in_ridge(self, items: np.ndarray, vals: np.ndarray) -> torch.Tensor:
        """Explicit: ridge regression of ``[p_u, b_u]``, shape (k [+ 1],)."""
        m, hp, dev = self.model, self._hp, self.device
        it = torch.as_tensor(items, device=dev)
        q = m.item_embs.weight[it]
        target = torch.as_tensor(vals, device=dev)
        if m.biases:
            target = target - m.global_bias - m.item_bias.weight[it, 0]
            q = torch.cat([q, q.new_ones(len(items), 1)], 1)
        n = float(len(items))
        exponent = hp["reg_exponent"] if hp["solver"] == "als" else 1.0
        per_dim = torch.full((q.shape[1],), hp["reg"], device=dev)
        if m.biases:
            per_dim[-1] = hp["reg_bias"]
        lam = (per_dim * n**exponent).clamp_min(1e-6)
        return ridge_rows(q.unsqueeze(0), target.unsqueeze(0), lam.unsqueeze(0))[0]

    def _fold_in_ials(self, items: np.ndarray, vals: np.ndarray) -> torch.Tensor:
        """iALS: the exact user solve of an ALS sweep, shape (k,)."""
        hp, dev = self._hp, self.device
        Q = self.model.item_embs.weight
        s = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], cg_steps=0)
        conf = torch.as_tensor(confidence(vals, hp["alpha"], hp["confidence"], hp["confidence_eps"]), device=dev)
        conf = conf.to(Q.dtype).view(1, 1, -1)
        gram = (Q.T @ Q).mul_(s.unobserved_weight)
        lam = ials_penalty(torch.tensor([[float(len(items))]], dtype=Q.dtype, device=dev), Q.shape[0], s)
        feats = Q[torch.as_tensor(items, device=dev)].unsqueeze(0)
        return ials_solve_rows(feats, conf, conf - s.unobserved_weight, gram, lam)[0]

    def _fold_in_pairwise(self, items: np.ndarray) -> torch.Tensor:
        """BPR / logistic / WARP: deterministic L-BFGS on the expected loss, shape (k,)."""
        hp, dev = self._hp, self.device
        Q = self.model.item_embs.weight
        weights = None
        if hp["negative_sampling"] == "popularity":  # the training sampler's law: item counts in train
            weights = torch.as_tensor(np.bincount(self.seen_indices_, minlength=Q.shape[0]), device=dev)
        return fold_in_pairwise(
            Q, torch.as_tensor(items, device=dev), hp["loss"], hp["negatives"], hp["reg"], weights, hp["seed"]
        )

    def _replace_seen(self, row: int, items: np.ndarray) -> None:
        indptr, indices = self.seen_indptr_, self.seen_indices_
        if row >= len(indptr) - 1:  # new user: append a row
            indptr = np.append(indptr, indptr[-1])
        start, end = indptr[row], indptr[row + 1]
        indices = np.concatenate([indices[:start], items, indices[end:]])
        indptr = indptr.copy()
        indptr[row + 1 :] += len(items) - (end - start)
        self.seen_indptr_, self.seen_indices_ = indptr, indices

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the model to folder ``path`` (safetensors + JSON), atomically."""
        from torchmf.estimator.persistence import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> MatrixFactorization:
        """Read a model written by :meth:`save`; see :func:`torchmf.load`."""
        from torchmf.estimator.persistence import load_model

        return load_model(path, device=device)


# ---------------------------------------------------------------------- helpers
def _check_k(k: Any) -> None:
    if not _is_int(k) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, (list, tuple, np.ndarray, pd.Series, pd.Index, set, range))


def _to_array(v: Any) -> np.ndarray:
    if isinstance(v, (pd.Series, pd.Index)):
        return v.to_numpy()
    if isinstance(v, np.ndarray):
        return v.reshape(-1)
    values = list(v)
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _finite(v: Any, user: Hashable, item: Hashable) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise DataError(f"fold_in: rating of user {user!r} for item {item!r} is not a number: {v!r}") from None
    if not np.isfinite(f):
        raise DataError(f"fold_in: rating of user {user!r} for item {item!r} is not finite: {v!r}")
    return f
