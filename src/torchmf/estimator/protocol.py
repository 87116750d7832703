"""What evaluation and model selection need from a model: the :class:`Recommender` protocol."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from torchmf.data.idmap import IdMap

__all__ = ["Recommender"]


@runtime_checkable
class Recommender(Protocol):
    """A fitted model that predicts and ranks; :class:`~torchmf.MatrixFactorization` is one.

    Attributes
    ----------
    user_map, item_map : IdMap
    is_ranking : bool
        True when scores rank items rather than predict ratings.
    history_ : list of dict
    best_epoch_ : int or None
    """

    user_map: IdMap
    item_map: IdMap
    history_: list[dict[str, float]]
    best_epoch_: int | None

    @property
    def is_ranking(self) -> bool: ...

    def get_params(self) -> dict[str, Any]: ...

    def fit(self, train: Any, validation: Any = None) -> Recommender: ...

    def predict(self, users: Any, items: Any, unknown: str = "error") -> float | np.ndarray: ...

    def top_k(
        self,
        user_indices: np.ndarray,
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        exclude: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...
