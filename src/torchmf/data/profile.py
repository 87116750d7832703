"""What the interaction values look like: binary, heavy-tailed counts, or ratings.

Data-dependent defaults read this profile instead of guessing: iALS picks its
confidence transform and scale from it (:func:`confidence_defaults`), and a
rating model fitted to play counts says so and points to ``loss="ials"``
(:func:`counts_guard`).

The rule (benchmarks/count_defaults.py measures it):

- ``binary``: every value is the same (plain implicit feedback);
- ``counts``: non-negative integers with a heavy tail, ``p99 / median >= 10``
  (play counts, clicks per item; ratings on any bounded scale have a ratio of
  a few at most);
- ``ratings``: anything else (stars, scores, small bounded strengths).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchmf.errors import TrainingError

__all__ = ["TAIL_RATIO", "ValueProfile", "confidence_defaults", "counts_guard", "value_profile"]

log = logging.getLogger(__name__)

# p99 / median at and above which non-negative integers are "heavy-tailed counts"
TAIL_RATIO = 10.0
# confidence that a pair with the median count gets, 1 + MEDIAN_CONFIDENCE (see confidence_defaults)
MEDIAN_CONFIDENCE = 1.0


@dataclass(frozen=True)
class ValueProfile:
    """Summary of interaction values.

    Attributes
    ----------
    kind : {"binary", "counts", "ratings"}
    n : int
        Number of values.
    minimum, median, p99, maximum : float
    integer : bool
        Every value is a whole number.
    tail_ratio : float
        ``p99 / median`` (``inf`` when the median is 0 and p99 is not).
    """

    kind: str
    n: int
    minimum: float
    median: float
    p99: float
    maximum: float
    integer: bool
    tail_ratio: float

    def describe(self) -> str:
        """One line for logs and messages."""
        return (f"{self.kind} (n={self.n:,}, min {self.minimum:g}, median {self.median:g}, p99 {self.p99:g}, "
                f"max {self.maximum:g}{', integers' if self.integer else ''})")


_BLOCK = 1 << 20


def value_profile(values: Any) -> ValueProfile:
    """Classify interaction values as binary, heavy-tailed counts, or ratings.

    Parameters
    ----------
    values : array-like of float, shape (n,)

    Returns
    -------
    ValueProfile
        ``kind`` is ``"binary"`` when all values are equal, ``"counts"`` when
        they are non-negative integers with ``p99 / median >= TAIL_RATIO``,
        else ``"ratings"``. Empty input is ``"binary"``.
    """
    v = np.asarray(values)
    v = (v if v.dtype.kind in "fiu" else v.astype(np.float64)).reshape(-1)
    if len(v) == 0:
        return ValueProfile("binary", 0, 0.0, 0.0, 0.0, 0.0, True, 1.0)
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:  # every value equal: no percentiles to compute (0.3 s at 5 M values)
        return ValueProfile("binary", len(v), lo, lo, lo, hi, bool(lo == round(lo)), 1.0)
    # one float64 copy, partitioned in place (50 M values: 0.4 GB instead of three times that)
    median, p99 = (float(x) for x in np.percentile(np.array(v, dtype=np.float64), [50, 99], overwrite_input=True))
    integer = all(bool(np.all(b == np.round(b))) for b in (v[s : s + _BLOCK] for s in range(0, len(v), _BLOCK)))
    if median > 0:
        ratio = p99 / median
    else:
        ratio = math.inf if p99 > 0 else 1.0
    if lo == hi:
        kind = "binary"
    elif integer and lo >= 0 and ratio >= TAIL_RATIO:
        kind = "counts"
    else:
        kind = "ratings"
    return ValueProfile(kind, len(v), lo, median, p99, hi, integer, ratio)


def confidence_defaults(profile: ValueProfile) -> dict[str, Any]:
    """iALS ``confidence``, ``confidence_eps`` and ``alpha`` for values like these.

    - binary and ratings: ``confidence="linear", alpha=1`` (the defaults tuned on
      ML-100k, unchanged: a value-1 pair gets confidence 2);
    - counts: ``confidence="log"`` with ``confidence_eps`` = the median count and
      ``alpha = MEDIAN_CONFIDENCE / log 2``, so the confidence is
      ``1 + alpha * log(1 + count / median)``: a pair with the median count gets
      ``1 + MEDIAN_CONFIDENCE``, ten times the median about ``1 + 3.5 *
      MEDIAN_CONFIDENCE``; the rule does not change when every count is
      multiplied by a constant, and a single huge count cannot outweigh the
      rest of its row.

    Parameters
    ----------
    profile : ValueProfile

    Returns
    -------
    dict with keys ``confidence``, ``confidence_eps``, ``alpha``.
    """
    if profile.kind == "counts":
        eps = max(profile.median, 1.0)
        return {"confidence": "log", "confidence_eps": eps, "alpha": MEDIAN_CONFIDENCE / math.log(2.0)}
    return {"confidence": "linear", "confidence_eps": 1.0, "alpha": 1.0}


@contextmanager
def counts_guard(profile: ValueProfile, loss: str, ranking: bool) -> Iterator[None]:
    """Around a fit: say when a rating loss is fitted to counts, and name the fix if it then diverges.

    Parameters
    ----------
    profile : ValueProfile
        Of the training values.
    loss : str
    ranking : bool
        The loss learns a ranking (then counts are what it expects and nothing happens).

    Raises
    ------
    TrainingError
        Re-raised from the fit with ``loss='ials'`` named, when the values are counts.
    """
    counts = profile.kind == "counts" and not ranking
    if counts:
        log.warning("the training values look like counts, %s: loss=%r fits them as ratings, which diverges or "
                    "ranks badly on heavy-tailed counts; use MatrixFactorization(loss='ials') for play counts, "
                    "clicks or purchases", profile.describe(), loss)
    try:
        yield
    except TrainingError as exc:
        if not counts:
            raise
        raise TrainingError(f"{exc}. The values look like counts ({profile.describe()}), not ratings: "
                            "use MatrixFactorization(loss='ials') instead of raising reg") from exc
