"""Projected HNSW graphs: score axes, the automatic number of coordinates, exact re-ranking, index format 1 and 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torchmf.errors import ModelFileError
from torchmf.retrieval.ann_common import import_faiss, score_axes
from torchmf.retrieval.ann_io import load_index, save_index
from torchmf.retrieval.hnsw import HNSWIndex, build_hnsw

N_ITEMS, DIM = 1200, 16


@pytest.fixture(scope="module")
def factors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items and users with a decaying spectrum (coordinate j scaled by 1/sqrt(j)): scores favour few directions."""
    g = torch.Generator().manual_seed(0)
    scale = torch.arange(1, DIM + 1, dtype=torch.float32) ** -0.5
    items = torch.randn(N_ITEMS, DIM, generator=g) * scale * torch.exp(0.3 * torch.randn(N_ITEMS, 1, generator=g))
    bias = 0.1 * torch.randn(N_ITEMS, generator=g)
    users = torch.randn(60, DIM, generator=g) * scale
    return items, bias, users


@pytest.fixture(scope="module")
def projected(factors) -> HNSWIndex:
    items, bias, users = factors
    # a beam as wide as the catalogue, all of it re-ranked exactly: the search is exact
    return build_hnsw(items, bias, graphs="ip", m=16, ef_construction=100, ef_search=N_ITEMS, dims=4,
                      recall_queries=users, n_recall=60)


def exact(items, bias, queries, k, exclude=None):
    s = queries @ items.T + bias
    if exclude is not None:
        for b in range(len(queries)):
            s[b, torch.as_tensor(exclude[1][exclude[0][b] : exclude[0][b + 1]], dtype=torch.long)] = -torch.inf
    top_s, top_i = torch.topk(s, k, dim=1)
    top_i[~torch.isfinite(top_s)] = -1
    return top_i.numpy(), top_s.numpy()


def test_score_axes_are_orthonormal_and_ordered_by_energy():
    rng = np.random.default_rng(0)
    scale = np.array([3.0, 0.1, 1.0, 0.01], dtype=np.float32)
    x = rng.standard_normal((4000, 4)).astype(np.float32) * scale
    axes, energy = score_axes(x, x)
    np.testing.assert_allclose(axes.T @ axes, np.eye(4), atol=1e-5)
    # axis j carries (scale_j²)² of the energy: the coordinate axes in the order 0, 2, 1, 3
    np.testing.assert_allclose(np.abs(axes[[0, 2, 1, 3], range(4)]), 1.0, atol=1e-3)
    want = scale[[0, 2, 1, 3]] ** 4 / (scale**4).sum()
    np.testing.assert_allclose(energy, want, rtol=0.15, atol=1e-7)  # sample moments: within 15 %
    assert energy.sum() == pytest.approx(1.0) and (np.diff(energy) <= 0).all()


def recall(got, want) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


def test_projected_search_returns_exact_scores_best_first(projected, factors):
    items, bias, users = factors
    assert projected.info["dims"] == 4 and projected.info["energy_left_out"] > 0
    got_i, got_s = projected.search(users, 10)
    # re-ranked with the full vectors: the scores are the model's, not the projection's
    np.testing.assert_allclose(got_s, (users[:, None, :] * items[got_i]).sum(2).numpy() + bias[got_i].numpy(),
                               rtol=1e-5, atol=1e-5)
    assert (np.diff(got_s, axis=1) <= 0).all()
    # an inner-product graph over 4 coordinates never links to some items (no in-edges), so even a beam as wide
    # as the catalogue is not exact; it finds most of the true top-10 (0.96 when written)
    assert recall(got_i, exact(items, bias, users, 10)[0]) >= 0.9
    assert projected.info["recall_at_10"] >= 0.9
    np.testing.assert_allclose(projected.item_vectors(np.array([5, 0])),
                               torch.cat([items, bias[:, None]], 1)[[5, 0]].numpy(), atol=1e-6)


def test_projected_index_excludes_and_refills(projected, factors):
    items, bias, users = factors
    q = users[:2]
    best = exact(items, bias, q, 150)[0]
    rows = [best[0], np.array([1, 2, 3])]
    excl = (np.array([0, len(rows[0]), len(rows[0]) + 3]), np.concatenate(rows))
    got_i, got_s = projected.search(q, 10, exclude=excl)
    assert (got_i >= 0).all() and np.isfinite(got_s).all()  # rows refilled to k
    assert not np.isin(got_i[0], rows[0]).any() and not np.isin(got_i[1], rows[1]).any()
    assert recall(got_i, exact(items, bias, q, 10, exclude=excl)[0]) >= 0.5


