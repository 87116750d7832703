"""Exact top-k (torchmf.retrieval.exact) against a plain dense reference, block boundaries included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchmf.retrieval.exact as exact
import torchmf.retrieval.topk as topk
from torchmf.retrieval import ExactIndex, csr_rows


def reference(q, w, b, off, k, exclude, candidates):
    """Full score matrix, excluded entries -inf, argsort per row (no blocks, no buffers)."""
    s = (q @ w.T).numpy().astype(np.float64)
    if off is not None:
        s += off.numpy()[:, None]
    if b is not None:
        s += b.numpy()[None, :]
    for r in range(len(q)):
        s[r, exclude[1][exclude[0][r] : exclude[0][r + 1]]] = -np.inf
    cols = np.arange(w.shape[0]) if candidates is None else candidates
    s = s[:, cols]
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    items = np.where(np.isfinite(np.take_along_axis(s, order, 1)), cols[order], -1)
    return items


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("cands", [False, True])
def test_blocks_masks_and_candidates_match_a_dense_reference(monkeypatch, bias, cands):
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    n_q, n_items, d, k = 37, 50, 8, 5
    q, w = torch.randn(n_q, d, generator=g), torch.randn(n_items, d, generator=g)
    b = torch.randn(n_items, generator=g) if bias else None
    off = torch.randn(n_q, generator=g) if bias else None
    counts = rng.integers(0, 12, n_q)
    counts[3] = n_items - 2  # fewer eligible items than k: padded with -1
    indptr = np.r_[0, np.cumsum(counts)]
    indices = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    candidates = np.sort(rng.choice(n_items, 30, replace=False)) if cands else None
    want = reference(q, w, b, off, k, (indptr, indices), candidates)
    for elements in (1 << 24, 3 * n_items, 1):  # one block, blocks of 3 queries, one query per block
        monkeypatch.setattr(exact, "_SCORE_ELEMENTS", elements)
        items, scores = ExactIndex(w, b).search(q, k, offsets=off, exclude=(indptr, indices), candidates=candidates)
        np.testing.assert_array_equal(items, want)
        assert np.isneginf(scores[items == -1]).all() and np.isfinite(scores[items >= 0]).all()


@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("group", [64, 7])
def test_two_level_topk_matches_a_dense_reference(monkeypatch, k, group):
    # 5,037 columns take the grouped path of topk_rows (>= group * 4k columns), with a short last group
    monkeypatch.setattr(topk, "GROUP", group)
    g = torch.Generator().manual_seed(2)
    rng = np.random.default_rng(2)
    n_q, n_items, d = 40, 5037, 16
    q, w, b = torch.randn(n_q, d, generator=g), torch.randn(n_items, d, generator=g), torch.randn(n_items, generator=g)
    counts = rng.integers(0, 300, n_q)
    counts[5] = n_items - 3  # fewer eligible items than k: padded with -1
    indptr = np.r_[0, np.cumsum(counts)]
    indices = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    want = reference(q, w, b, None, k, (indptr, indices), None)
    items, scores = ExactIndex(w, b).search(q, k, exclude=(indptr, indices))
    np.testing.assert_array_equal(items, want)
    dense = (q @ w.T + b).numpy()  # the scores returned are the items' own scores
    ok = items >= 0
    np.testing.assert_allclose(scores[ok], np.take_along_axis(dense, np.maximum(items, 0), 1)[ok], rtol=1e-6)


def test_same_results_on_one_thread_or_several(monkeypatch):
    # search runs under the fit's thread policy (torchmf.device): the thread count must not change any result
    g = torch.Generator().manual_seed(1)
    q, w = torch.randn(300, 16, generator=g), torch.randn(2000, 16, generator=g)
    indptr = np.arange(0, 301 * 7, 7)
    indices = np.random.default_rng(1).integers(0, 2000, 300 * 7)
    monkeypatch.setattr(exact, "_SCORE_ELEMENTS", 100 * 2000)
    monkeypatch.setenv("TORCHMF_THREAD_POLICY", "off")
    before = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(ExactIndex(w).search(q, 10, exclude=(indptr, indices)))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_csr_rows_of_every_row_in_order_is_the_csr_itself():
    indptr, indices = np.array([0, 2, 2, 5]), np.array([4, 1, 0, 3, 2])
    got = csr_rows(indptr, indices, np.arange(3))
    np.testing.assert_array_equal(got[0], indptr)
    np.testing.assert_array_equal(got[1], indices)
    sub = csr_rows(indptr, indices, np.array([2, 0]))
    np.testing.assert_array_equal(sub[0], [0, 3, 5])
    np.testing.assert_array_equal(sub[1], [0, 3, 2, 4, 1])
