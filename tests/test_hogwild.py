"""optimizer="hogwild": lock-free per-sample BPR on the CPU (implicit's algorithm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchmf
from torchmf import MatrixFactorization


@pytest.fixture(scope="module")
def split():
    data, _ = torchmf.datasets.synthetic(n_users=300, n_items=200, n_interactions=9000, rank=4, seed=3, implicit=True)
    return torchmf.split.user_split(data, 0.2, seed=0)


def fit(train, threads: int = 1, **kw) -> MatrixFactorization:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        est = MatrixFactorization(**{"loss": "bpr", "optimizer": "hogwild", "factors": 16, "epochs": 20,
                                     "lr": 0.05, "device": "cpu", "verbose": False, **kw})
        return est.fit(train)
    finally:
        torch.set_num_threads(before)


def test_one_thread_is_reproducible_and_it_learns(split):
    train, test = split
    a, b = fit(train), fit(train)
    assert torch.equal(a.model.user_embs.weight, b.model.user_embs.weight)
    assert a.history_ == b.history_
    losses = [h["train_loss"] for h in a.history_]
    assert losses[-1] < 0.7 * losses[0]  # BPR's loss starts at log 2 = 0.693 per step
    # it ranks the held-out items far better than the untrained factors do
    ndcg = torchmf.evaluate(a, test, k=10)["ndcg@10"]
    untrained = torchmf.evaluate(fit(train, epochs=1, lr=1e-9), test, k=10)["ndcg@10"]
    assert ndcg > untrained + 0.05


def test_two_threads_train_too(split):
    train, test = split
    two = fit(train, threads=2)
    assert np.isfinite(two.model.user_embs.weight.detach().numpy()).all()
    assert torchmf.evaluate(two, test, k=10)["ndcg@10"] > 0.5 * torchmf.evaluate(fit(train), test, k=10)["ndcg@10"]


def test_popularity_sampling_runs(split):
    train, _ = split
    est = fit(train, negative_sampling="popularity", epochs=3)
    assert np.isfinite([h["train_loss"] for h in est.history_]).all()


@pytest.mark.parametrize(("kw", "match"), [
    ({"loss": "logistic"}, "hogwild"), ({"loss": "warp"}, "hogwild"), ({"negatives": 3}, "negatives"),
    ({"loss": "mse", "solver": "sgd"}, "hogwild"),
])
def test_hogwild_is_refused_where_it_does_not_apply(kw, match):
    with pytest.raises(ValueError, match=match):
        MatrixFactorization(**{"loss": "bpr", "optimizer": "hogwild", **kw})
