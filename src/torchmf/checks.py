"""Argument checks shared by the library, the CLI and the service (one k check, one id-array conversion)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from torchmf.data.idmap import _as_1d

__all__ = ["check_k", "is_int", "is_scalar", "to_id_array"]


def is_int(v: Any) -> bool:
    """True for Python and numpy integers, never for bools."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as an int; ValueError naming ``name`` unless it is a positive integer."""
    if not is_int(k) or k <= 0:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def is_scalar(v: Any) -> bool:
    """True for one raw id (anything but a list, tuple, array, Series, Index, set or range)."""
    return not isinstance(v, (list, tuple, np.ndarray, pd.Series, pd.Index, set, range))


def to_id_array(v: Any) -> np.ndarray:
    """Raw ids as a 1-D numpy array: one id becomes an array of one, int lists become int64."""
    if is_scalar(v):
        out = np.empty(1, dtype=object)
        out[0] = v
        return out
    return _as_1d(v)
