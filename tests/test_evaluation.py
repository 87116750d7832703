"""``evaluate``, ``cross_validate`` and ``grid_search`` against hand-worked values.

The model in the evaluate tests is built by hand (one factor, no biases) so
every ranking is known: user vectors are [1], item vectors [4, 3, 2, 1], so
both users rank items i0 > i1 > i2 > i3; u0 saw i0 in training.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import torchmf
from torchmf import Interactions, MatrixFactorization
from torchmf.data.idmap import IdMap
from torchmf.estimator import ModelState


@pytest.fixture
def hand_model() -> MatrixFactorization:
    params = MatrixFactorization(loss="ials", factors=1, verbose=False).get_params()
    effective = MatrixFactorization(loss="ials", factors=1, verbose=False).effective_params
    state = ModelState(
        params=params, effective_params=effective,
        tensors={"user_embs.weight": torch.ones(2, 1), "item_embs.weight": torch.tensor([[4.0], [3.0], [2.0], [1.0]])},
        user_map=IdMap(["u0", "u1"], "user"), item_map=IdMap(["i0", "i1", "i2", "i3"], "item"),
        seen_indptr=np.array([0, 1, 1]), seen_indices=np.array([0]), seen_values=np.ones(1, np.float32),
        rating_range=(1.0, 1.0), implicit=True,
    )
    return MatrixFactorization.from_state(state)


def _test(rows: list[tuple[str, str, float]]) -> Interactions:
    return Interactions.from_pandas(pd.DataFrame(rows, columns=["u", "i", "r"]), "u", "i", "r")


NDCG_RANK1 = 1 / (1 + 1 / math.log2(3))  # one hit at rank 1 of 2 relevant, k = 2: DCG 1, IDCG 1 + 1/log2(3)
NDCG_RANK2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))  # one hit at rank 2 of 2 relevant


def test_evaluate_hand_worked(hand_model) -> None:
    # u0: top 2 without the seen i0 is [i1, i2]; relevant {i1, i3} -> one hit at rank 1
    out = evaluate(hand_model, _test([("u0", "i1", 2.0), ("u0", "i3", 5.0)]), k=2)
    assert out["ndcg@2"] == pytest.approx(NDCG_RANK1)
    assert out["precision@2"] == pytest.approx(0.5) and out["recall@2"] == pytest.approx(0.5)
    assert out["mrr@2"] == pytest.approx(1.0) and out["hit_rate@2"] == 1.0
    assert out["users_evaluated"] == 1 and out["users_skipped"] == 0
    assert "rmse" not in out  # a ranking model has no ratings to score


def test_evaluate_train_exclusion(hand_model) -> None:
    # train= also excludes i1 for u0: the list becomes [i2, i3], the hit i3 moves to rank 2
    train = _test([("u0", "i1", 1.0)])
    out = evaluate(hand_model, _test([("u0", "i1", 2.0), ("u0", "i3", 5.0)]), train=train, k=2)
    assert out["ndcg@2"] == pytest.approx(NDCG_RANK2)
    assert out["mrr@2"] == pytest.approx(0.5)


def test_evaluate_threshold(hand_model) -> None:
    # threshold 4 keeps only (u0, i3, 5): the list [i1, i2] has no hit
    out = evaluate(hand_model, _test([("u0", "i1", 2.0), ("u0", "i3", 5.0)]), k=2, threshold=4)
    assert out["ndcg@2"] == 0.0 and out["recall@2"] == 0.0 and out["users_evaluated"] == 1


def test_evaluate_skipped_users_and_unknown_items(hand_model) -> None:
    # 'zz' is unknown (skipped); u1's 'new' item is unknown: it counts in recall's denominator, never hit
    test = _test([("zz", "i1", 1.0), ("u1", "i0", 1.0), ("u1", "new", 1.0)])
    out = evaluate(hand_model, test, k=2, per_user=True)
    assert out["users_skipped"] == 1 and out["users_evaluated"] == 1 and out["test_items_unknown"] == 1
    assert out["recall@2"] == pytest.approx(0.5)  # u1's list [i0, i1] hits i0, 1 of 2 relevant
    assert out["ndcg@2"] == pytest.approx(NDCG_RANK1)
    assert list(out["per_user"]["user"]) == ["u1"]


@pytest.fixture(scope="module")
def small() -> Interactions:
    data, _ = torchmf.datasets.synthetic(n_users=40, n_items=30, n_interactions=600, rank=2, noise=0.1, seed=3)
    return data


def test_cross_validate_folds_and_estimator_untouched(small) -> None:
    est = MatrixFactorization(factors=2, epochs=2, verbose=False, device="cpu")
    before = est.get_params()
    res = torchmf.cross_validate(est, small, folds=3, seed=0)
    assert list(res["folds"].index) == [1, 2, 3] and len(res["histories"]) == 3
    assert res["mean"]["rmse"] == pytest.approx(res["folds"]["rmse"].mean())
    assert est.get_params() == before
    with pytest.raises(torchmf.NotFittedError):  # the estimator passed in was never fitted
        est.model  # noqa: B018


def test_grid_search_tries_every_candidate_best_first(small) -> None:
    est = MatrixFactorization(factors=2, epochs=2, verbose=False, device="cpu")
    table = torchmf.grid_search(est, small, {"reg": [0.01, 0.5], "factors": [1, 2]}, patience=None)
    assert len(table) == 4
    assert set(zip(table["reg"], table["factors"], strict=True)) == {(0.01, 1), (0.01, 2), (0.5, 1), (0.5, 2)}
    assert list(table["rmse"]) == sorted(table["rmse"])  # best (lowest RMSE) first
    assert est.get_params()["reg"] is None


evaluate = torchmf.evaluate
