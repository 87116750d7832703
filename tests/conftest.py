"""Shared fixtures for the torchmf test suite.

Everything here is small and deterministic; no fixture touches the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

import torchmf

# The suite's models are tiny: with torch's default intra-op threads, OpenMP
# workers spin against each other (and against anything else on a 2-core CI box)
# and a 1-second fit can take 10. One thread keeps the suite fast and its timing
# stable. Set TORCHMF_TEST_THREADS=0 to keep torch's default instead.
_threads = int(os.environ.get("TORCHMF_TEST_THREADS", "1"))
if _threads > 0:
    torch.set_num_threads(_threads)

# Hypothesis: no per-example deadline (the first call of a torch/pandas path can
# be slow on a loaded CI box) and a modest number of examples to keep the suite fast.
settings.register_profile(
    "torchmf",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "torchmf"))

# The seed example from the original project (README / issue): 4 ratings, 2 users, 3 items.
SEED_RATINGS = {"user1": {"item1": 5, "item2": 3}, "user2": {"item1": 2, "item3": 5}}


@pytest.fixture
def seed_ratings() -> dict:
    """A fresh copy of the seed dict (tests may not mutate the shared one)."""
    return {u: dict(r) for u, r in SEED_RATINGS.items()}


@pytest.fixture(scope="session")
def synthetic_split():
    """Planted rank-4 data (noise sd 0.1) split 80/20 by rows.

    Returns ``(train, test, truth)``; the split is a seeded random 20% of the
    rows taken with :meth:`Interactions.subset`, so both halves share id maps.
    """
    data, truth = torchmf.datasets.synthetic(
        n_users=300, n_items=200, n_interactions=20000, rank=4, noise=0.1, seed=0
    )
    rng = np.random.default_rng(0)
    test_mask = rng.random(len(data)) < 0.2
    return data.subset(~test_mask), data.subset(test_mask), truth


@pytest.fixture(scope="session")
def movielens_home() -> Path:
    """Folder holding ``ml-100k/``: ``$TORCHMF_DATA_HOME`` if set, else the repository's ``../shared/data``.

    Tests that use it must fail, not skip, when the data is missing.
    """
    env = os.environ.get("TORCHMF_DATA_HOME")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# The in-process CLI configures the 'torchmf' loggers (handlers, level, no propagation), also from
# module-scoped fixtures; every test starts from the state they had when the suite began, so caplog sees
# library warnings whatever ran before.
_LOGGERS = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                   logging.getLogger(name).propagate) for name in ("torchmf", "torchmf.training.monitor")}


@pytest.fixture(autouse=True)
def _restore_torchmf_logging():
    for name, (handlers, level, propagate) in _LOGGERS.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers[:], propagate
        logger.setLevel(level)  # (setLevel, not assignment: it also clears logging's level cache)
    yield


def random_catalogue(n_items: int, dim: int, n_users: int, seed: int):
    """Item vectors with log-normal norms, item biases and user vectors (torch, float32) for the ANN tests."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n_items, dim, generator=g) * torch.exp(0.3 * torch.randn(n_items, 1, generator=g))
    bias = 0.5 * torch.randn(n_items, generator=g)
    users = torch.randn(n_users, dim, generator=g)
    return items, bias, users
