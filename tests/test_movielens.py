"""MovieLens 100K from $TORCHMF_DATA_HOME (or the repository's ../shared/data).

These tests FAIL, never skip, when the data is missing: the accuracy target
below is the project's acceptance criterion and must not pass silently.
"""

from __future__ import annotations

import numpy as np

import torchmf
from torchmf import MatrixFactorization


def checked(path):
    """The data home, asserted (inside the test, so a missing file is a FAILED test) to hold ml-100k."""
    assert (path / "ml-100k" / "u.data").is_file(), (
        f"MovieLens 100K not found under {path}; set TORCHMF_DATA_HOME to the folder holding ml-100k/"
    )
    return path


def test_u_data_counts(movielens_home):
    home = checked(movielens_home)
    data = torchmf.datasets.load_movielens("100k", data_home=home)
    # ml-100k/README: "100,000 ratings (1-5) from 943 users on 1682 movies"
    assert len(data) == 100_000
    assert data.n_users == 943
    assert data.n_items == 1682
    assert data.rating_range() == (1.0, 5.0)
    assert not data.implicit
    assert data.timestamps is not None
    # ids are the files' integers: users 1..943, items 1..1682 (README)
    assert sorted(data.user_map.ids) == list(range(1, 944))
    assert sorted(data.item_map.ids) == list(range(1, 1683))


def test_fold_1_sizes(movielens_home, monkeypatch):
    home = checked(movielens_home)
    # the library itself must find the data through $TORCHMF_DATA_HOME
    monkeypatch.setenv("TORCHMF_DATA_HOME", str(home))
    train, test = torchmf.datasets.load_movielens_fold(1)
    # ml-100k/README: u1..u5 are 80%/20% splits of u.data, i.e. 80,000 / 20,000 ratings
    assert len(train) == 80_000
    assert len(test) == 20_000


def test_default_model_rmse_on_u1(movielens_home):
    home = checked(movielens_home)
    train, test = torchmf.datasets.load_movielens_fold(1, data_home=home)
    model = MatrixFactorization(verbose=False).fit(train)
    pred = model.predict(test.user_map.raw(test.users), test.item_map.raw(test.items), unknown="fallback")
    rmse = float(np.sqrt(np.mean((pred - test.values) ** 2)))
    # benchmarks give ~0.922 for the defaults on u1; the target is 0.925;
    # 0.93 leaves slack for BLAS / platform differences
    assert rmse < 0.93, f"RMSE on u1.test is {rmse:.4f}"
