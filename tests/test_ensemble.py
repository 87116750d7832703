"""estimator.ensemble.average_models: the mean of fitted MF models as one MF model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import torchmf
from torchmf.estimator.ensemble import average_models


@pytest.fixture(scope="module")
def plays() -> torchmf.Interactions:
    return torchmf.datasets.synthetic(n_users=50, n_items=30, n_interactions=600, rank=3, implicit=True, seed=3)[0]


@pytest.fixture(scope="module")
def ratings() -> torchmf.Interactions:
    return torchmf.datasets.synthetic(n_users=50, n_items=30, n_interactions=800, rank=3, seed=4)[0]


def _pairs(data: torchmf.Interactions) -> tuple[np.ndarray, np.ndarray]:
    return data.user_map.raw(data.users[:40]), data.item_map.raw(data.items[:40])


def test_scores_are_the_mean(plays: torchmf.Interactions, tmp_path: Path) -> None:
    models = [torchmf.MatrixFactorization(loss="ials", factors=f, epochs=4, seed=s).fit(plays)
              for f, s in ((4, 0), (6, 1), (3, 2))]
    avg = average_models(models)
    users, items = _pairs(plays)
    mean = np.mean([m.predict(users, items) for m in models], axis=0)
    np.testing.assert_allclose(avg.predict(users, items), mean, rtol=1e-5, atol=1e-6)
    assert avg.effective_params["factors"] == avg.get_params()["factors"] == 13
    assert avg.effective_params["reg"] == models[0].effective_params["reg"]
    # recommend filters the seen items itself, as for any model, and ranks by the mean score
    user = users[0]
    recs = avg.recommend(user, k=5)
    seen = set(plays.item_map.raw(plays.items[plays.users == plays.users[0]]))
    assert not seen & set(recs["item"])
    # a plain MF model on disk: saved and loaded, it predicts the same
    avg.save(tmp_path / "avg")
    back = torchmf.MatrixFactorization.load(tmp_path / "avg")
    np.testing.assert_allclose(back.predict(users, items), mean, rtol=1e-5, atol=1e-6)
    # the members are not changed
    np.testing.assert_allclose(models[0].predict(users, items),
                               torchmf.MatrixFactorization(loss="ials", factors=4, epochs=4, seed=0).fit(plays)
                               .predict(users, items))


def test_biases_are_averaged(ratings: torchmf.Interactions) -> None:
    models = [torchmf.MatrixFactorization(factors=4, epochs=3, reg=r, rank_by="scores", seed=0).fit(ratings)
              for r in (0.05, 0.5)]
    assert models[0]._model.biases
    users, items = _pairs(ratings)
    np.testing.assert_allclose(average_models(models).predict(users, items),
                               np.mean([m.predict(users, items) for m in models], axis=0), rtol=1e-5, atol=1e-5)


def test_one_model_is_a_copy(plays: torchmf.Interactions) -> None:
    model = torchmf.MatrixFactorization(loss="ials", factors=4, epochs=2).fit(plays)
    copy = average_models([model])
    assert copy is not model and copy._model is not model._model
    users, items = _pairs(plays)
    np.testing.assert_allclose(copy.predict(users, items), model.predict(users, items), rtol=1e-6)


def test_models_that_do_not_fit_together(plays: torchmf.Interactions, ratings: torchmf.Interactions) -> None:
    fitted = torchmf.MatrixFactorization(loss="ials", factors=4, epochs=2).fit(plays)
    with pytest.raises(ValueError, match="at least one"):
        average_models([])
    with pytest.raises(ValueError, match="model 1 is not fitted"):
        average_models([fitted, torchmf.MatrixFactorization(loss="ials")])
    fewer = plays.subset(plays.users != plays.users[0])  # one user less
    other = torchmf.MatrixFactorization(loss="ials", factors=4, epochs=2).fit(fewer)
    with pytest.raises(ValueError, match="model 1 was fitted on other user or item ids"):
        average_models([fitted, other])
    explicit = torchmf.MatrixFactorization(factors=4, epochs=2, rank_by="scores").fit(ratings)
    with pytest.raises(ValueError, match="model 1 has another loss"):
        average_models([explicit, torchmf.MatrixFactorization(loss="ials", factors=4, epochs=2).fit(ratings)])
    # the default explicit model ranks by a second, interaction model: not one dot product
    with pytest.raises(ValueError, match=r"model 0 \(als, rank_by='interactions'\)"):
        average_models([torchmf.MatrixFactorization(factors=4, epochs=2).fit(ratings)])
    gibbs = torchmf.MatrixFactorization(solver="gibbs", samples=4, burn_in=2, factors=3).fit(ratings)
    with pytest.raises(ValueError, match=r"model 0 \(gibbs"):
        average_models([gibbs, explicit])


def test_partial_fit_treats_it_as_one_model(plays: torchmf.Interactions) -> None:
    models = [torchmf.MatrixFactorization(loss="ials", factors=f, epochs=3, seed=0).fit(plays) for f in (3, 5)]
    avg = average_models(models)
    new = torchmf.Interactions.from_arrays(np.array(["new user", "new user"], dtype=object),
                                           plays.item_map.raw(np.array([0, 1])))
    avg.partial_fit(new)
    scores = avg.predict(np.array(["new user"] * 3, dtype=object), plays.item_map.raw(np.array([0, 1, 2])))
    assert np.isfinite(scores).all() and avg._model.user_embs.weight.shape[1] == 8
    assert "new user" in set(avg.user_map.ids)
