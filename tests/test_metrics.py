"""Tests of torchmf.metrics against hand-worked values and a slow reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchmf.metrics import coverage, mae, ranking_metrics, rmse

NAMES = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
L3 = 1 / math.log2(3)  # discount at rank 2
L4 = 1 / math.log2(4)  # discount at rank 3 (= 0.5)


def one(rec, rel, k):
    """Metrics for a single user with recommended list ``rec`` and relevant list ``rel``."""
    return ranking_metrics(torch.tensor([rec]), [0, len(rel)], rel, k)


# ---------------------------------------------------------------------- slow reference
def reference(recs: list[list[int]], rels: list[list[int]], k: int) -> list[dict[str, float] | None]:
    """Pure-Python transcription of the docstring definitions; None for excluded users."""
    out = []
    for rec, rel in zip(recs, rels, strict=True):
        if len(rel) == 0:
            out.append(None)
            continue
        known = {x for x in rel if x != -1}
        seen: set[int] = set()
        hits = []
        for x in rec[:k]:
            hits.append(1 if (x != -1 and x in known and x not in seen) else 0)
            seen.add(x)
        n_hits = sum(hits)
        ideal = min(k, len(rel))
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        idcg = sum(1 / math.log2(i + 2) for i in range(ideal))
        ap, running = 0.0, 0
        for i, h in enumerate(hits):
            running += h
            if h:
                ap += running / (i + 1)
        first = next((i for i, h in enumerate(hits) if h), None)
        out.append(
            {
                "precision": n_hits / k,
                "recall": n_hits / len(rel),
                "ndcg": dcg / idcg,
                "map": ap / ideal,
                "mrr": 0.0 if first is None else 1 / (first + 1),
                "hit_rate": float(n_hits > 0),
            }
        )
    return out


def csr(rels: list[list[int]]) -> tuple[list[int], list[int]]:
    indptr = [0]
    for r in rels:
        indptr.append(indptr[-1] + len(r))
    return indptr, [x for r in rels for x in r]


# ---------------------------------------------------------------------- hand-worked
def test_worked_example():
    # recommended [3, 1, 2], relevant {1, 4}: only item 1 hits, at rank 2
    out = one([3, 1, 2], [1, 4], k=3)
    assert out["precision"] == pytest.approx(1 / 3)  # 1 hit / k=3
    assert out["recall"] == pytest.approx(1 / 2)  # 1 hit / |R|=2
    # DCG = 1/log2(3); IDCG over min(3, 2) = 2 positions = 1 + 1/log2(3)
    assert out["ndcg"] == pytest.approx(L3 / (1 + L3))
    # AP = precision@2 (=1/2) / min(3, 2) = 1/4
    assert out["map"] == pytest.approx(0.25)
    assert out["mrr"] == pytest.approx(0.5)  # first hit at rank 2
    assert out["hit_rate"] == 1.0
    assert out["n_users"] == 1 and out["k"] == 3


def test_padding_counts_as_miss():
    # recommended [5, -1, -1] (only one item available), relevant {5, 7}
    out = one([5, -1, -1], [5, 7], k=3)
    assert out["precision"] == pytest.approx(1 / 3)  # k is not reduced by padding
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["ndcg"] == pytest.approx(1 / (1 + L3))  # DCG = 1 (rank 1), IDCG = 1 + 1/log2(3)
    assert out["map"] == pytest.approx(1 / 2)  # precision@1 = 1, / min(3, 2)
    assert out["mrr"] == 1.0
    # all padding, and padding never matches an unknown relevant item (-1)
    out = one([-1, -1, -1], [-1, 3], k=3)
    assert out["precision"] == 0 and out["ndcg"] == 0 and out["mrr"] == 0 and out["hit_rate"] == 0


def test_fewer_relevant_than_k():
    # recommended [0, 9, 8, 1], relevant {1}, k = 4: hit at rank 4
    out = one([0, 9, 8, 1], [1], k=4)
    assert out["precision"] == pytest.approx(1 / 4)
    assert out["recall"] == 1.0
    # DCG = 1/log2(5); IDCG over min(4, 1) = 1 position = 1
    assert out["ndcg"] == pytest.approx(1 / math.log2(5))
    assert out["map"] == pytest.approx(1 / 4)  # precision@4 = 1/4, / min(4, 1) = 1
    assert out["mrr"] == pytest.approx(1 / 4)


def test_no_hits():
    out = one([0, 1, 2], [3, 4, 5, 6], k=3)
    for name in NAMES:
        assert out[name] == 0.0


def test_unknown_relevant_item_counts_but_never_hits():
    # relevant {2, unknown}: |R| = 2; recommended [2, 0, 1] hits rank 1 only
    out = one([2, 0, 1], [2, -1], k=3)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["ndcg"] == pytest.approx(1 / (1 + L3))  # IDCG over 2 positions
    assert out["map"] == pytest.approx(1 / 2)


def test_k_truncates_and_repeats_count_once():
    # only the first k=2 columns are used: [1, 1] has one hit (repeat ignored)
    out = one([1, 1, 2], [1, 2], k=2)
    assert out["precision"] == pytest.approx(1 / 2)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["map"] == pytest.approx(1 / 2)  # precision@1 / min(2, 2)


def test_empty_relevant_users_excluded():
    # user 0: perfect; user 1: no relevant items (excluded); user 2: no hit
    indptr, items = csr([[4], [], [7]])
    out = ranking_metrics(torch.tensor([[4, 0], [1, 2], [0, 1]]), indptr, items, k=2)
    assert out["n_users"] == 2
    assert out["evaluated"].tolist() == [True, False, True]
    assert math.isnan(out["per_user"]["ndcg"][1])
    assert out["ndcg"] == pytest.approx(0.5)
    assert out["per_user"]["precision"][0] == pytest.approx(0.5)
    none = ranking_metrics(torch.tensor([[1, 2]]), [0, 0], [], k=2)
    assert none["n_users"] == 0 and math.isnan(none["precision"])


def test_numpy_and_torch_inputs_agree():
    rec = np.array([[3, 1, 2]])
    a = ranking_metrics(rec, np.array([0, 2]), np.array([1, 4]), 3)
    b = ranking_metrics(torch.tensor(rec), torch.tensor([0, 2]), torch.tensor([1, 4]), 3)
    assert a["ndcg"] == b["ndcg"]


def test_coverage():
    rec = torch.tensor([[0, 1, -1], [1, 2, -1]])
    assert coverage(rec, 10) == pytest.approx(0.3)  # {0, 1, 2} / 10
    assert coverage(rec, 10, k=1) == pytest.approx(0.2)  # {0, 1} / 10
    out = ranking_metrics(rec, [0, 1, 2], [0, 3], k=2, n_items_known=4)
    assert out["coverage"] == pytest.approx(3 / 4)


def test_rmse_mae():
    pred, target = [1.0, 2.0, 3.0], [1.0, 4.0, 0.0]
    assert rmse(pred, target) == pytest.approx(math.sqrt((0 + 4 + 9) / 3))
    assert mae(torch.tensor(pred), np.array(target)) == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="target"):
        rmse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="pred"):
        mae([], [])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"k": 0}, "k"),
        ({"k": 4}, "recommended"),
        ({"relevant_indptr": [0, 1]}, "relevant_indptr"),
        ({"relevant_indptr": [0, 3, 2]}, "relevant_indptr"),
        ({"relevant_items": [1, -2]}, "relevant_items"),
        ({"relevant_items": [1, 1]}, "relevant_items"),
        ({"recommended": [[0, 1, 9]]}, "n_items_known"),
        ({"n_items_known": 0}, "n_items_known"),
        ({"recommended": [[0.5, 1.0, 2.0]]}, "recommended"),
    ],
)
def test_bad_arguments(kwargs, param):
    args = {"recommended": [[0, 1, 2]], "relevant_indptr": [0, 2], "relevant_items": [1, 4], "k": 3}
    if kwargs.get("recommended") == [[0, 1, 9]]:
        args["n_items_known"] = 5
    args.update(kwargs)
    with pytest.raises(ValueError, match=param):
        ranking_metrics(**args)


# ---------------------------------------------------------------------- properties
@st.composite
def cases(draw):
    n_items = draw(st.integers(1, 12))
    n_users = draw(st.integers(1, 6))
    m = draw(st.integers(1, 8))
    k = draw(st.integers(1, m))
    item = st.integers(-1, n_items - 1)
    recs = [draw(st.lists(item, min_size=m, max_size=m)) for _ in range(n_users)]
    rels = []
    for _ in range(n_users):
        known = draw(st.lists(st.integers(0, n_items - 1), unique=True, max_size=n_items))
        rels.append(known + [-1] * draw(st.integers(0, 2)))
    return recs, rels, k


@settings(max_examples=200, deadline=None)
@given(cases())
def test_matches_reference(case):
    recs, rels, k = case
    indptr, items = csr(rels)
    out = ranking_metrics(torch.tensor(recs), indptr, items, k)
    ref = reference(recs, rels, k)
    evaluated = [r is not None for r in ref]
    assert out["evaluated"].tolist() == evaluated
    for name in NAMES:
        per_user = out["per_user"][name]
        for u, r in enumerate(ref):
            if r is None:
                assert math.isnan(per_user[u])
            else:
                assert per_user[u].item() == pytest.approx(r[name], abs=1e-6)
        vals = [r[name] for r in ref if r is not None]
        if vals:
            assert out[name] == pytest.approx(sum(vals) / len(vals), abs=1e-6)
        pu = per_user[out["evaluated"]]
        assert bool(((pu >= 0) & (pu <= 1)).all())  # precision <= 1, NDCG in [0, 1], ...


@settings(max_examples=60, deadline=None)
@given(cases())
def test_recall_monotone_in_k(case):
    recs, rels, _ = case
    indptr, items = csr(rels)
    rec = torch.tensor(recs)
    recalls = [ranking_metrics(rec, indptr, items, k)["per_user"]["recall"] for k in range(1, rec.shape[1] + 1)]
    for a, b in itertools.pairwise(recalls):
        ok = torch.isnan(a) | (b >= a - 1e-12)
        assert bool(ok.all())


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_perfect_ranking(data):
    n_items = data.draw(st.integers(1, 15))
    rel = data.draw(st.lists(st.integers(0, n_items - 1), unique=True, min_size=1, max_size=n_items))
    rest = [i for i in range(n_items) if i not in rel]
    rec = data.draw(st.permutations(rel)) + rest
    k = data.draw(st.integers(1, len(rec)))
    out = one(rec, rel, k)
    assert out["ndcg"] == pytest.approx(1.0)
    assert out["map"] == pytest.approx(1.0)
    assert out["precision"] <= 1.0
