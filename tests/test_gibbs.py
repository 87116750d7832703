"""Gibbs sampler for Bayesian MF: conditionals, the concatenated-sample layout, determinism, recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchmf
from torchmf import MatrixFactorization
from torchmf.solvers.gibbs import GibbsSampler, draw_rows, gibbs_fit, posterior_std
from torchmf.solvers.gibbs_draws import normal_gamma
from torchmf.solvers.gibbs_features import implicit_block

CPU = torch.device("cpu")


def _low_rank(n_users: int = 60, n_items: int = 50, rank: int = 3, density: float = 0.4, noise: float = 0.3,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ratings ``3 + p.q + noise`` on a random subset; returns users, items, values, noiseless truth."""
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 0.7, (n_users, rank))
    q = rng.normal(0, 0.7, (n_items, rank))
    truth = 3.0 + p @ q.T
    mask = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(mask)
    vals = truth[u, i] + rng.normal(0, noise, len(u))
    return u.astype(np.int64), i.astype(np.int64), vals.astype(np.float32), truth


def _predict(res: dict[str, torch.Tensor], u: np.ndarray, i: np.ndarray) -> np.ndarray:
    ue, ie = res["user_embs.weight"][u], res["item_embs.weight"][i]
    out = (ue * ie).sum(1) + res["user_bias.weight"][u, 0] + res["item_bias.weight"][i, 0] + res["global_bias"]
    return out.numpy()


def test_draw_rows_matches_the_gaussian_conditional() -> None:
    # expected moments computed densely: P = alpha G + diag(lam), mean = P^-1 (alpha h + lam prior), cov = P^-1
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
    gram = a.transpose(1, 2) @ a
    h = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    prior = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    lam = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    alpha = 1.5
    n = 20000
    draws = draw_rows(gram.repeat(n, 1, 1), h.repeat(n, 1), prior.repeat(n, 1), lam, alpha, gen).reshape(n, 3, 3)
    prec = alpha * gram + torch.diag(lam)
    cov = torch.linalg.inv(prec)
    mean = (cov @ (alpha * h + lam * prior).unsqueeze(2)).squeeze(2)
    centred = draws - draws.mean(0)
    emp_cov = torch.einsum("nbi,nbj->bij", centred, centred) / n
    # Monte-Carlo error of a mean is sd / sqrt(n) <= ~0.01 here; tolerances are several of those
    assert torch.allclose(draws.mean(0), mean, atol=0.03)
    assert torch.allclose(emp_cov, cov, atol=0.03)


def test_normal_gamma_recovers_mean_and_precision() -> None:
    # 20000 rows from N(2, 1/16): the posterior concentrates at mu = 2, lam = 16 (sd of lam ~ 16 * sqrt(2/n))
    gen = torch.Generator().manual_seed(0)
    x = 2.0 + torch.randn(20000, 2, generator=gen) / 4.0
    mu, lam = normal_gamma(x, gen)
    assert torch.allclose(mu, torch.full((2,), 2.0), atol=0.01)
    assert torch.allclose(lam, torch.full((2,), 16.0), rtol=0.05)


def test_implicit_weights_draw_matches_dense_posterior() -> None:
    # W | rows: precision lam X^T X + lam_w I, mean P^-1 (lam X^T dev + lam_w mu_w), computed densely here
    rows = np.array([0, 0, 1, 2, 2, 2, 3])
    cols = np.array([0, 1, 1, 0, 2, 3, 3])
    block = implicit_block(rows, cols, 4, 4, CPU, torch.float64)
    x = block.x.to_dense()
    assert torch.allclose(x.square().sum(1), torch.ones(4, dtype=torch.float64))  # rows normalised by 1/sqrt(deg)
    gen = torch.Generator().manual_seed(3)
    dev = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    lam = torch.tensor([2.0, 0.5], dtype=torch.float64)
    mu_w = torch.tensor([0.1, -0.2], dtype=torch.float64)
    lam_w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    n = 6000
    draws = torch.stack([block.sample_weights(dev, lam, torch.zeros(4, 2, dtype=torch.float64), mu_w, lam_w, gen)
                         for _ in range(n)])
    for f in range(2):
        prec = lam[f] * x.T @ x + lam_w[f] * torch.eye(4, dtype=torch.float64)
        cov = torch.linalg.inv(prec)
        mean = cov @ (lam[f] * x.T @ dev[:, f] + lam_w[f] * mu_w[f])
        c = draws[:, :, f] - draws[:, :, f].mean(0)
        # Monte-Carlo error ~ sd / sqrt(6000) ~ 0.013 for sd <= 1
        assert torch.allclose(draws[:, :, f].mean(0), mean, atol=0.05)
        assert torch.allclose(c.T @ c / n, cov, atol=0.05)


