"""Defaults that survive real data (issue 13 items 1-2, issue 11 item 4).

- iALS picks its confidence transform and scale from the values (binary,
  heavy-tailed counts, ratings) by the documented rule of
  :mod:`torchmf.data.profile`;
- a rating model fitted to counts says to use ``loss="ials"``;
- an explicit model's ``recommend`` / ``similar_items`` are not ruled by items
  with one or two ratings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import torchmf
from torchmf import MatrixFactorization
from torchmf.data.interactions import Interactions
from torchmf.data.profile import TAIL_RATIO, confidence_defaults, value_profile
from torchmf.data.split import user_split


def small_counts(seed: int = 0) -> Interactions:
    data, _ = torchmf.datasets.synthetic_counts(n_users=300, n_items=400, n_interactions=12_000, seed=seed)
    return data


# ---------------------------------------------------------------------- value_profile
def test_profile_kinds():
    assert value_profile(np.ones(50)).kind == "binary"
    stars = np.random.default_rng(0).integers(1, 6, 1000)
    assert value_profile(stars).kind == "ratings"
    half_stars = np.random.default_rng(0).integers(1, 11, 1000) / 2
    assert value_profile(half_stars).kind == "ratings"
    counts = small_counts().values
    p = value_profile(counts)
    assert p.kind == "counts" and p.integer and p.tail_ratio >= TAIL_RATIO
    # the same tail but not whole numbers: a strength, not a count
    assert value_profile(counts + 0.5).kind == "ratings"
    assert value_profile(-counts).kind == "ratings"


def test_confidence_rule_is_scale_free():
    counts = small_counts().values
    a, b = confidence_defaults(value_profile(counts)), confidence_defaults(value_profile(counts * 10))
    assert a["confidence"] == b["confidence"] == "log"
    assert a["alpha"] == b["alpha"]
    assert b["confidence_eps"] == pytest.approx(10 * a["confidence_eps"])
    # the median count gets the confidence a binary interaction gets under the binary rule (1 + 1 * 1)
    med = float(np.median(counts))
    conf = 1 + a["alpha"] * math.log1p(med / a["confidence_eps"])
    binary = confidence_defaults(value_profile(np.ones(3)))
    assert conf == pytest.approx(1 + binary["alpha"] * 1.0)
    assert binary == {"confidence": "linear", "confidence_eps": 1.0, "alpha": 1.0}


def test_synthetic_counts_are_heavy_tailed_and_seeded():
    data, truth = torchmf.datasets.synthetic_counts(seed=3)
    again, _ = torchmf.datasets.synthetic_counts(seed=3)
    np.testing.assert_array_equal(data.values, again.values)
    v = data.values
    assert data.implicit and np.all(v >= 1) and np.all(v == np.round(v))
    # like real play counts: median in the hundreds, maximum past a hundred thousand
    assert 100 <= np.median(v) <= 1000
    assert v.max() >= 1e5
    assert truth.user_factors.shape[0] == data.n_users
