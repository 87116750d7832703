"""One contract every registered solver passes, and a solver registered from outside the package.

The contract is parametrised over the registry itself, so a new solver is
tested the moment its ``register`` line exists.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import torchmf
from torchmf import solvers
from torchmf.solvers import base as registry

NONE_OK = ("early_stopping", "batch_size")
PAIRS = [(loss, name) for loss in solvers.losses() for name in solvers.solvers_for(loss)]


@pytest.fixture(scope="module")
def data():
    # planted rank-3 ratings: small enough for every solver to fit in well under a second
    inter, _ = torchmf.datasets.synthetic(n_users=60, n_items=40, n_interactions=1200, rank=3, noise=0.1, seed=1)
    return inter


def _fit(loss: str, solver: str, data, **kw: Any) -> torchmf.MatrixFactorization:
    return torchmf.MatrixFactorization(
        loss=loss, solver=solver, factors=4, epochs=3, seed=0, verbose=False, device="cpu", **kw
    ).fit(data)


@pytest.mark.parametrize(("loss", "solver"), PAIRS, ids=[f"{lo}-{s}" for lo, s in PAIRS])
def test_solver_contract(loss: str, solver: str, data, tmp_path) -> None:
    cls = solvers.get_solver(loss, solver)
    assert isinstance(cls, type) and cls.name == solver and loss in cls.losses
    model = _fit(loss, solver, data)
    # one history row per epoch, finite losses
    assert [row["epoch"] for row in model.history_] == [1, 2, 3]
    assert all(np.isfinite(row["train_loss"]) for row in model.history_)
    # every None hyperparameter resolved; the solver's name recorded
    hp = model.effective_params
    # (early_stopping None means off; batch_size only applies to minibatch solvers, which resolve it at fit)
    assert hp["solver"] == solver and all(v is not None for k, v in hp.items() if k not in NONE_OK)
    if solver == "sgd":
        assert hp["batch_size"] > 0
    # same seed on the CPU -> same predictions, bit for bit
    users, items = data.user_map.raw(data.users[:50]), data.item_map.raw(data.items[:50])
    np.testing.assert_array_equal(model.predict(users, items), _fit(loss, solver, data).predict(users, items))
    # ranking models are not clipped to the rating range; rating models are
    assert model.is_ranking == cls.ranking
    # recommend never returns a seen item; fold-in and visitors give rows of the right width
    user = data.user_map.raw(np.array([0]))[0]
    seen = set(model.item_map.raw(model.seen_items(0)))
    recs = model.recommend(user, k=5)
    assert len(recs) == 5 and not seen & set(recs["item"])
    history = {it: 4.0 for it in list(seen)[:5]}
    visitor = model.recommend_for(history, k=5)
    assert len(visitor) == 5 and not set(history) & set(visitor["item"])
    # save / load round trip
    model.save(tmp_path / "m")
    again = torchmf.load(tmp_path / "m", device="cpu")
    np.testing.assert_array_equal(again.predict(users, items), model.predict(users, items))


class MeanSolver:
    """A toy solver: biases only (item means of the residuals), factors left at zero."""

    name: ClassVar[str] = "toy-mean"
    losses: ClassVar[tuple[str, ...]] = ("mse",)
    ranking: ClassVar[bool] = False
    defaults: ClassVar[dict[str, dict[str, Any]]] = {"mse": {"epochs": 1, "reg": 0.0, "reg_exponent": 1.0,
                                                               "biases": True}}

    def __init__(self, model, data, hp, device) -> None:
        self.model = model
        self.items = torch.as_tensor(data.items, device=device)
        self.values = torch.as_tensor(data.values, device=device)

    def epoch(self) -> float:
        m = self.model
        m.user_embs.weight.zero_()
        m.item_embs.weight.zero_()
        resid = self.values - m.global_bias
        sums = torch.zeros(m.num_items, device=resid.device).index_add_(0, self.items, resid)
        counts = torch.bincount(self.items, minlength=m.num_items).clamp_min(1)
        m.item_bias.weight[:, 0] = sums / counts
        err = resid - m.item_bias.weight[self.items, 0]
        return float(0.5 * err.pow(2).mean())

    def divergence_hint(self) -> str:
        return "nothing to tune"

    def finish(self) -> None:
        pass

    @classmethod
    def fold_in(cls, model, items, values, hp, item_counts):
        return torch.zeros(model.embedding_dim + 1, device=items.device)


def test_solver_registered_from_outside(monkeypatch, data, tmp_path) -> None:
    # a private copy of the registry so the toy does not leak into other tests
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DEFAULT", dict(registry._DEFAULT))
    solvers.register(MeanSolver)
    assert "toy-mean" in solvers.solvers_for("mse")
    model = torchmf.MatrixFactorization(solver="toy-mean", verbose=False, device="cpu").fit(data)
    assert model.effective_params["solver"] == "toy-mean" and len(model.history_) == 1
    # its predictions are the global mean plus the item's mean residual (hand-computed here)
    item = data.item_map.raw(np.array([3]))[0]
    user = data.user_map.raw(np.array([0]))[0]
    mu = float(np.mean(data.values))
    expected = float(np.mean(data.values[data.items == 3]) - mu + mu)
    lo, hi = data.rating_range()
    assert model.predict(user, item) == pytest.approx(min(max(expected, lo), hi), abs=1e-5)
    model.save(tmp_path / "toy")
    again = torchmf.load(tmp_path / "toy", device="cpu")
    assert again.predict(user, item) == pytest.approx(model.predict(user, item))
    assert again.effective_params["solver"] == "toy-mean"


def test_registry_rejects_incomplete_solvers() -> None:
    class NoDefaults:
        name = "broken"
        losses = ("mse",)
        ranking = False
        defaults: ClassVar[dict] = {}

    with pytest.raises(TypeError, match="no defaults"):
        solvers.register(NoDefaults)
    with pytest.raises(ValueError, match="cannot be trained with solver='sgd'"):
        solvers.get_solver("ials", "sgd")