def test_posterior_std_reshapes_the_concatenated_samples() -> None:
    gen = torch.Generator().manual_seed(0)
    s, k, b = 7, 4, 5
    pu = torch.randn(s, b, k, generator=gen, dtype=torch.float64)
    qi = torch.randn(s, b, k, generator=gen, dtype=torch.float64)
    per_sample = (pu * qi).sum(2)  # (S, B)
    u = pu.permute(1, 0, 2).reshape(b, s * k) / s**0.5
    i = qi.permute(1, 0, 2).reshape(b, s * k) / s**0.5
    assert torch.allclose((u * i).sum(1), per_sample.mean(0))  # the concatenation trick
    assert torch.allclose(posterior_std(u, i, s), per_sample.std(0, unbiased=False))
    assert torch.allclose(posterior_std(u, i, s, noise_var=0.5), (per_sample.var(0, unbiased=False) + 0.5).sqrt())
    with pytest.raises(ValueError, match="samples=3"):
        posterior_std(u[:, :-2], i[:, :-2], 3)


def test_result_averages_the_kept_samples_exactly() -> None:
    u, i, v, _ = _low_rank(n_users=20, n_items=15)
    chain = GibbsSampler(u, i, v, 20, 15, 3, torch.Generator().manual_seed(0), CPU)
    preds = []
    for _ in range(4):
        chain.sweep()
        chain.keep()
        cur = chain.current()
        preds.append(_predict(cur, u, i))
    res = chain.result()
    assert res["user_embs.weight"].shape == (20, 4 * 3) and res["item_embs.weight"].shape == (15, 4 * 3)
    np.testing.assert_allclose(_predict(res, u, i), np.mean(preds, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("implicit", "robust"), [(False, False), (False, True), (True, True)])
def test_fit_is_reproducible_and_recovers_low_rank_ratings(implicit: bool, robust: bool) -> None:
    u, i, v, truth = _low_rank()
    fit = lambda seed: gibbs_fit(u, i, v, 60, 50, 3, samples=30, burn_in=20,  # noqa: E731
                                 generator=torch.Generator().manual_seed(seed), device=CPU, implicit_features=implicit,
                                 robust=robust)
    a, b, c = fit(0), fit(0), fit(1)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["user_embs.weight"], c["user_embs.weight"])
    # held-out cells: error against the noiseless truth well under the spread of the truth itself
    mask = np.ones_like(truth, dtype=bool)
    mask[u, i] = False
    hu, hi = np.nonzero(mask)
    rmse = np.sqrt(np.mean((_predict(a, hu, hi) - truth[hu, hi]) ** 2))
    assert rmse < 0.5 * truth[hu, hi].std()
    if not robust:  # with robust noise alpha is shared with the per-row scales
        assert float(a["noise_precision"]) == pytest.approx(1 / 0.3**2, rel=0.35)  # data noise sd 0.3


def test_rows_without_ratings_are_drawn_from_the_prior() -> None:
    u, i, v, _ = _low_rank(n_users=10, n_items=8)
    keep = u != 4  # user 4 rates nothing
    res = gibbs_fit(u[keep], i[keep], v[keep], 10, 9, 2, samples=5, burn_in=2,  # item 8 is never rated
                    generator=torch.Generator().manual_seed(0), device=CPU, implicit_features=True)
    for t in res.values():
        assert torch.isfinite(t).all()


