"""Turning what a user passes to ``fit``/``evaluate`` into :class:`Interactions`, or saying how to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from torchmf.data.interactions import Interactions
from torchmf.errors import DataError

__all__ = ["as_interactions"]

_FROM_PANDAS = "Interactions.from_pandas(df, user_col=..., item_col=..., rating_col=...)"


def as_interactions(obj: Any, role: str = "train") -> Interactions:
    """``obj`` as :class:`Interactions`.

    Parameters
    ----------
    obj : Interactions, dict or pandas.DataFrame
        Interactions are returned unchanged; ``{user: {item: rating}}`` goes
        through :meth:`Interactions.from_dict`; a DataFrame through
        :meth:`Interactions.from_pandas` with its user, item and rating columns
        recognised by name (``userId``/``user``/``user_id``,
        ``movieId``/``item``/``item_id``, ``rating``/``score``/``count``, ...;
        without a rating column the data is implicit and a numeric column
        left unused is warned about).
    role : str
        What the data is for ("train", "validation", "test"); named in messages.

    Returns
    -------
    Interactions

    Raises
    ------
    DataError
        ``obj`` is of another type (a path, arrays, a sparse matrix, ...) or a
        DataFrame whose columns are not recognised; the message says which
        constructor to call instead.
    """
    if isinstance(obj, Interactions):
        return obj
    if obj is None:
        raise DataError(f"{role} data is None; pass Interactions, a {{user: {{item: rating}}}} dict or a DataFrame")
    if isinstance(obj, pd.DataFrame):
        try:
            return Interactions.from_pandas(obj, source=f"{role} data frame")
        except DataError as exc:
            if "recognised" not in str(exc):
                raise
            raise DataError(
                f"{role} data frame: user and item columns not recognised among {list(map(str, obj.columns))}; "
                f"use {_FROM_PANDAS} to say which is which"
            ) from None
    if isinstance(obj, Mapping):
        return Interactions.from_dict(obj)
    raise DataError(f"{role} data: cannot use a {type(obj).__name__}; {_how(obj)}")


def _how(obj: Any) -> str:
    """Which constructor turns ``obj`` into Interactions."""
    if isinstance(obj, (str, os.PathLike)):
        return f"read the file with torchmf.read_ratings({str(obj)!r})"
    if isinstance(obj, pd.Series):
        return f"give a DataFrame with user, item and rating columns and use {_FROM_PANDAS}"
    if type(obj).__module__.startswith("scipy.sparse"):
        return "use Interactions.from_csr(matrix, user_ids=..., item_ids=..., implicit=...)"
    if isinstance(obj, (list, tuple)) or hasattr(obj, "__array__"):
        return "use Interactions.from_arrays(users, items, ratings) for parallel arrays of ids and ratings"
    return f"pass Interactions, a {{user: {{item: rating}}}} dict, or a DataFrame with {_FROM_PANDAS}"
