"""Recommendations for a visitor the model has never seen (fold-in, nothing stored)."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from typing import Any

import pandas as pd

__all__ = ["recommend_for"]

_VISITOR = "\\x00torchmf-session-visitor"


def recommend_for(model: Any, interactions: Mapping[Hashable, float] | list[Hashable], k: int) -> pd.DataFrame:
    """Top-``k`` items (columns ``item, score``) for a visitor with these interactions; seen items excluded.

    Uses ``model.recommend_for`` when the estimator has it; otherwise folds the
    visitor into a private copy of the model (TEMPORARY shim until the
    estimator's ``recommend_for`` lands on main).
    """
    if hasattr(model, "recommend_for"):
        return model.recommend_for(interactions, k=k, exclude_seen=True)
    m = copy.deepcopy(model)
    m.fold_in(_VISITOR, interactions)
    return m.recommend(_VISITOR, k=k, exclude_seen=True)