def test_bad_chain_lengths_are_rejected() -> None:
    u, i, v, _ = _low_rank(n_users=5, n_items=5)
    with pytest.raises(ValueError, match="samples >= 1"):
        gibbs_fit(u, i, v, 5, 5, 2, samples=0, burn_in=0, generator=torch.Generator(), device=CPU)


# ---------------------------------------------------------------- through the estimator (solver registry)
@pytest.fixture(scope="module")
def gibbs_data():
    from torchmf.data import Interactions

    u, i, v, _ = _low_rank(n_users=40, n_items=30, density=0.5)
    return Interactions.from_arrays([f"u{x}" for x in u], [f"i{x}" for x in i], np.round(v).clip(1, 5))


@pytest.fixture(scope="module")
def gibbs_model(gibbs_data):
    from torchmf import MatrixFactorization

    return MatrixFactorization(solver="gibbs", factors=3, samples=6, burn_in=4, thin=1, implicit_features=True,
                               verbose=False).fit(gibbs_data)


def test_estimator_fits_the_posterior_mean_layout(gibbs_model, gibbs_data) -> None:
    hp = gibbs_model.effective_params
    assert (hp["solver"], hp["factors"], hp["samples"], hp["burn_in"], hp["epochs"]) == ("gibbs", 3, 6, 4, 10)
    assert gibbs_model.user_factors.shape == (40, 18) and gibbs_model.item_factors.shape == (30, 18)
    extras = gibbs_model.extras_
    assert {k: extras[k] for k in ("embedding_dim", "samples", "rank")} == {
        "embedding_dim": 18, "samples": 6, "rank": 3,
    }
    assert "ranker" in extras  # rating models rank by an interaction component by default (rank_by)
    assert len(gibbs_model.history_) == 10
    users, items = gibbs_data.user_map.raw(gibbs_data.users), gibbs_data.item_map.raw(gibbs_data.items)
    pred = gibbs_model.predict(users, items)
    # fits the training ratings far better than their spread (rank-3 data, 50% observed)
    assert np.sqrt(np.mean((pred - gibbs_data.values) ** 2)) < 0.6 * gibbs_data.values.std()
    recs = gibbs_model.recommend("u0", k=5)
    assert len(recs) == 5


def test_estimator_defaults_and_validation() -> None:
    from torchmf import MatrixFactorization

    hp = MatrixFactorization(solver="gibbs").effective_params
    got = (hp["factors"], hp["samples"], hp["burn_in"], hp["thin"], hp["implicit_features"])
    assert got == (10, 200, 100, 2, False)
    assert MatrixFactorization().effective_params["factors"] == 48  # other solvers keep the shared default
    with pytest.raises(ValueError, match="implicit_features=True needs solver='gibbs'"):
        MatrixFactorization(implicit_features=True)
    with pytest.raises(ValueError, match="samples"):
        MatrixFactorization(solver="gibbs", samples=0)
    with pytest.raises(ValueError, match="burn_in"):
        MatrixFactorization(solver="gibbs", burn_in=-1)
    with pytest.raises(ValueError, match="thin"):
        MatrixFactorization(solver="gibbs", thin=0)


def test_estimator_rejects_gibbs_without_biases(gibbs_data) -> None:
    from torchmf import MatrixFactorization

    with pytest.raises(ValueError, match="always samples biases"):
        MatrixFactorization(solver="gibbs", biases=False, samples=2, burn_in=0, verbose=False).fit(gibbs_data)


def test_save_load_and_posterior_std_through_the_state(gibbs_model, gibbs_data, tmp_path) -> None:
    from torchmf import MatrixFactorization

    gibbs_model.save(tmp_path / "m")
    back = MatrixFactorization.load(tmp_path / "m", device="cpu")
    users, items = ["u0", "u1", "u2"], ["i0", "i5", "i7"]
    np.testing.assert_allclose(back.predict(users, items), gibbs_model.predict(users, items), rtol=1e-6)
    assert back.extras_["samples"] == 6
    m = back.model
    u = m.user_embs.weight[back.user_map.indices(np.array(users))]
    i = m.item_embs.weight[back.item_map.indices(np.array(items))]
    std = posterior_std(u, i, back.extras_["samples"])
    assert std.shape == (3,) and bool((std > 0).all())


