"""The estimator users call: :class:`MatrixFactorization`, a facade over the layers below.

Fitting goes through :mod:`torchmf.training` and the solver registry, ranking
through :mod:`torchmf.retrieval`, saving through :class:`ModelState` and
:mod:`torchmf.estimator.persistence`; this class converts raw ids and
values at the edges and holds the fitted state.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchmf import solvers
from torchmf.checks import is_scalar, to_id_array
from torchmf.data.interactions import Interactions
from torchmf.device import resolve_device
from torchmf.errors import DataError, NotFittedError
from torchmf.estimator import params as hparams
from torchmf.estimator.foldin import fold_in_row
from torchmf.estimator.persistence import load_state, save_state
from torchmf.estimator.ranking import RankingMixin
from torchmf.estimator.state import ModelState
from torchmf.nn.mf import MFModel

__all__ = ["MatrixFactorization"]

log = logging.getLogger(__name__)


class MatrixFactorization(RankingMixin):
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

    def __init__(
        self,
        factors: int = 48,
        epochs: int | None = None,
        solver: str | None = None,
        loss: str = "mse",
        lr: float | None = None,
        reg: float | None = None,
        reg_bias: float | None = None,
        reg_exponent: float | None = None,
        optimizer: str | None = None,
        batch_size: int | None = None,
        biases: bool | None = None,
        init_std: float = 0.1,
        cg_steps: int = 3,
        alpha: float | None = None,
        confidence: str = "linear",
        confidence_eps: float = 1.0,
        unobserved_weight: float | None = None,
        negatives: int | None = None,
        negative_sampling: str = "uniform",
        early_stopping: int | None = None,
        device: str = "auto",
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        given = {name: value for name, value in locals().items() if name in hparams.Params.names()}
        self._params = hparams.Params(**given)
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
        unknown = set(kwargs) - set(hparams.Params.names())
        if unknown:
            raise TypeError(f"unknown hyperparameter {sorted(unknown)[0]!r}")
        new = hparams.Params(**{**self.get_params(), **kwargs})
        hparams.validate(new)
        self._params = new
        return self

    @property
    def effective_params(self) -> dict[str, Any]:
        """Hyperparameters with solver defaults filled in (after fit: exactly those trained with)."""
        return dict(self._hp) if self._model is not None else hparams.resolve(self._params)

    def __repr__(self) -> str:
        given = {k: v for k, v in self.get_params().items() if v != getattr(hparams.Params, k, None)}
        return f"MatrixFactorization({', '.join(f'{k}={v!r}' for k, v in given.items())})"

    # ------------------------------------------------------------------ fit
    def fit(self, train: Interactions | Mapping, validation: Interactions | None = None) -> MatrixFactorization:
        """Train on ``train``; optionally monitor a validation metric on ``validation``.

        Parameters
        ----------
        train : Interactions or dict
            A nested ``{user: {item: rating}}`` dict is converted with
            :meth:`Interactions.from_dict`.
        validation : Interactions, optional
            Raw ids are matched to the training ids; pairs unknown to training
            are left out. RMSE for rating losses, NDCG@10 for ranking losses.

        Returns
        -------
        self
        """
        from torchmf.training import Validation, fit_model  # training is only needed to fit

        train = _as_interactions(train, "train")
        if len(train) == 0:
            raise DataError("cannot fit on empty interactions")
        if validation is not None:
            validation = _as_interactions(validation, "validation")
        data = train.compact()
        hp = hparams.resolve(self._params)
        device = resolve_device(hp["device"])
        val = None
        if validation is not None:
            val = Validation(
                data.user_map.indices(validation.user_map.raw(validation.users), missing="ignore"),
                data.item_map.indices(validation.item_map.raw(validation.items), missing="ignore"),
                validation.values, data.rating_range(), device,
            )
        log.info("fitting %s on %s", self, data)
        model, history, best = fit_model(data, hp, device, val)
        self._install(model, hp, data.user_map, data.item_map, data.implicit, data.rating_range(), history, best)
        self._set_seen(data.users, data.items)
        return self

    def _install(self, model: MFModel, hp: dict[str, Any], user_map: Any, item_map: Any, implicit: bool,
                 rating_range: tuple[float, float], history: list[dict[str, float]], best: int | None,
                 extras: dict[str, Any] | None = None) -> None:
        self._model, self._hp = model, hp
        self.user_map, self.item_map = user_map, item_map
        self.implicit_, self.rating_range_ = bool(implicit), (float(rating_range[0]), float(rating_range[1]))
        self.history_, self.best_epoch_ = history, best
        self.extras_: dict[str, Any] = dict(extras or {})

    def _set_seen(self, users: np.ndarray, items: np.ndarray) -> None:
        from torchmf.data.csr import csr_order

        self.seen_indptr_, order = csr_order(users, items, len(self.user_map), len(self.item_map))
        self.seen_indices_ = items[order].astype(np.int64)

    # ------------------------------------------------------------------ state
    @property
    def model(self) -> MFModel:
        """The trained :class:`MFModel` (raises :class:`NotFittedError` before fit)."""
        if self._model is None:
            raise NotFittedError("this MatrixFactorization is not fitted yet; call fit() first")
        return self._model

    @property
    def device(self) -> torch.device:
        return self.model.user_embs.weight.device

    @property
    def is_ranking(self) -> bool:
        """True when scores rank items rather than predict ratings (implicit data or a ranking loss)."""
        self.model  # noqa: B018 - raises before fit
        return self.implicit_ or solvers.is_ranking_loss(self._hp["loss"])

    @property
    def user_factors(self) -> np.ndarray:
        """User embeddings, shape (n_users, factors), rows in ``user_map`` order."""
        return self.model.user_embs.weight.detach().cpu().numpy()

    @property
    def item_factors(self) -> np.ndarray:
        """Item embeddings, shape (n_items, factors), rows in ``item_map`` order."""
        return self.model.item_embs.weight.detach().cpu().numpy()

    def seen_items(self, user_index: int) -> np.ndarray:
        """Item indices the user had in training, shape (n_seen,)."""
        return self.seen_indices_[self.seen_indptr_[user_index] : self.seen_indptr_[user_index + 1]]

    def to(self, device: str | torch.device) -> MatrixFactorization:
        """Move the weights to ``device`` ("auto", "cpu", "cuda", "cuda:N"); returns self."""
        self.model.to(resolve_device(device))
        return self

    def to_state(self) -> ModelState:
        """The fitted model as a :class:`ModelState` (tensors shared, not copied)."""
        return ModelState(
            params=self.get_params(), effective_params=dict(self._hp),
            tensors=dict(self.model.state_dict()), user_map=self.user_map, item_map=self.item_map,
            seen_indptr=self.seen_indptr_, seen_indices=self.seen_indices_, rating_range=self.rating_range_,
            implicit=self.implicit_, history=list(self.history_), best_epoch=self.best_epoch_,
            extras=dict(self.extras_),
        )

    @classmethod
    def from_state(cls, state: ModelState) -> MatrixFactorization:
        """An estimator holding ``state`` (tensors shared, not copied)."""
        est = cls(**{k: v for k, v in state.params.items() if k in hparams.Params.names()})
        est._install(state.build_model(), dict(state.effective_params), state.user_map, state.item_map,
                     state.implicit, state.rating_range, list(state.history), state.best_epoch, state.extras)
        est.seen_indptr_, est.seen_indices_ = state.seen_indptr, state.seen_indices
        return est

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the model to folder ``path`` atomically; see :func:`torchmf.estimator.persistence.save_state`."""
        self.model  # noqa: B018 - raises before fit
        save_state(self.to_state(), path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", mmap: bool = False) -> MatrixFactorization:
        """Read a model folder written by :meth:`save` (also available as ``torchmf.load``)."""
        return cls.from_state(load_state(path, device=device, mmap=mmap))

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
        clipped to the training rating range for rating models.
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
        return float(out[0]) if is_scalar(users) and is_scalar(items) else out

    def fold_in(self, user: Hashable, ratings: Mapping[Hashable, float] | Iterable[Hashable]) -> MatrixFactorization:
        """Add a user, or refresh one, from their ratings; item factors stay fixed.

        The user's factors minimise the training objective with the items held
        fixed (each solver's :meth:`~torchmf.solvers.base.Solver.fold_in`): a
        ridge regression for ``mse``, the exact ALS user solve for ``ials``,
        deterministic L-BFGS on the expected loss for the sampled-negative losses.

        Parameters
        ----------
        user : raw id
            New (appended) or existing (replaced).
        ratings : dict of raw item id -> rating, or iterable of raw item ids
            Items must be known to the model; ratings must lie in the training
            range. Ranking models take interaction strengths, or a plain list of
            items (strength 1 each).

        Returns
        -------
        self
        """
        m = self.model
        w, items = fold_in_row(self, user, ratings)
        if user in self.user_map:
            row = self.user_map.index(user)
        else:
            self.user_map = self.user_map.extend([user])
            row = len(self.user_map) - 1
            m.resize(len(self.user_map))
            self.seen_indptr_ = np.append(self.seen_indptr_, self.seen_indptr_[-1])
        with torch.no_grad():
            m.user_embs.weight[row] = w[: m.embedding_dim]
            if m.biases:
                m.user_bias.weight[row, 0] = w[-1]
        start, end = self.seen_indptr_[row], self.seen_indptr_[row + 1]
        self.seen_indices_ = np.concatenate([self.seen_indices_[:start], items, self.seen_indices_[end:]])
        self.seen_indptr_ = self.seen_indptr_.copy()
        self.seen_indptr_[row + 1 :] += len(items) - (end - start)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> MatrixFactorization:
        new = copy.copy(self)
        for name, value in vars(self).items():
            setattr(new, name, copy.deepcopy(value, memo))
        return new


# ---------------------------------------------------------------------- helpers
def _as_interactions(data: Any, role: str) -> Interactions:
    if isinstance(data, Mapping):
        return Interactions.from_dict(data)
    if isinstance(data, Interactions):
        return data
    if isinstance(data, pd.DataFrame):
        raise DataError(f"{role} is a DataFrame: convert it with Interactions.from_pandas(df, user_col=..., "
                        "item_col=..., rating_col=...) first")
    raise DataError(f"{role} must be Interactions or a nested dict {{user: {{item: rating}}}}, "
                    f"got {type(data).__name__}")
