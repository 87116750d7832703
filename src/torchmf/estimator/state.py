"""Everything a fitted model is, as plain data: :class:`ModelState`.

The estimator converts to and from it (``to_state`` / ``from_state``) and
persistence reads and writes it, so neither needs the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchmf.data.idmap import IdMap
from torchmf.nn.mf import MFModel
from torchmf.retrieval.base import Index

__all__ = ["ModelState"]

# owners of MFModel.state_dict() names ("" is the global bias); other prefixes belong to features
_MODEL_PARTS = ("", "user_embs", "item_embs", "user_bias", "item_bias")


@dataclass
class ModelState:
    """A fitted model's weights, id maps and metadata.

    Attributes
    ----------
    params : dict
        Hyperparameters as the user gave them (None = solver default).
    effective_params : dict
        Hyperparameters the model was trained with.
    tensors : dict of str to torch.Tensor
        ``MFModel.state_dict()``: ``user_embs.weight`` (n_users, d),
        ``item_embs.weight`` (n_items, d) and, with biases,
        ``user_bias.weight`` (n_users, 1), ``item_bias.weight`` (n_items, 1), ``global_bias`` ();
        names under another prefix belong to a feature (``ranker.*``: the
        ranking component of :mod:`torchmf.estimator.ranker`) and are not
        part of :meth:`build_model`'s model.
    user_map, item_map : IdMap
    seen_indptr : numpy.ndarray of int64, shape (n_users + 1,)
    seen_indices : numpy.ndarray of int64 (int32 after a fit on ``from_csr`` data), shape (n_seen,)
        Each user's training items, CSR, sorted within a row; saved files hold
        int64. Never shared with a caller's ``from_csr`` matrix (copied after the fit).
    seen_values : numpy.ndarray of float32, shape (n_seen,)
        The training value of each of those interactions (1 for implicit data).
    rating_range : (float, float)
        Smallest and largest training value.
    implicit : bool
        The training data had no values (every interaction 1).
    history : list of dict
        One row per epoch.
    best_epoch : int or None
    extras : dict
        JSON-serialisable solver- or feature-specific metadata.
    index : Index or None
        An approximate index over the item factors (``MatrixFactorization.build_index``),
        saved beside the weights with its checksum in the metadata.
    files : dict of str to bytes
        Extra files stored with the model, by name (the ANN index travels as ``index``);
        checksummed and committed atomically with the weights.
    """

    params: dict[str, Any]
    effective_params: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    user_map: IdMap
    item_map: IdMap
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    seen_values: np.ndarray
    rating_range: tuple[float, float]
    implicit: bool
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    index: Index | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    @property
    def factors(self) -> int:
        """Width of the stored embeddings (a solver may store more than ``params['factors']``)."""
        return int(self.tensors["user_embs.weight"].shape[1])

    @property
    def query_width(self) -> int:
        """Width of the vectors recommendations rank by: ``factors``, plus the ranking component's (``ranker.*``)."""
        extra = self.tensors.get("ranker.user_embs.weight")
        return self.factors + (0 if extra is None else int(extra.shape[1]))

    @property
    def biases(self) -> bool:
        return "global_bias" in self.tensors

    def build_model(self) -> MFModel:
        """An :class:`MFModel` holding these tensors (shared, not copied), gradients off.

        Raises
        ------
        ValueError
            When the tensors do not fit the id maps.
        """
        model = MFModel(0, 0, self.factors, biases=self.biases)
        for name, t in self.tensors.items():
            owner, _, attr = name.rpartition(".")
            if owner.split(".")[0] not in _MODEL_PARTS:  # a feature's tensors (e.g. "ranker.*"), not the MFModel's
                continue
            module = model.get_submodule(owner) if owner else model
            setattr(module, attr, torch.nn.Parameter(t, requires_grad=False))
        model.user_embs.num_embeddings = self.n_users
        model.item_embs.num_embeddings = self.n_items
        if self.biases:
            model.user_bias.num_embeddings, model.item_bias.num_embeddings = self.n_users, self.n_items
        for name, rows in (("user", self.n_users), ("item", self.n_items)):
            if model.get_submodule(f"{name}_embs").weight.shape[0] != rows:
                raise ValueError(f"{name} factors have {model.get_submodule(f'{name}_embs').weight.shape[0]} rows, "
                                 f"the id map {rows} ids")
        return model