def test_fold_in_matches_a_trained_user_roughly(gibbs_model, gibbs_data) -> None:
    # a user folded in from u0's own ratings should score u0's items close to u0's fitted scores
    rated = gibbs_data.items[gibbs_data.users == gibbs_data.user_map.indices(np.array(["u0"]))[0]]
    vals = gibbs_data.values[gibbs_data.users == gibbs_data.user_map.indices(np.array(["u0"]))[0]]
    raw = gibbs_data.item_map.raw(rated)
    recs = gibbs_model.recommend_for(dict(zip(raw, vals, strict=True)), k=3, exclude_seen=False)
    assert len(recs) == 3
    gibbs_model.fold_in("visitor", dict(zip(raw, vals, strict=True)))
    diff = gibbs_model.predict(["visitor"] * len(raw), raw) - gibbs_model.predict(["u0"] * len(raw), raw)
    assert np.abs(diff).mean() < 0.5


def test_validation_history_and_early_stop_during_burn_in(gibbs_data) -> None:
    from torchmf import MatrixFactorization

    # early_stopping=1 on a 1-sweep-patience chain may stop in burn-in: the current sample is kept then
    m = MatrixFactorization(solver="gibbs", factors=2, samples=3, burn_in=3, early_stopping=1, verbose=False)
    m.fit(gibbs_data, validation=gibbs_data)
    assert "val_rmse" in m.history_[0] and m.effective_params["epochs"] == 3 + 3 * 2  # thin 2 by default
    s = m.extras_["samples"]
    assert 1 <= s <= 3 and m.user_factors.shape[1] == 2 * s == m.extras_["embedding_dim"]


def test_cli_trains_a_gibbs_model(tmp_path) -> None:
    import torchmf
    from torchmf.cli.main import main

    u, i, v, _ = _low_rank(n_users=15, n_items=12, density=0.6)
    src = tmp_path / "r.csv"
    src.write_text("".join(f"{a},{b},{int(np.clip(np.rint(c), 1, 5))}\n" for a, b, c in zip(u, i, v, strict=True)))
    out = tmp_path / "model"
    rc = main(["train", str(src), "-o", str(out), "--solver", "gibbs", "--factors", "2", "--samples", "3",
               "--burn-in", "1", "--implicit-features"])
    assert rc == 0
    back = torchmf.load(out, device="cpu")
    assert back.effective_params["implicit_features"] is True and back.extras_["samples"] == 3


def test_explain_falls_back_to_item_similarity(gibbs_model) -> None:
    # Gibbs rows are averages of posterior draws, not one ridge solve: explain uses the q_i . q_j fallback
    out = gibbs_model.explain("u0", "i1", k=3)
    assert len(out) == 3 and np.isfinite(out["contribution"]).all()


def test_predict_return_std_through_the_facade() -> None:
    # the facade's std is posterior_std over the stored samples; a non-Gibbs model refuses
    data, _ = torchmf.datasets.synthetic(n_users=30, n_items=20, n_interactions=300, rank=2, noise=0.1, seed=4)
    model = MatrixFactorization(solver="gibbs", samples=5, burn_in=3, thin=1, verbose=False, device="cpu").fit(data)
    users, items = data.user_map.raw(data.users[:10]), data.item_map.raw(data.items[:10])
    mean, std = model.predict(users, items, return_std=True)
    np.testing.assert_array_equal(mean, model.predict(users, items))
    assert std.shape == (10,) and np.all(std >= 0)
    one = model.predict(users[0], items[0], return_std=True)
    assert one[1] == pytest.approx(float(std[0]))
    _, fallback_std = model.predict([users[0]], ["nope"], unknown="fallback", return_std=True)
    assert np.isnan(fallback_std[0])
    with pytest.raises(ValueError, match="solver='gibbs'"):
        MatrixFactorization(factors=2, epochs=1, verbose=False).fit(data).predict(users, items, return_std=True)
