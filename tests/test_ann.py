"""Approximate retrieval: HNSW search behaves like exact search, filters, persists and refuses tampering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import random_catalogue
from torchmf.errors import ModelFileError
from torchmf.retrieval.ann_io import load_index, save_index
from torchmf.retrieval.hnsw import HNSWIndex, build_hnsw

N_ITEMS, DIM = 1500, 12


@pytest.fixture(scope="module")
def factors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return random_catalogue(N_ITEMS, DIM, 40, seed=0)


@pytest.fixture(scope="module")
def index(factors) -> HNSWIndex:
    items, bias, users = factors
    # a beam as wide as the catalogue makes the graph search exhaustive in practice
    return build_hnsw(items, bias, graphs="ip", m=16, ef_construction=200, ef_search=N_ITEMS, recall_queries=users,
                      n_recall=40)


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


def test_is_an_index(index):
    from torchmf.retrieval import Index

    assert isinstance(index, Index) and index.kind == "hnsw" and index.n_items == N_ITEMS


def test_recall_measured_at_build_time(index):
    # exhaustive beam (ef_search = n_items) on 1500 items: every exact top-10 is found
    assert index.info["recall_at_10"] == 1.0
    assert index.info["recall_queries"] == 40
    assert index.info["m"] == 16 and index.info["ef_construction"] == 200


def test_default_beam_recall_is_high_on_small_catalogue(factors):
    items, bias, users = factors
    idx = build_hnsw(items, bias, graphs="ip", m=16, ef_construction=100, ef_search=64, recall_queries=users,
                     n_recall=40)
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
    idx = build_hnsw(items[:5], None, graphs="ip", m=4, n_recall=0)
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
    with pytest.raises(ValueError, match=match):
        build_hnsw(factors[0], graphs="ip", **kwargs)


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


# ---------------------------------------------------------------------- facade, persistence, CLI
@pytest.fixture(scope="module")
def fitted():
    """A small fitted model (planted data, 300 users x < 400 items) with an exhaustive-beam HNSW index."""
    import torchmf
    from torchmf.datasets import synthetic

    data, _ = synthetic(n_users=300, n_items=400, n_interactions=6000, rank=4, seed=3)
    model = torchmf.MatrixFactorization(factors=8, epochs=3, device="cpu", verbose=False).fit(data)
    # ef_search = n_items: the graph search visits everything, so approximate == exact
    model.build_index("hnsw", graphs="ip", m=8, ef_construction=100, ef_search=400, n_recall=100)
    return model


def test_build_index_measures_recall_on_users(fitted):
    info = fitted.index_.info
    assert fitted.index_.kind == "hnsw" and fitted.index_.n_items == len(fitted.item_map) and fitted.index_.has_bias
    # exhaustive beam over all (< 400) items: every exact top-10 is found
    assert info["recall_at_10"] == 1.0 and info["recall_queries"] == 100 and info["recall_source"] == "users"


def test_approximate_recommend_matches_exact_with_exhaustive_beam(fitted):
    users = list(fitted.user_map.raw(np.arange(20)))
    exact = fitted.recommend(users, k=7)
    approx = fitted.recommend(users, k=7, approximate=True)
    assert exact[["user", "rank", "item"]].equals(approx[["user", "rank", "item"]])
    np.testing.assert_allclose(approx["score"], exact["score"], rtol=1e-5, atol=1e-5)
    cand = list(fitted.item_map.raw(np.arange(0, len(fitted.item_map), 7)))
    one = fitted.recommend(users[0], k=5, items=cand, approximate=True)
    assert one["item"].tolist() == fitted.recommend(users[0], k=5, items=cand)["item"].tolist()
    visitor = {fitted.item_map.raw(np.array([3]))[0]: 5.0, fitted.item_map.raw(np.array([9]))[0]: 1.0}
    assert (fitted.recommend_for(visitor, k=5, approximate=True)["item"].tolist()
            == fitted.recommend_for(visitor, k=5)["item"].tolist())


def test_approximate_without_index_is_exact():
    import torchmf
    from torchmf.datasets import synthetic

    data, _ = synthetic(n_users=50, n_items=60, n_interactions=800, rank=3, seed=4)
    model = torchmf.MatrixFactorization(factors=4, epochs=2, device="cpu", verbose=False).fit(data)
    assert model.index_ is None
    u = model.user_map.raw(np.array([0]))[0]
    assert model.recommend(u, k=5, approximate=True).equals(model.recommend(u, k=5))
    with pytest.raises(ValueError, match="kind"):
        model.build_index("ivf")
    model.build_index("hnsw", graphs="ip", m=4, n_recall=10)
    model.fit(data)  # new factors: the old index is dropped
    assert model.index_ is None


def test_model_saves_and_loads_its_index(tmp_path, fitted, monkeypatch):
    import torchmf

    fitted.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "torchmf.json").read_text())
    assert manifest["index"]["sha256"] and manifest["index"]["info"]["recall_at_10"] == 1.0
    back = torchmf.load(tmp_path / "m", device="cpu")
    assert back.index_ is not None and back.index_.info == fitted.index_.info
    users = list(fitted.user_map.raw(np.arange(10)))
    assert back.recommend(users, k=5, approximate=True).equals(fitted.recommend(users, k=5, approximate=True))
    # without faiss the model still loads, with exact search
    import torchmf.retrieval.ann_io as ann_io

    def no_faiss():
        raise ImportError("no faiss")

    monkeypatch.setattr(ann_io, "import_faiss", no_faiss)
    assert torchmf.load(tmp_path / "m", device="cpu").index_ is None
    monkeypatch.undo()
    stored = _stored(tmp_path / "m", "index.hnsw.faiss")
    data = bytearray(stored.read_bytes())
    data[-5] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        torchmf.load(tmp_path / "m", device="cpu")


@pytest.fixture
def restore_logging():
    """main() configures the 'torchmf' logger (own handler, no propagation): undo it so caplog keeps working."""
    import logging

    logger = logging.getLogger("torchmf")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_cli_index_builds_saves_and_recommend_uses_it(tmp_path, fitted, capsys, restore_logging):
    from torchmf.cli.main import main

    folder = tmp_path / "m"
    fitted.__class__.save(_without_index(fitted), folder)
    assert main(["index", str(folder), "--graphs", "ip", "--m", "8", "--ef-construction", "100", "--ef-search", "400",
                 "--recall-users", "50", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == len(fitted.item_map) and out["m"] == 8
    assert out["recall_at_10"] == 1.0 and out["recall_queries"] == 50
    assert _stored(folder, "index.hnsw.faiss").exists()
    user = str(fitted.user_map.raw(np.array([0]))[0])
    assert main(["recommend", str(folder), "--user", user, "-k", "5", "--format", "json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert main(["recommend", str(folder), "--user", user, "-k", "5", "--format", "json", "--approximate"]) == 0
    assert [r["item"] for r in json.loads(capsys.readouterr().out)] == [r["item"] for r in exact]
    assert main(["info", str(folder)]) == 0
    assert "hnsw (m=8, ef_search=400, recall@10 1.0)" in capsys.readouterr().out
    assert main(["index", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["index", str(folder), "--m", "0"])
    assert exc.value.code == 2 and "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["index", "--help"])
    assert exc.value.code == 0 and "--ef-construction" in capsys.readouterr().out


def _stored(folder, name):
    """Where a model folder keeps its file ``name``: content-addressed, named in the manifest's ``files``."""
    return folder / json.loads((folder / "torchmf.json").read_text())["files"][name]["file"]


def _without_index(model):
    import copy

    plain = copy.copy(model)
    plain.index_ = None
    return plain
