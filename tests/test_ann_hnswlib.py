"""hnswlib HNSW indexes (the Möbius graph; the union of inner-product + angular graphs): exact with a wide beam,
persist, refuse bad graphs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from conftest import random_catalogue
from torchmf.errors import ModelFileError
from torchmf.retrieval.ann_io import index_files, index_from_files, load_index, save_index
from torchmf.retrieval.hnsw import build_hnsw
from torchmf.retrieval.hnswlib_graph import build_graph, graph_arrays, graph_from_arrays, merge_graphs
from torchmf.retrieval.hnswlib_index import HnswlibIndex, mobius

N_ITEMS, DIM = 1200, 10


@pytest.fixture(scope="module")
def factors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return random_catalogue(N_ITEMS, DIM, 30, seed=1)


@pytest.fixture(scope="module")
def index(factors) -> HnswlibIndex:
    items, bias, users = factors
    # a beam as wide as the catalogue: the search is exhaustive in practice
    return build_hnsw(items, bias, graphs="union", m=8, ef_construction=64, ef_search=N_ITEMS,
                      recall_queries=users, n_recall=30)


def exact_top(items, bias, queries, k):
    """Reference: matmul + topk over every item."""
    top_s, top_i = torch.topk(queries @ items.T + bias, k, dim=1)
    return top_i.numpy(), top_s.numpy()


def test_union_with_wide_beams_is_exact(index, factors):
    items, bias, users = factors
    assert isinstance(index, HnswlibIndex) and index.kind == "hnsw"
    assert index.info["graphs"] == "ip+angular" and index.info["library"] == "hnswlib"
    assert index.info["recall_at_10"] == 1.0 and index.info["recall_queries"] == 30
    got_i, got_s = index.search(users, 10)
    want_i, want_s = exact_top(items, bias, users, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert got_i.dtype == np.int64 and got_s.dtype == np.float32


def test_mobius_transform_inverts_norms_and_keeps_directions():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-0.5, 0.0]], dtype=np.float32)
    y = mobius(x)
    # x / |x|^2 by hand: (3, 4) / 25, zero stays zero (no division by zero), (-0.5, 0) / 0.25
    np.testing.assert_allclose(y, [[0.12, 0.16], [0.0, 0.0], [-2.0, 0.0]], rtol=1e-6)
    assert y.dtype == np.float32
    np.testing.assert_allclose(mobius(y), x, rtol=1e-6)  # its own inverse
    # a row 1e-20 as long as the longest would map to ~1e20 x its direction, past float32 once squared
    # by the graph's distances: it is scaled as if it were 1e-6 of the longest row
    tiny = np.array([[1.0, 0.0], [1e-20, 0.0]], dtype=np.float32)
    out = mobius(tiny)
    assert np.isfinite(out).all() and out[1, 0] == pytest.approx(1e6) and out[1, 1] == 0.0


def test_mobius_graph_is_the_default_and_exact_with_a_wide_beam(factors):
    items, bias, users = factors
    index = build_hnsw(items, bias, ef_search=N_ITEMS, recall_queries=users, n_recall=30)
    assert isinstance(index, HnswlibIndex) and index.info["graphs"] == "mobius"
    assert (index.info["m"], index.info["ef_construction"]) == (16, 100)
    assert index.info["recall_at_10"] == 1.0
    got_i, got_s = index.search(users, 10)
    want_i, want_s = exact_top(items, bias, users, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    # the graph is Euclidean over the transformed vectors: at most 2 m neighbours on layer 0
    assert index.graph_arrays()["level0"].shape == (N_ITEMS, 33)


def test_mobius_graph_finds_the_top_items_with_a_narrow_beam(factors):
    """Why it is the default: with a beam of only 20 it still finds nearly all of each exact top-10.

    The 1,200-item catalogue of ``random_catalogue``; the faiss inner-product graph of
    tests/test_ann.py needs a far wider beam here (its recall plateaus: RESULTS.md §11.1).
    """
    items, bias, users = factors
    index = build_hnsw(items, bias, ef_search=20, recall_queries=users, n_recall=30)
    assert index.info["recall_at_10"] >= 0.95


def test_defaults_and_narrow_beams(factors):
    items, bias, users = factors
    small = build_hnsw(items, bias, graphs="union", n_recall=0)
    assert (small.info["m"], small.info["ef_construction"], small.ef_search) == (24, 128, 300)
    small.set_ef_search(5)
    assert small.ef_search == 5 and small.info["ef_search"] == 5
    got, _ = small.search(users, 10)  # the beam is widened to k: still 10 distinct valid items per row
    assert (got >= 0).all() and all(len(set(r)) == 10 for r in got.tolist())
    with pytest.raises(ValueError, match="rerank"):
        small.set_rerank(10)
    with pytest.raises(ValueError, match="graphs"):
        build_hnsw(items, bias, graphs="both")
    with pytest.raises(ValueError, match="dims"):
        build_hnsw(items, bias, graphs="union", dims=4)
    with pytest.raises(ValueError, match="dims"):
        build_hnsw(items, bias, dims=4)  # the default Möbius graph is not projected
    with pytest.raises(ValueError, match="m must be"):
        build_hnsw(items, bias, graphs="union", m=1)


def test_exclusions_candidates_offsets(index, factors):
    items, bias, users = factors
    top, _ = index.search(users[:3], 10)
    excl = (np.array([0, 4, 4, 10]), np.concatenate([top[0, :4], top[2, :6]]))
    got, _ = index.search(users[:3], 10, exclude=excl)
    s = users[:3] @ items.T + bias
    s[0, torch.from_numpy(top[0, :4])] = -torch.inf
    s[2, torch.from_numpy(top[2, :6])] = -torch.inf
    np.testing.assert_array_equal(got, torch.topk(s, 10, dim=1).indices.numpy())
    cand = np.arange(0, N_ITEMS, 9)
    got_c, _ = index.search(users[:3], 5, candidates=cand)
    np.testing.assert_array_equal(got_c, cand[torch.topk(s.new_tensor(
        (users[:3] @ items[cand].T + bias[cand]).numpy()), 5, dim=1).indices.numpy()])
    off = torch.tensor([1.0, -2.0, 0.5])
    (i0, s0), (i1, s1) = index.search(users[:3], 10), index.search(users[:3], 10, offsets=off)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s1 - s0, np.broadcast_to(off.numpy()[:, None], s0.shape), atol=1e-5)


def test_k_larger_than_catalogue_pads(factors):
    items, bias, _ = factors
    tiny = build_hnsw(items[:30], bias[:30], graphs="union", m=4, n_recall=0)
    got, s = tiny.search(items[:2], 40)
    assert (got[:, :30] >= 0).all() and (got[:, 30:] == -1).all() and np.isneginf(s[:, 30:]).all()


def test_graph_arrays_round_trip_in_label_order(factors):
    items, _, _ = factors
    x = np.ascontiguousarray(items.numpy())
    g = build_graph(x, "ip", 6, 40, seed=0, threads=2)  # two threads: internal ids differ from labels
    arrays = graph_arrays(g)
    again = graph_arrays(graph_from_arrays(arrays, x, ef=50))
    for k, a in arrays.items():
        np.testing.assert_array_equal(a, again[k])
    # every neighbour list holds distinct valid items; layer 0 of the ip graph is the one hnswlib built
    level0 = arrays["level0"]
    assert (level0[:, 0] >= 1).all() and (level0[:, 0] <= 12).all()
    q = x[:5]
    g.set_ef(50)
    want = g.knn_query(q, k=10)[0]
    got = graph_from_arrays(arrays, x, ef=50).knn_query(q, k=10)[0]
    np.testing.assert_array_equal(want, got)  # same graph, same beam: same answers


def test_merged_graph_has_both_graphs_edges_once(factors):
    items, _, _ = factors
    x = np.ascontiguousarray(items.numpy()[:300])
    a, b = (graph_arrays(build_graph(x, space, 4, 30, seed=0)) for space in ("ip", "cosine"))
    merged = merge_graphs(a, b)
    assert merged["level0"].shape == (300, 17) and merged["upper"].shape == (len(a["upper"]), 9)
    assert merged["header"][0] == 8 and (merged["header"][1:] == a["header"][1:]).all()
    for i in range(300):
        want = {int(v) for g in (a, b) for v in g["level0"][i, 1 : 1 + g["level0"][i, 0]]}
        row = merged["level0"][i]
        assert row[0] == len(want) and set(row[1 : 1 + row[0]].tolist()) == want
    np.testing.assert_array_equal(merged["upper"][:, :5], a["upper"])
    g = graph_from_arrays(merged, x, ef=300)  # valid as a graph; a full beam finds the exact top-10
    want = np.argsort(-(x[:5] @ x.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(np.sort(g.knn_query(x[:5], k=10)[0].astype(np.int64), 1), np.sort(want, 1))


def test_save_load_round_trip(tmp_path, index, factors):
    _, _, users = factors
    entry = save_index(index, tmp_path)
    assert entry["format_version"] == 3 and entry["file"] == "index.hnsw.safetensors"
    assert json.loads((tmp_path / "index.hnsw.json").read_text())["format_version"] == 3
    back = load_index(tmp_path, entry)
    assert isinstance(back, HnswlibIndex) and back.info == index.info
    np.testing.assert_array_equal(back.search(users, 10)[0], index.search(users, 10)[0])
    with pytest.raises(ModelFileError, match="checksum"):
        load_index(tmp_path, {**entry, "sha256": "0" * 64})


def _resigned(entry, files, arrays):
    """Files and entry with the data file replaced by ``arrays`` and its checksum updated (a forged file)."""
    data = st_save(arrays)
    return {**entry, "sha256": hashlib.sha256(data).hexdigest()}, {**files, entry["file"]: data}


def _edit(arrays, key, fn):
    out = {k: v.copy() for k, v in arrays.items()}
    fn(out[key])
    return out


@pytest.mark.parametrize("key, fn, match", [
    ("graph.level0", lambda a: a.__setitem__((0, 1), N_ITEMS + 5), "neighbour id out of range"),
    ("graph.level0", lambda a: a.__setitem__((3, 1), -1), "neighbour id out of range"),
    ("graph.level0", lambda a: a.__setitem__((0, 0), 1000), "neighbour count"),
    ("graph.header", lambda a: a.__setitem__(3, N_ITEMS), "header"),
    ("graph.header", lambda a: a.__setitem__(0, 9), "layer 0 has shape"),
    ("graph.levels", lambda a: a.__setitem__(0, 100), "layers out of range"),
    ("vectors", lambda a: a.__setitem__((0, 0), np.nan), "finite"),
])
def test_forged_graph_arrays_are_refused(index, key, fn, match):
    entry, files = index_files(index)
    arrays = st_load(files[entry["file"]])
    entry2, files2 = _resigned(entry, files, _edit(arrays, key, fn))
    with pytest.raises(ModelFileError, match=match):
        index_from_files(entry2, files2, "m")


def test_forged_upper_layer_link_is_refused(index):
    entry, files = index_files(index)
    arrays = st_load(files[entry["file"]])
    levels, upper = arrays["graph.levels"], arrays["graph.upper"].copy()
    assert len(upper), "the fixture graph has upper layers"
    ground = int(np.flatnonzero(levels == 0)[0])  # a node on layer 0 only, linked from layer >= 1
    upper[0, 0], upper[0, 1] = 1, ground
    entry2, files2 = _resigned(entry, files, {**arrays, "graph.upper": upper})
    with pytest.raises(ModelFileError, match="upper layer"):
        index_from_files(entry2, files2, "m")
    entry3, files3 = _resigned(entry, files, {k: v for k, v in arrays.items() if k != "graph.upper"})
    with pytest.raises(ModelFileError, match="needs"):
        index_from_files(entry3, files3, "m")
    entry4, files4 = _resigned(entry, files, {**arrays, "graph.upper": upper.astype(np.int64)})
    with pytest.raises(ModelFileError, match="int32"):
        index_from_files(entry4, files4, "m")


def test_model_and_cli_with_union_index(tmp_path, capsys):
    import logging

    import torchmf
    import torchmf.retrieval.hnswlib_graph as hnswlib_graph
    from torchmf.cli.main import main
    from torchmf.datasets import synthetic

    data, _ = synthetic(n_users=200, n_items=300, n_interactions=4000, rank=4, seed=5)
    model = torchmf.MatrixFactorization(factors=6, epochs=2, device="cpu", verbose=False).fit(data)
    model.save(tmp_path / "m")
    logger = logging.getLogger("torchmf")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        assert main(["index", str(tmp_path / "m"), "--graphs", "union", "--ef-search", "300", "--recall-users", "40",
                     "--format", "json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["graphs"] == "ip+angular" and out["m"] == 24 and out["recall_at_10"] == 1.0  # beams >= items
        back = torchmf.load(tmp_path / "m", device="cpu")
        assert isinstance(back.index_, HnswlibIndex)
        users = list(back.user_map.raw(np.arange(10)))
        assert back.recommend(users, k=5, approximate=True)[["user", "item"]].equals(
            back.recommend(users, k=5)[["user", "item"]])
        assert main(["index", str(tmp_path / "m"), "--graphs", "union", "--m", "1"]) == 2
        assert "m must be" in capsys.readouterr().err
        assert main(["index", str(tmp_path / "m"), "--ef-search", "300", "--format", "json"]) == 0  # the default
        out = json.loads(capsys.readouterr().out)
        assert out["graphs"] == "mobius" and out["m"] == 16 and out["recall_at_10"] == 1.0
        assert torchmf.load(tmp_path / "m", device="cpu").index_.info["graphs"] == "mobius"
    finally:
        logger.handlers, logger.level, logger.propagate = saved

    def no_hnswlib():
        raise ImportError("no hnswlib")

    hnswlib_graph_import = hnswlib_graph.import_hnswlib
    try:  # without hnswlib the model still loads, with exact search
        hnswlib_graph.import_hnswlib = no_hnswlib
        assert torchmf.load(tmp_path / "m", device="cpu").index_ is None
    finally:
        hnswlib_graph.import_hnswlib = hnswlib_graph_import
