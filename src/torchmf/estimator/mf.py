"""The estimator users call: :class:`MatrixFactorization`, a facade over the layers below.

Fitting goes through :mod:`torchmf.training` and the solver registry, ranking
through :mod:`torchmf.retrieval`, saving through :class:`ModelState` and
:mod:`torchmf.estimator.persistence`; this class converts raw ids and
values at the edges and holds the fitted state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchmf import solvers
from torchmf.checks import check_k
from torchmf.data.convert import as_interactions
from torchmf.data.interactions import Interactions
from torchmf.data.profile import counts_guard, value_profile
from torchmf.device import resolve_device
from torchmf.errors import DataError, NotFittedError
from torchmf.estimator import params as hparams
from torchmf.estimator import update
from torchmf.estimator.foldin import FoldInMixin
from torchmf.estimator.persistence import load_state, save_state
from torchmf.estimator.predict import PredictMixin
from torchmf.estimator.ranker import fit_ranker, ranker_from_state, ranker_tensors
from torchmf.estimator.ranking import RankingMixin
from torchmf.estimator.state import ModelState
from torchmf.nn.mf import MFModel
from torchmf.retrieval.base import Index

__all__ = ["MatrixFactorization"]

log = logging.getLogger(__name__)


class MatrixFactorization(PredictMixin, RankingMixin, FoldInMixin):
    """Matrix factorization recommender: fit, predict, recommend, save.

    Parameters
    ----------
    factors : int, optional
        Latent dimension ``d``: 48, or 10 for ``solver="gibbs"``.
    epochs : int, optional
        Epochs (SGD) or full sweeps, users then items (ALS).
    solver : {"als", "sgd", "gibbs"}, optional
        Closed-form alternating least squares, minibatch SGD, or (``mse``
        only) Bayesian MF by Gibbs sampling. Default: "als" for ``mse`` and
        ``ials``, "sgd" for the sampled-negative losses.
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
    confidence : {"linear", "log"}, optional
        iALS: ``transform(v) = v`` or ``log(1 + v / confidence_eps)``. Default
        from the data (:func:`torchmf.data.profile.confidence_defaults`): binary
        data and ratings ``"linear"``, ``alpha=1``; heavy-tailed counts ``"log"``
        with ``confidence_eps`` = the median count, ``alpha = 1 / log 2``.
    confidence_eps : float, optional
        See ``confidence``.
    unobserved_weight : float, optional
        iALS: weight of every unobserved pair.
    negatives : int, optional
        Sampled negatives per positive (ranking losses).
    negative_sampling : {"uniform", "popularity"}, default "uniform"
    early_stopping : int, optional
        With a validation set: stop after this many epochs without
        improvement of validation RMSE (mse) or NDCG@10 (implicit losses).
        The best epoch's weights are always restored.
    samples, burn_in, thin : int, optional
        Gibbs: keep ``samples`` posterior draws (default 200), one every ``thin``
        sweeps (2) after ``burn_in`` (100); ``epochs`` defaults to that chain
        length. Embeddings are ``samples * factors`` wide (the draws side by side).
    implicit_features : bool, optional
        Gibbs: add each user's rated items and each item's raters as features
        (Rendle et al. 2019's flipped SVD++); default False.
    rank_by : {"interactions", "scores"}, optional
        What a rating model's lists (``recommend``, ``similar_items``, ...) rank
        by. ``"interactions"`` (default for ``mse``): an iALS component trained
        on the same pairs plus a small share of the predicted rating
        (:mod:`torchmf.estimator.ranker`); ``predict`` is unchanged.
        ``"scores"``: the predicted rating (as ranking losses always do).
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
        factors: int | None = None,
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
        confidence: str | None = None,
        confidence_eps: float | None = None,
        unobserved_weight: float | None = None,
        negatives: int | None = None,
        negative_sampling: str = "uniform",
        early_stopping: int | None = None,
        samples: int | None = None,
        burn_in: int | None = None,
        thin: int | None = None,
        implicit_features: bool | None = None,
        rank_by: str | None = None,
        device: str = "auto",
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        given = {name: value for name, value in locals().items() if name in hparams.Params.names()}
        self._params = hparams.Params(**given)
        hparams.validate(self._params)
        self._model: MFModel | None = None
        self._ranker: MFModel | None = None
        self.index_: Index | None = None
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
    def fit(self, train: Interactions | Mapping, validation: Interactions | None = None, *, warm_start: bool = False,
            checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
            resume: bool = False) -> MatrixFactorization:
        """Train on ``train``; optionally monitor a validation metric on ``validation``.

        Parameters
        ----------
        train : Interactions or dict
            A nested ``{user: {item: rating}}`` dict is converted with
            :meth:`Interactions.from_dict`.
        validation : Interactions, optional
            Raw ids are matched to the training ids; pairs unknown to training
            are left out. RMSE for rating losses, NDCG@10 for ranking losses.
        warm_start : bool
            Start from the current factors instead of a fresh initialisation;
            ``train`` must hold every id the model knows and may add new ones
            (see :func:`torchmf.estimator.update.warm_start`).
        checkpoint_dir : str or os.PathLike, optional
            Write a resumable checkpoint there every ``checkpoint_every`` epochs (default 1).
        resume : bool
            Continue from the newest checkpoint in ``checkpoint_dir`` (same data
            and settings, else an error): on the CPU the result is bitwise that
            of an uninterrupted fit. See :mod:`torchmf.training.checkpoint`.

        Returns
        -------
        self
        """
        from torchmf.training import fit_model  # training is only needed to fit

        train = as_interactions(train, "train")
        if len(train) == 0:
            raise DataError("cannot fit on empty interactions")
        if validation is not None:
            validation = as_interactions(validation, "validation")
        data = train.compact()
        profile = value_profile(data.values)
        hp = hparams.resolve(self._params, profile)
        if hp["early_stopping"] is not None and validation is None:
            raise ValueError(
                f"early_stopping={hp['early_stopping']} needs validation data to watch: pass "
                "fit(train, validation=...) (CLI: --validation FRACTION), or leave early_stopping=None"
            )
        if hp["early_stopping"] is not None and hp["epochs"] is not None and hp["early_stopping"] >= hp["epochs"]:
            log.warning("early_stopping=%d can never stop a %d-epoch fit; the best epoch is still restored",
                        hp["early_stopping"], hp["epochs"])
        device = resolve_device(hp["device"])
        data, model = update.warm_start(self, train, hp) if warm_start else (data, None)
        ckpt = update.checkpointer(checkpoint_dir, checkpoint_every, resume, hp, data)
        log.info("fitting %s on %s", self, data)
        extras: dict[str, Any] = {}
        with counts_guard(profile, hp["loss"], solvers.is_ranking_loss(hp["loss"])):
            model, history, best = fit_model(data, hp, device, update.validation_for(data, validation, device),
                                             model=None if model is None else model.to(device), checkpoint=ckpt,
                                             extras=extras)
        ranker = None
        if hp["rank_by"] == "interactions":
            ranker, extras["ranker"] = fit_ranker(data, hp, device)
        self._install(model, hp, data.user_map, data.item_map, data.implicit, data.rating_range(), history, best,
                      extras, ranker)
        self._set_seen(data)
        return self

    def _install(self, model: MFModel, hp: dict[str, Any], user_map: Any, item_map: Any, implicit: bool,
                 rating_range: tuple[float, float], history: list[dict[str, float]], best: int | None,
                 extras: dict[str, Any] | None = None, ranker: MFModel | None = None) -> None:
        self._model, self._hp, self._ranker = model, hp, ranker
        self.user_map, self.item_map = user_map, item_map
        self.implicit_, self.rating_range_ = bool(implicit), (float(rating_range[0]), float(rating_range[1]))
        self.history_, self.best_epoch_ = history, best
        self.extras_: dict[str, Any] = dict(extras or {})
        self.index_ = None  # an approximate index of other item factors would be stale
        self.files_: dict[str, bytes] = {}  # extra files saved with the model (a refit drops them)

    def _set_seen(self, data: Interactions) -> None:
        """The seen index: the training data's CSR arrays (shared with it where it holds them, as from_csr's does)."""
        indptr, items, values = data.row_major()
        if data.shares_input:
            # A from_csr matrix's arrays are the caller's: the fit reads them in place (no second copy
            # at the peak), but the model keeps its own, so that the caller editing the matrix later
            # (eliminate_zeros, data *= 2) cannot change what the model filters. Made after the fit's
            # layouts are freed, so below the fit's peak. Values that are all one number (binary data) are
            # kept as that number broadcast (read-only, no pair-sized copy: 200 MB at 50 M pairs);
            # whatever changes them (partial_fit, fold-in) builds new arrays, and saving writes them out whole.
            items = items.copy()
            if len(values) and values.min() == values.max():
                values = np.broadcast_to(np.full(1, values[0], dtype=np.float32), values.shape)
            else:
                values = values.copy()
        self.seen_indptr_ = np.array(indptr, dtype=np.int64)
        self.seen_indices_, self.seen_values_ = items, values

    def partial_fit(self, new_interactions: Interactions | Mapping, epochs: int | None = None) -> MatrixFactorization:
        """Add interactions to the fitted model: new ids grow it, touched rows are re-solved, the rest kept.

        ALS/iALS re-solve the new rows, then the touched users and items in
        closed form (``epochs`` alternations, default 1); SGD losses run
        ``epochs`` passes (default 2) over the new pairs plus four times as many
        old ones. A pair already seen takes the new value. See
        :mod:`torchmf.estimator.update`. Returns self.
        """
        update.partial_fit(self, new_interactions, epochs)
        return self

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

    def seen_values(self, user_index: int) -> np.ndarray:
        """The training values of :meth:`seen_items`, shape (n_seen,)."""
        return self.seen_values_[self.seen_indptr_[user_index] : self.seen_indptr_[user_index + 1]]

    def explain(self, user: Hashable, item: Hashable, k: int = 10) -> pd.DataFrame:
        """Which of ``user``'s own items contributed most to their score of ``item``.

        ALS-trained models split the score exactly over the user's items (Hu et
        al. 2008, section 5); other solvers report item-item dot products. See
        :func:`torchmf.estimator.explain.explain`.

        Returns
        -------
        pandas.DataFrame
            Columns ``item``, ``contribution``, ``value``; the largest ``k`` contributions first.
        """
        from torchmf.estimator.explain import explain

        return explain(self, user, item, check_k(k))

    def history_frame(self) -> pd.DataFrame:
        """The training history as a DataFrame: one row per epoch (``epoch``, ``train_loss``, ``val_*``)."""
        return pd.DataFrame(self.history_)

    def to(self, device: str | torch.device) -> MatrixFactorization:
        """Move the weights to ``device`` ("auto", "cpu", "cuda", "cuda:N"); returns self."""
        self.model.to(resolve_device(device))
        if self._ranker is not None:
            self._ranker.to(resolve_device(device))
        return self

    def to_state(self) -> ModelState:
        """The fitted model as a :class:`ModelState` (tensors shared, not copied)."""
        return ModelState(
            params=self.get_params(), effective_params=dict(self._hp),
            tensors={**self.model.state_dict(), **ranker_tensors(self._ranker)},
            user_map=self.user_map, item_map=self.item_map,
            seen_indptr=self.seen_indptr_, seen_indices=self.seen_indices_, seen_values=self.seen_values_,
            rating_range=self.rating_range_,
            implicit=self.implicit_, history=list(self.history_), best_epoch=self.best_epoch_,
            extras=dict(self.extras_), index=self.index_, files=dict(self.files_),
        )

    @classmethod
    def from_state(cls, state: ModelState) -> MatrixFactorization:
        """An estimator holding ``state`` (tensors shared, not copied)."""
        est = cls(**{k: v for k, v in state.params.items() if k in hparams.Params.names()})
        ranker = ranker_from_state(state)
        est._install(state.build_model(), dict(state.effective_params), state.user_map, state.item_map,
                     state.implicit, state.rating_range, list(state.history), state.best_epoch, state.extras, ranker)
        est.seen_indptr_, est.seen_indices_, est.seen_values_ = state.seen_indptr, state.seen_indices, state.seen_values
        est.index_ = state.index
        est.files_ = dict(state.files)
        return est

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the model to folder ``path`` atomically; see :func:`torchmf.estimator.persistence.save_state`."""
        self.model  # noqa: B018 - raises before fit
        save_state(self.to_state(), path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", mmap: bool = False) -> MatrixFactorization:
        """Read a model folder written by :meth:`save` (also available as ``torchmf.load``)."""
        return cls.from_state(load_state(path, device=device, mmap=mmap))
