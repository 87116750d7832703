"""The fused numba kernel of the pairwise losses against the torch reference path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchmf import Interactions, MatrixFactorization
from torchmf.nn.mf import MFModel
from torchmf.solvers import pairwise_cpu
from torchmf.solvers.optim import make_optimizer
from torchmf.solvers.pairwise import NegativeSampler, PairwiseSettings, make_pairwise_epoch
from torchmf.solvers.sgd import model_tables

N_USERS, N_ITEMS = 300, 120


def _pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    # Zipf-like items, so that popular rows repeat many times inside a batch
    key = np.unique(rng.integers(0, N_USERS, 6000) * N_ITEMS + rng.zipf(1.5, 6000) % N_ITEMS)
    return torch.as_tensor(key // N_ITEMS), torch.as_tensor(key % N_ITEMS)


def _train(mode: str, loss: str, negatives: int, optimizer: str, sampling: str = "uniform",
           epochs: int = 2) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    users, items = _pairs()
    model = MFModel(N_USERS, N_ITEMS, 16, init_std=0.1, generator=torch.Generator().manual_seed(0))
    model.requires_grad_(False)
    settings = PairwiseSettings(loss, 0.05, 0.016, 512, optimizer, negatives, sampling)
    opt = make_optimizer(optimizer, model_tables(model), settings.lr)
    before = pairwise_cpu._MODE
    pairwise_cpu._MODE = mode
    try:
        epoch = make_pairwise_epoch(model, users, items, settings, torch.Generator().manual_seed(3), opt)
        losses = [epoch() for _ in range(epochs)]
    finally:
        pairwise_cpu._MODE = before
    return model.user_embs.weight.clone(), model.item_embs.weight.clone(), losses


@pytest.mark.parametrize(("loss", "negatives", "optimizer", "sampling"), [
    ("bpr", 1, "adagrad", "uniform"), ("bpr", 3, "sgd", "popularity"), ("logistic", 4, "adagrad", "uniform"),
    ("warp", 10, "adagrad", "uniform"),
])
def test_kernel_equals_torch_path(loss, negatives, optimizer, sampling):
    # same seed, data and draws: the two paths differ only by float reassociation
    P_t, Q_t, loss_t = _train("torch", loss, negatives, optimizer, sampling)
    P_k, Q_k, loss_k = _train("numba", loss, negatives, optimizer, sampling)
    assert not torch.equal(Q_t, _train("torch", loss, negatives, optimizer, sampling, epochs=1)[1])  # it trained
    torch.testing.assert_close(P_k, P_t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(Q_k, Q_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss_k, loss_t, rtol=1e-5)


def test_kernel_is_reproducible_and_thread_count_free():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _train("numba", "bpr", 1, "adagrad")
        torch.set_num_threads(2)
        two = _train("numba", "bpr", 1, "adagrad")
        again = _train("numba", "bpr", 1, "adagrad")
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(one[:2], two[:2], again[:2], strict=True):
        assert torch.equal(a, b) and torch.equal(b, c)
    assert one[2] == two[2]


def test_compiled_lookup_answers_as_the_hashed_filter():
    users, items = _pairs(1)
    hashed = NegativeSampler(users, items, N_ITEMS, "uniform", torch.Generator().manual_seed(0))
    compiled = NegativeSampler(users, items, N_ITEMS, "uniform", torch.Generator().manual_seed(0),
                               compiled_lookup=True)
    # every (user, item) cell, plus users past the last one with a positive
    q_users = torch.arange(N_USERS + 5).unsqueeze(1)
    cand = torch.arange(N_ITEMS).expand(N_USERS + 5, -1)
    expected = torch.zeros(N_USERS + 5, N_ITEMS, dtype=torch.bool)
    expected[users, items] = True
    assert torch.equal(compiled.is_positive(q_users, cand), expected)
    assert torch.equal(hashed.is_positive(q_users, cand), expected)
    # same answers, same redraws: identical negatives from identical generators
    query = users[:500]
    assert torch.equal(compiled.sample(query, 4), hashed.sample(query, 4))


def test_kernel_only_where_it_pays(monkeypatch):
    cpu = torch.device("cpu")
    big = pairwise_cpu.MIN_KERNEL_PAIRS
    assert pairwise_cpu.kernel_applies(cpu, torch.float32, "adagrad", big)
    assert not pairwise_cpu.kernel_applies(cpu, torch.float32, "adagrad", big - 1)  # small fits skip the JIT
    assert not pairwise_cpu.kernel_applies(cpu, torch.float32, "adam", big)
    assert not pairwise_cpu.kernel_applies(cpu, torch.float64, "sgd", big)
    assert not pairwise_cpu.kernel_applies(torch.device("meta"), torch.float32, "sgd", big)
    monkeypatch.setattr(pairwise_cpu, "_MODE", "numba")
    assert pairwise_cpu.kernel_applies(cpu, torch.float32, "sgd", 10)
    monkeypatch.setattr(pairwise_cpu, "_MODE", "torch")
    assert not pairwise_cpu.kernel_applies(cpu, torch.float32, "sgd", big)


def test_estimator_fit_on_the_kernel(monkeypatch):
    users, items = _pairs(2)
    data = Interactions.from_arrays(users.numpy(), items.numpy())
    fits = {}
    for mode in ("torch", "numba"):
        monkeypatch.setattr(pairwise_cpu, "_MODE", mode)
        est = MatrixFactorization(loss="bpr", factors=8, epochs=3, batch_size=256, seed=5, verbose=False)
        fits[mode] = est.fit(data)
    np.testing.assert_allclose(fits["numba"].item_factors, fits["torch"].item_factors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fits["numba"].user_factors, fits["torch"].user_factors, rtol=1e-4, atol=1e-5)