def test_small_rerank_and_beam_still_find_most(factors):
    items, bias, users = factors
    idx = build_hnsw(items, bias, graphs="ip", m=12, ef_construction=80, ef_search=40, dims=4, rerank=40,
                     recall_queries=users, n_recall=60)
    # 40 re-ranked candidates of 1200 (0.89 when written; the whole catalogue as the beam gives 0.96)
    assert idx.info["recall_at_10"] >= 0.8
    idx.set_rerank(12)
    assert idx.rerank == 12 and idx.info["rerank"] == 12
    with pytest.raises(ValueError, match="rerank"):
        idx.set_rerank(-1)


def test_default_graph_holds_the_full_vectors_and_is_written_as_format_1(tmp_path, factors):
    items, bias, users = factors
    plain = build_hnsw(items, bias, graphs="ip", m=8, ef_construction=40, recall_queries=users, n_recall=20)
    assert plain.info["dims"] == DIM + 1 and "rerank" not in plain.info
    save_index(plain, tmp_path)  # readable by torchmf versions that know only format 1
    assert json.loads((tmp_path / "index.hnsw.json").read_text())["format_version"] == 1


@pytest.mark.parametrize("dims", [0, 18, 2.5, True])
def test_bad_dims(factors, dims):
    with pytest.raises(ValueError, match="dims"):
        build_hnsw(factors[0], factors[1], graphs="ip", dims=dims, n_recall=0)


def test_projected_round_trip_writes_format_2(tmp_path, projected, factors):
    entry = save_index(projected, tmp_path)
    assert json.loads((tmp_path / "index.hnsw.json").read_text())["format_version"] == 2
    back = load_index(tmp_path, entry)
    assert back.info == projected.info and back.info["dims"] == 4
    for a, b in zip(back.search(factors[2], 10), projected.search(factors[2], 10), strict=True):
        np.testing.assert_array_equal(a, b)


def _write(folder, faiss_index, meta) -> dict:
    """Index files written by hand (as an older torchmf or a forger would), with a matching manifest entry."""
    import hashlib

    faiss = import_faiss()
    data = faiss.serialize_index(faiss_index).tobytes()
    meta_bytes = json.dumps(meta).encode()
    (folder / "index.hnsw.faiss").write_bytes(data)
    (folder / "index.hnsw.json").write_bytes(meta_bytes)
    return {"kind": "hnsw", "file": "index.hnsw.faiss", "sha256": hashlib.sha256(data).hexdigest(),
            "meta_file": "index.hnsw.json", "meta_sha256": hashlib.sha256(meta_bytes).hexdigest(),
            "n_items": faiss_index.ntotal}


def test_format_1_files_still_load(tmp_path, factors):
    items, bias, users = factors
    faiss = import_faiss()
    x = np.ascontiguousarray(torch.cat([items, bias[:, None]], 1).numpy())
    plain = faiss.IndexHNSWFlat(DIM + 1, 8, faiss.METRIC_INNER_PRODUCT)
    plain.add(x)
    meta = {"format": "torchmf-ann-index", "format_version": 1, "kind": "hnsw", "n_items": N_ITEMS, "dim": DIM,
            "has_bias": True, "info": {"m": 8, "ef_construction": 40, "ef_search": N_ITEMS, "recall_at_10": 1.0}}
    back = load_index(tmp_path, _write(tmp_path, plain, meta))
    assert back.info["m"] == 8 and back.n_items == N_ITEMS
    y = np.ascontiguousarray(torch.cat([users, torch.ones(len(users), 1)], 1).numpy())
    want = plain.search(y, 10, params=faiss.SearchParametersHNSW(efSearch=N_ITEMS))[1]
    np.testing.assert_array_equal(back.search(users, 10)[0], want)
    # a version-1 file must hold a plain graph; later versions are refused
    with pytest.raises(ModelFileError, match="not an inner-product HNSW index"):
        load_index(tmp_path, _write(tmp_path, faiss.IndexFlatIP(DIM + 1), meta))
    with pytest.raises(ModelFileError, match="version 3"):
        load_index(tmp_path, _write(tmp_path, plain, {**meta, "format_version": 3}))


def test_format_2_refuses_other_structures(tmp_path):
    faiss = import_faiss()
    meta = {"format": "torchmf-ann-index", "format_version": 2, "kind": "hnsw", "n_items": 4, "dim": 3,
            "has_bias": False, "info": {}}
    flat = faiss.IndexFlatIP(3)
    flat.add(np.eye(4, 3, dtype=np.float32))
    with pytest.raises(ModelFileError, match=r"index\.hnsw\.faiss: not an inner-product HNSW index"):
        load_index(tmp_path, _write(tmp_path, flat, meta))
    l2 = faiss.IndexRefineFlat(faiss.IndexHNSWFlat(3, 4))  # a refine index without the rotation
    l2.add(np.eye(4, 3, dtype=np.float32))
    with pytest.raises(ModelFileError, match="HNSW index"):
        load_index(tmp_path, _write(tmp_path, l2, meta))
