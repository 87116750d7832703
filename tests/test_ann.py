"""Approximate retrieval: HNSW search behaves like exact search, filters, persists and refuses tampering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchmf.errors import ModelFileError
from torchmf.retrieval.ann_io import load_index, save_index
from torchmf.retrieval.hnsw import HNSWIndex, build_hnsw

N_ITEMS, DIM = 1500, 12


@pytest.fixture(scope="module")
def factors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    items = torch.randn(N_ITEMS, DIM, generator=g) * torch.exp(0.3 * torch.randn(N_ITEMS, 1, generator=g))
    bias = 0.5 * torch.randn(N_ITEMS, generator=g)
    users = torch.randn(40, DIM, generator=g)
    return items, bias, users


@pytest.fixture(scope="module")
def index(factors) -> HNSWIndex:
    items, bias, users = factors
    # a beam as wide as the catalogue makes the graph search exhaustive in practice
    return build_hnsw(items, bias, m=16, ef_construction=200, ef_search=N_ITEMS, recall_queries=users, n_recall=40)


def exact(items, bias, queries, k, exclude=None, candidates=None, offsets=None):
    """Reference: plain matmul + topk over every item (or the candidates), excluded items at -inf."""
    s = queries @ items.T + bias
    if offsets is not None:
        s = s + offsets[:, None]
    if exclude is not None:
        for b in range(len(queries)):
            s[b, torch.as_tensor(exclude[1][exclude[0][b] : exclude[0][b + 1]], dtype=torch.long)] = -torch.inf
    if candidates is not None:
        keep = torch.zeros(len(items), dtype=torch.bool)
        keep[torch.as_tensor(candidates)] = True
        s[:, ~keep] = -torch.inf
    top_s, top_i = torch.topk(s, k, dim=1)
    top_i[~torch.isfinite(top_s)] = -1
    return top_i.numpy(), top_s.numpy()


def test_wide_beam_matches_exact_search_and_scores(index, factors):
    items, bias, users = factors
    got_i, got_s = index.search(users, 10)
    want_i, want_s = exact(items, bias, users, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert got_i.dtype == np.int64 and got_s.dtype == np.float32


def test_recall_measured_at_build_time(index):
    # exhaustive beam (ef_search = n_items) on 1500 items: every exact top-10 is found
    assert index.info["recall_at_10"] == 1.0
    assert index.info["recall_queries"] == 40
    assert index.info["m"] == 16 and index.info["ef_construction"] == 200


def test_default_beam_recall_is_high_on_small_catalogue(factors):
    items, bias, users = factors
    idx = build_hnsw(items, bias, m=16, ef_construction=100, ef_search=64, recall_queries=users, n_recall=40)
    assert 0.8 <= idx.info["recall_at_10"] <= 1.0


def test_offsets_shift_scores_not_ranking(index, factors):
    users = factors[2]
    off = torch.arange(len(users), dtype=torch.float32)
    i0, s0 = index.search(users, 5)
    i1, s1 = index.search(users, 5, offsets=off)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s1 - s0, np.broadcast_to(off.numpy()[:, None], s0.shape), atol=1e-5)


def test_excluded_items_are_never_returned_and_rows_are_refilled(index, factors):
    items, bias, users = factors
    q = users[:3]
    best = exact(items, bias, q, 200)[0]
    # row 0 excludes its own 200 best items (over-fetch must grow), row 1 nothing,
    # row 2 all items but 3 (only 3 results, then padding)
    rows = [best[0], np.zeros(0, dtype=np.int64), np.setdiff1d(np.arange(N_ITEMS), [7, 70, 700])]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    excl = (indptr, np.concatenate(rows))
    got_i, got_s = index.search(q, 10, exclude=excl)
    want_i, want_s = exact(items, bias, q, 10, exclude=excl)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert not np.isin(got_i[0], best[0]).any()
    assert sorted(got_i[2, :3]) == [7, 70, 700] and (got_i[2, 3:] == -1).all()
    assert np.isneginf(got_s[2, 3:]).all()


def test_candidates_are_ranked_exactly(index, factors):
    items, bias, users = factors
    cand = np.random.default_rng(1).choice(N_ITEMS, 30, replace=False)
    excl = (np.array([0, 2, 2]), cand[:2])
    got_i, got_s = index.search(users[:2], 8, candidates=cand, exclude=excl)
    want_i, want_s = exact(items, bias, users[:2], 8, candidates=cand, exclude=excl)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)


def test_k_larger_than_catalogue_pads(factors):
    items, _, users = factors
    idx = build_hnsw(items[:5], None, m=4, n_recall=0)
    got_i, got_s = idx.search(users[:2], 8)
    assert (got_i[:, :5] >= 0).all() and (got_i[:, 5:] == -1).all() and np.isneginf(got_s[:, 5:]).all()
    assert not idx.has_bias and "recall_at_10" not in idx.info


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"m": 0}, "m must"), ({"ef_search": -1}, "ef_search"), ({"ef_construction": 1.5}, "ef_construction"),
     ({"n_recall": -1}, "n_recall")],
)
def test_bad_build_parameters(factors, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_hnsw(factors[0], **kwargs)


def test_bad_queries(index):
    with pytest.raises(ValueError, match="shape"):
        index.search(torch.zeros(2, DIM + 1), 3)
    with pytest.raises(ValueError, match="k must"):
        index.search(torch.zeros(2, DIM), 0)


def test_save_load_round_trip(tmp_path, index, factors):
    users = factors[2]
    entry = save_index(index, tmp_path)
    json.dumps(entry)  # the manifest stores it
    assert entry["info"]["recall_at_10"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.hnsw.faiss", "index.hnsw.json"]
    back = load_index(tmp_path, entry)
    assert back.n_items == N_ITEMS and back.dim == DIM and back.has_bias
    assert back.info == index.info
    for a, b in zip(back.search(users, 10), index.search(users, 10), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["index.hnsw.faiss", "index.hnsw.json"])
def test_tampered_or_missing_index_file_is_refused(tmp_path, index, name):
    entry = save_index(index, tmp_path)
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_index(tmp_path, entry)
    path.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_index(tmp_path, entry)


def test_bad_manifest_entry_is_refused(tmp_path, index):
    entry = save_index(index, tmp_path)
    with pytest.raises(ModelFileError, match="kind"):
        load_index(tmp_path, {**entry, "kind": "ivf"})
    with pytest.raises(ModelFileError, match="items"):
        load_index(tmp_path, {**entry, "n_items": 3})
    with pytest.raises(ModelFileError, match="names index files"):
        load_index(tmp_path, {**entry, "file": "../x.faiss"})
