"""Exact top-k screened by a bfloat16 product (torchmf.retrieval.screen): the error bound holds, results are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchmf.retrieval.exact as exact_mod
from torchmf.retrieval import ExactIndex
from torchmf.retrieval.screen import error_bound


def test_error_bound_by_hand():
    # delta = 4u + 6u^2 + 2 n 2^-24 with u = 2^-8 (bfloat16's 8 significant bits), n = 65 coordinates
    assert error_bound(65) == pytest.approx(4 / 256 + 6 / 65536 + 2 * 65 / 2**24, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfloat16_product_stays_within_the_bound(seed):
    """The attack on the proof: rows with a wide dynamic range and heavy cancellation."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(300, 65, generator=g) * torch.exp(3 * torch.randn(300, 65, generator=g))
    w = torch.randn(2000, 65, generator=g) * torch.exp(3 * torch.randn(2000, 65, generator=g))
    w[:100] = -w[100:200] * (1 + 2**-9)  # near-cancelling pairs of items
    got = (a.bfloat16() @ w.bfloat16().T).double()
    want = a.double() @ w.double().T
    bound = error_bound(65) * (a.abs().double() @ w.abs().double().T)
    assert ((got - want).abs() <= bound).all()


@pytest.fixture
def screened(monkeypatch):
    """Force the screened path (as on a CPU with native bfloat16) and let small blocks use it."""
    monkeypatch.setattr(exact_mod, "cpu_has_bf16_dot", lambda: True)
    monkeypatch.setattr(exact_mod, "MIN_SCREEN_QUERIES", 8)


def _float32(index, *args, **kwargs):
    saved = exact_mod.cpu_has_bf16_dot
    exact_mod.cpu_has_bf16_dot = lambda: False
    try:
        return index.search(*args, **kwargs)
    finally:
        exact_mod.cpu_has_bf16_dot = saved


def _catalogue(n_users=600, n_items=3000, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n_items, d, generator=g) * 0.3
    items[:, 0] += torch.rand(n_items, generator=g) * 2  # a popularity direction: top scores positive
    users = torch.randn(n_users, d, generator=g) * 0.5
    users[:, 0] += 1
    return users, items, torch.randn(n_items, generator=g) * 0.1


def _same(got, want):
    """Same items and scores, up to the order of scores float32 rounding cannot tell apart."""
    (gi, gs), (wi, ws) = got, want
    np.testing.assert_allclose(gs, ws, rtol=1e-5, atol=1e-6)
    differ = gi != wi
    # where the item differs the two scores tie to float32 precision
    np.testing.assert_allclose(gs[differ], ws[differ], rtol=1e-6, atol=1e-6)
    assert differ.mean() < 0.01


@pytest.mark.parametrize("with_bias", [False, True])
def test_screened_search_equals_float32_search(screened, with_bias):
    users, items, bias = _catalogue()
    index = ExactIndex(items, bias if with_bias else None)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 40, len(users))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    seen = rng.integers(0, len(items), indptr[-1])
    offsets = torch.randn(len(users)) * 0.2
    for kwargs in ({}, {"exclude": (indptr, seen)}, {"exclude": (indptr, seen), "offsets": offsets}):
        _same(index.search(users, 10, **kwargs), _float32(index, users, 10, **kwargs))
    # excluded items never come back
    got, _ = index.search(users, 10, exclude=(indptr, seen))
    for u in range(0, len(users), 37):
        assert not set(got[u]) & set(seen[indptr[u] : indptr[u + 1]].tolist())


def test_rows_the_screen_cannot_prove_fall_back_to_float32(screened, monkeypatch):
    """All scores negative (the int16 keys cannot rank them) and a slack too wide to pass: still exact."""
    users, items, _ = _catalogue(seed=3)
    index = ExactIndex(items - 5.0 * (items[:, :1] > -10), None)
    users = users.abs()
    users[:, 0] = 1.0  # every score below zero
    calls = []
    real = exact_mod._float32_blocks

    def spy(queries, *args):
        calls.append(len(queries))
        return real(queries, *args)

    monkeypatch.setattr(exact_mod, "_float32_blocks", spy)
    _same(index.search(users, 5), _float32(index, users, 5))
    assert calls[0] == len(users)  # every row re-scored in float32
    import torchmf.retrieval.screen as screen_mod

    calls.clear()
    users2, items2, bias2 = _catalogue(seed=4)
    monkeypatch.setattr(screen_mod, "error_bound", lambda width: 1e6)  # no row can pass
    _same(ExactIndex(items2, bias2).search(users2, 5), _float32(ExactIndex(items2, bias2), users2, 5))
    assert calls[0] == len(users2)


def test_small_batches_and_no_bf16_cpu_keep_float32(monkeypatch):
    users, items, bias = _catalogue(n_users=40)
    calls = []
    real = exact_mod._screened
    monkeypatch.setattr(exact_mod, "_screened", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(exact_mod, "cpu_has_bf16_dot", lambda: True)
    ExactIndex(items, bias).search(users, 10)  # 40 queries: below MIN_SCREEN_QUERIES
    monkeypatch.setattr(exact_mod, "cpu_has_bf16_dot", lambda: False)
    big = users.repeat(10, 1)
    ExactIndex(items, bias).search(big, 10)
    assert calls == []
    monkeypatch.setattr(exact_mod, "cpu_has_bf16_dot", lambda: True)
    ExactIndex(items, bias).search(big, 10)
    assert calls == [1]
