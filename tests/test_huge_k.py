"""A cut-off ``k`` beyond the catalogue is clamped to it: no (users x k) allocation, same metrics."""

from __future__ import annotations

import logging

import pytest

import torchmf
from torchmf import MatrixFactorization
from torchmf.cli.main import main
from torchmf.evaluation import evaluate
from torchmf.metrics import ranking_metrics


@pytest.fixture(scope="module")
def fitted():
    data, _ = torchmf.datasets.synthetic(n_users=40, n_items=25, n_interactions=400, rank=2, seed=3)
    train, test = torchmf.split.random_split(data, test_fraction=0.2, seed=0)
    return MatrixFactorization(factors=3, epochs=3, device="cpu", verbose=False).fit(train), test


def test_top_k_and_recommend_clamp(fitted):
    model, _ = fitted
    items, scores = model.top_k(model.user_map.indices(model.user_map.ids[:3]), 10**9)
    assert items.shape == scores.shape == (3, 25)
    assert len(model.recommend(model.user_map.ids[0], k=10**9)) <= 25


def test_evaluate_with_huge_k_matches_the_catalogue_cut_off(fitted):
    model, test = fitted
    huge, whole = evaluate(model, test, k=10**9), evaluate(model, test, k=25)
    # past the 25-item catalogue every further position is padding: recall, NDCG, MAP, MRR and hit rate
    # are those of k=25; precision divides by k, which is not reduced (metrics.ranking_metrics' definition)
    for name in ("recall", "ndcg", "map", "mrr", "hit_rate"):
        assert huge[f"{name}@{10**9}"] == pytest.approx(whole[f"{name}@25"])
    assert huge[f"precision@{10**9}"] == pytest.approx(whole["precision@25"] * 25 / 10**9)


def test_ranking_metrics_needs_k_columns_unless_the_catalogue_is_covered():
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics([[0, 1]], [0, 1], [1], k=5)
    out = ranking_metrics([[0, 1]], [0, 1], [1], k=5, n_items_known=2)
    assert out["recall"] == 1.0 and out["precision"] == pytest.approx(1 / 5)


@pytest.fixture
def cli_logging():
    """main() configures the "torchmf" logger for a terminal; put it back for the tests that follow."""
    logger = logging.getLogger("torchmf")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers, logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def test_cli_recommend_with_huge_k(fitted, tmp_path, capsys, cli_logging):
    model, _ = fitted
    model.save(tmp_path / "m")
    assert main(["recommend", str(tmp_path / "m"), "--user", str(model.user_map.ids[0]), "-k", "1000000000"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 2  # a header and at least one item
