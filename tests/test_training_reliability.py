"""Training never returns a silently broken model, and a seed gives bit-identical CPU fits for every loss."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import torchmf
from torchmf import MatrixFactorization, TorchMFError, TrainingError, solvers
from torchmf.training.monitor import BLOWUP, GROWTH_EPOCHS, Monitor, baseline_loss, divergence_cause


@pytest.fixture(scope="module")
def data():
    data, _ = torchmf.datasets.synthetic(n_users=120, n_items=60, n_interactions=2000, rank=3, seed=0)
    return data


def monitor(baseline=None):
    return Monitor(5, snapshot=lambda: None, restore=lambda s: None, baseline=baseline, verbose=False)


# ---------------------------------------------------------------------- divergence by growth
@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sparse_adam"])
def test_adaptive_optimizer_with_huge_lr_is_an_error(data, optimizer):
    # lr=1e3 keeps the loss finite but around 1e13 against 0.5 for the mean predictor (issue 15, item 10)
    model = MatrixFactorization(solver="sgd", optimizer=optimizer, lr=1e3, epochs=5, device="cpu", verbose=False)
    with pytest.raises(TrainingError, match=r"diverged at epoch 1 \(loss .* over 1000 times .* constant prediction"
                                            r"\); lower lr \(now 1000.0\)"):
        model.fit(data)


@pytest.mark.parametrize("loss", ["bpr", "logistic", "warp"])
def test_ranking_loss_with_huge_lr_is_an_error(data, loss):
    model = MatrixFactorization(loss=loss, optimizer="adam", lr=1e3, epochs=4, device="cpu", verbose=False)
    with pytest.raises(TrainingError, match="constant prediction"):
        model.fit(data)


def test_huge_value_is_named():
    # refused when read (torchmf.data.checks) or, failing that, named when training diverges
    with pytest.raises(TorchMFError, match=r"user 'a', item 'y'.*3e\+30|3e\+30 \(user 'a', item 'y'\)"):
        d = torchmf.Interactions.from_dict({"a": {"x": 1.0, "y": 3e30}, "b": {"x": 2.0, "z": 1.0}})
        MatrixFactorization(factors=2, epochs=3, device="cpu", verbose=False).fit(d)
    values = np.array([1.0, 3e30, 2.0], dtype=np.float32)
    cause = divergence_cause(values, lambda j: f"interaction {j}", {"loss": "mse"})
    assert cause == "value 3e+30 (interaction 1) is too large for float32 training; rescale the values"
    negative = divergence_cause(np.array([1.0, -2.0], np.float32), lambda j: f"#{j}", {"loss": "ials"})
    assert negative == "value -2 (#1) is negative; loss='ials' needs non-negative interaction strengths"
    assert divergence_cause(np.array([1.0, 2.0], np.float32), str, {"loss": "mse"}) is None


def test_monitor_rules():
    # over BLOWUP x the baseline
    with pytest.raises(TrainingError, match="constant prediction"):
        monitor(baseline=0.5).end_epoch(1, 0.5 * BLOWUP * 1.01)
    # over BLOWUP x the first epoch's loss, without a baseline
    m = monitor()
    m.end_epoch(1, 2.0)
    with pytest.raises(TrainingError, match="first epoch's"):
        m.end_epoch(2, 2.0 * BLOWUP * 1.01)
    # growing GROWTH_EPOCHS epochs in a row above the baseline
    m = monitor(baseline=1.0)
    losses = [1.5 + e for e in range(GROWTH_EPOCHS)]
    for epoch, loss in enumerate(losses, 1):
        m.end_epoch(epoch, loss)
    with pytest.raises(TrainingError, match=f"grew {GROWTH_EPOCHS} epochs in a row"):
        m.end_epoch(GROWTH_EPOCHS + 1, losses[-1] + 1)
    # growth below the baseline, or interrupted, is fine
    m = monitor(baseline=10.0)
    for epoch, loss in enumerate([1, 2, 3, 4, 5], 1):
        assert m.end_epoch(epoch, float(loss)) is False
    with pytest.raises(TrainingError, match="loss is nan"):
        m.end_epoch(6, float("nan"))


def test_fit_ending_worse_than_constant_warns(caplog):
    m = monitor(baseline=1.0)
    m.end_epoch(1, 3.0)
    with caplog.at_level(logging.WARNING, logger="torchmf.training.monitor"):
        m.finish()
    assert "ended above" in caplog.text


def test_baselines():
    values = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    # mean predictor: half the variance (the solvers report half squared error per rating)
    assert baseline_loss(values, {"loss": "mse"}, 10, ranking=False) == pytest.approx(0.5 * 1.25)
    # zero scores: BPR pays log 2 per negative; WARP log(n_items) (rank n_items - 1)
    assert baseline_loss(values, {"loss": "bpr", "negatives": 3}, 10, ranking=True) == pytest.approx(3 * np.log(2))
    assert baseline_loss(values, {"loss": "warp", "negatives": 5}, 10, ranking=True) == pytest.approx(np.log(10))
    assert baseline_loss(values, {"loss": "ials", "negatives": 0}, 10, ranking=True) is None


# ---------------------------------------------------------------------- reproducibility
@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite runs on one; fits must be reproducible with several
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("loss", solvers.losses())
def test_every_loss_is_bit_reproducible_on_the_cpu(data, loss, two_threads):
    if solvers.is_ranking_loss(loss):
        data, _ = torchmf.datasets.synthetic(n_users=120, n_items=60, n_interactions=2000, implicit=True, seed=0)
    fits = []
    for _ in range(8):
        m = MatrixFactorization(loss=loss, factors=8, epochs=3, seed=0, device="cpu", verbose=False).fit(data)
        fits.append(np.concatenate([m.user_factors.ravel(), m.item_factors.ravel()]))
    for other in fits[1:]:
        np.testing.assert_array_equal(other, fits[0])
