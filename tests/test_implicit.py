"""Implicit feedback: iALS, BPR, logistic and WARP, end to end and piece by piece.

The end-to-end tests use a planted block set whose right answer is provable:
two user groups x two item groups, each user interacting with a random half of
its own group's items and nothing else. Every out-of-group item is a
non-interaction for every user of the group, so any sensible ranking model
puts all unseen in-group items (half the group) above all out-of-group ones.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torchmf
from torchmf import Interactions, MatrixFactorization
from torchmf import device as device_module
from torchmf.nn.mf import MFModel
from torchmf.solvers import ials_layout as ials_module
from torchmf.solvers.ials import IALSSettings, confidence, ials_half_sweep, ials_loss, ials_side
from torchmf.solvers.losses import bpr, logistic, warp
from torchmf.solvers.pairwise import NegativeSampler, PairwiseSettings, make_pairwise_epoch

USERS_PER_GROUP, ITEMS_PER_GROUP, K = 40, 40, 5
# Two factors: the planted structure has rank 2. More factors let the ranking
# losses fit each user's own positives at the expense of the group pattern
# (nothing in a pairwise loss orders two non-positives of the same user), and
# then a few out-of-group items can slip into a top 5. Settings checked on 4
# data seeds x 3 model seeds with no miss.
LOSSES = {
    "ials": {"loss": "ials", "factors": 2, "epochs": 6},
    "bpr": {"loss": "bpr", "factors": 2, "epochs": 40, "lr": 0.1, "batch_size": 256},
    "logistic": {"loss": "logistic", "factors": 2, "epochs": 40, "lr": 0.1, "batch_size": 256},
    "warp": {"loss": "warp", "factors": 2, "epochs": 40, "lr": 0.1, "batch_size": 256},
}


def block_data(seed: int = 0) -> tuple[Interactions, np.ndarray, np.ndarray]:
    """Planted 2x2 block set; returns data plus each user's and item's group (by raw id)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(2 * USERS_PER_GROUP):
        group = u // USERS_PER_GROUP
        mine = rng.choice(ITEMS_PER_GROUP, ITEMS_PER_GROUP // 2, replace=False) + group * ITEMS_PER_GROUP
        users += [f"u{u}"] * len(mine)
        items += [f"i{i}" for i in mine]
    user_group = np.arange(2 * USERS_PER_GROUP) // USERS_PER_GROUP
    item_group = np.arange(2 * ITEMS_PER_GROUP) // ITEMS_PER_GROUP
    return Interactions.from_arrays(users, items), user_group, item_group


@pytest.fixture(scope="module")
def blocks() -> tuple[Interactions, np.ndarray, np.ndarray]:
    return block_data()


@pytest.fixture(scope="module", params=list(LOSSES))
def fitted(request, blocks) -> tuple[str, MatrixFactorization]:
    data = blocks[0]
    return request.param, MatrixFactorization(verbose=False, seed=0, **LOSSES[request.param]).fit(data)


def assert_in_group_unseen(model: MatrixFactorization, data: Interactions, user: str, recs: list[str]) -> None:
    group = int(user[1:]) // USERS_PER_GROUP
    seen = set(data.item_map.raw(data.items[data.users == data.user_map.index(user)]))
    assert len(recs) == K
    for item in recs:
        assert int(item[1:]) // ITEMS_PER_GROUP == group, f"{user} got out-of-group {item}"
        assert item not in seen


# ---------------------------------------------------------------------- end to end
def test_every_loss_recommends_only_in_group_unseen(fitted, blocks):
    _name, model = fitted
    data = blocks[0]
    assert model.implicit_ and not model.model.biases
    recs = model.recommend(list(data.user_map.raw(np.arange(data.n_users))), k=K)
    for user, rows in recs.groupby("user"):
        assert_in_group_unseen(model, data, user, rows.sort_values("rank")["item"].tolist())


@pytest.mark.parametrize("layout", ["csr", "gathered"])
def test_ials_recovers_the_blocks_on_either_layout(blocks, monkeypatch, layout):
    """Whichever layout ``ials_side`` picks for a data set, the fit gets the same answer."""
    if layout == "csr":
        monkeypatch.setattr(device_module, "_CSR_MIN_MEAN_DEGREE", 0)
    else:
        monkeypatch.setattr(device_module, "_CSR_MAX_OTHER_BYTES", 0)
    data = blocks[0]
    model = MatrixFactorization(**LOSSES["ials"], seed=0, verbose=False).fit(data)
    for u in range(data.n_users):
        user = data.user_map.raw(np.array([u]))[0]
        assert_in_group_unseen(model, data, user, model.recommend(user, k=K)["item"].tolist())


def test_ials_fit_on_csr_matches_plain_half_sweeps(blocks, monkeypatch):
    """fit carries each sweep's loss scores into the next user half; the factors must not notice.

    Reference: the same initial factors (the estimator's seeded init) swept by
    plain :func:`ials_half_sweep` calls that compute every product themselves.
    """
    monkeypatch.setattr(device_module, "_CSR_MIN_MEAN_DEGREE", 0)  # both sides on the CSR layout
    data = blocks[0]
    model = MatrixFactorization(loss="ials", factors=3, epochs=4, seed=0, verbose=False, device="cpu").fit(data)
    hp = model.effective_params
    init = MFModel(data.n_users, data.n_items, 3, biases=False, init_std=hp["init_std"],
                   generator=torch.Generator().manual_seed(0))
    P, Q = init.user_embs.weight.detach().clone(), init.item_embs.weight.detach().clone()
    s = IALSSettings(hp["reg"], hp["reg_exponent"], hp["unobserved_weight"], hp["cg_steps"])
    conf = confidence(data.values, hp["alpha"], hp["confidence"], hp["confidence_eps"])
    cpu = torch.device("cpu")
    by_user = ials_side(data.users, data.items, conf, data.n_users, data.n_items, 3, cpu, s)
    by_item = ials_side(data.items, data.users, conf, data.n_items, data.n_users, 3, cpu, s)
    assert by_user.chunks is None and by_item.chunks is None
    for _ in range(4):
        ials_half_sweep(by_user, P, Q, s)
        ials_half_sweep(by_item, Q, P, s)
    np.testing.assert_allclose(model.user_factors, P.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.item_factors, Q.numpy(), rtol=1e-4, atol=1e-6)


def test_predict_is_raw_score_not_clipped(fitted):
    _, model = fitted
    scores = model.predict(["u0", "u0"], ["i0", f"i{2 * ITEMS_PER_GROUP - 1}"])
    # implicit data has every value 1: clipping to the "rating range" would make them equal
    assert scores[0] != scores[1]
    p = model.user_factors[model.user_map.index("u0")]
    q = model.item_factors[model.item_map.index(f"i{2 * ITEMS_PER_GROUP - 1}")]
    assert scores[1] == pytest.approx(float(p @ q), rel=1e-5, abs=1e-6)


def test_fold_in_same_history_same_recommendations(fitted, blocks):
    name, model = fitted
    data = blocks[0]
    for user in ("u0", f"u{USERS_PER_GROUP + 5}"):
        history = list(data.item_map.raw(data.items[data.users == data.user_map.index(user)]))
        model.fold_in(f"clone-{user}", history)
        clone = model.recommend(f"clone-{user}", k=K)["item"].tolist()
        assert_in_group_unseen(model, data, user, clone)
        original = model.recommend(user, k=K)["item"].tolist()
        # both lists are K of the same 10 unseen in-group items; iALS solves the same system
        assert len(set(clone) & set(original)) >= (K if name == "ials" else K - 2)


def test_ials_fold_in_is_the_closed_form(blocks):
    data = blocks[0]
    model = MatrixFactorization(loss="ials", factors=4, epochs=3, alpha=3.0, unobserved_weight=0.5,
                                reg=0.05, reg_exponent=0.5, verbose=False).fit(data)
    hp = model.effective_params
    items = ["i0", "i3", "i7"]
    model.fold_in("new", {"i0": 1.0, "i3": 2.0, "i7": 1.0})
    Q = model.item_factors.astype(np.float64)
    idx = model.item_map.indices(items)
    c = 1 + hp["alpha"] * np.array([1.0, 2.0, 1.0])
    a0 = hp["unobserved_weight"]
    lam = hp["reg"] * (3 + a0 * len(Q)) ** hp["reg_exponent"]
    # A = a0 Q^T Q + sum (c - a0) q q^T + lam I,  b = sum c q
    A = a0 * Q.T @ Q + (Q[idx].T * (c - a0)) @ Q[idx] + lam * np.eye(Q.shape[1])
    expected = np.linalg.solve(A, Q[idx].T @ c)
    np.testing.assert_allclose(model.user_factors[model.user_map.index("new")], expected, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(fitted, tmp_path):
    name, model = fitted
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "torchmf.json").read_text())
    assert meta["effective_params"]["loss"] == name and meta["implicit"] is True
    loaded = torchmf.load(tmp_path / "m")
    assert loaded.effective_params == model.effective_params
    users = ["u1", f"u{USERS_PER_GROUP + 1}"]
    pd_a, pd_b = model.recommend(users, k=K), loaded.recommend(users, k=K)
    assert pd_a["item"].tolist() == pd_b["item"].tolist()
    # loaded on the CPU: a GPU-trained model may differ in the last bits of a matmul
    np.testing.assert_allclose(pd_a["score"], pd_b["score"], rtol=1e-5, atol=1e-6)
    loaded.fold_in("late", ["i1", "i2"])  # fold-in works on a loaded model too
    assert len(loaded.recommend("late", k=3)) == 3


def test_similar_items_stay_in_group(fitted):
    name, model = fitted
    sims = model.similar_items("i0", k=5)["item"].tolist()
    assert all(int(i[1:]) < ITEMS_PER_GROUP for i in sims), (name, sims)


def test_counts_become_confidence():
    v = np.array([0.0, 1.0, 3.0])
    np.testing.assert_allclose(confidence(v, 2.0, "linear", 1.0), [1, 3, 7])
    np.testing.assert_allclose(confidence(v, 2.0, "log", 0.5), 1 + 2 * np.log1p(v / 0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="confidence"):
        confidence(v, 1.0, "sqrt", 1.0)


# ---------------------------------------------------------------------- parameters
@pytest.mark.parametrize("loss, solver", [("ials", "sgd"), ("bpr", "als"), ("logistic", "als"), ("warp", "als")])
def test_invalid_loss_solver_combination_names_both(loss, solver):
    with pytest.raises(ValueError, match=rf"loss='{loss}'.*solver='{solver}'"):
        MatrixFactorization(loss=loss, solver=solver)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"loss": "ials", "biases": True}, "biases"), ({"loss": "hinge"}, "loss"), ({"alpha": -1}, "alpha"),
     ({"confidence": "sqrt"}, "confidence"), ({"negatives": 0}, "negatives"),
     ({"negative_sampling": "hard"}, "negative_sampling"), ({"unobserved_weight": -0.1}, "unobserved_weight")],
)
def test_invalid_implicit_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MatrixFactorization(**kwargs)


def test_defaults_per_loss():
    assert MatrixFactorization().effective_params["solver"] == "als"
    assert MatrixFactorization().effective_params["biases"] is True
    for loss, solver in [("ials", "als"), ("bpr", "sgd"), ("logistic", "sgd"), ("warp", "sgd")]:
        hp = MatrixFactorization(loss=loss).effective_params
        assert hp["solver"] == solver and hp["biases"] is False
        json.dumps(hp)  # persisted as JSON


def test_mse_on_implicit_data_warns(blocks, caplog):
    with caplog.at_level(logging.WARNING, logger="torchmf"):
        MatrixFactorization(factors=2, epochs=1, verbose=False).fit(blocks[0])
    assert "loss='ials'" in caplog.text


def test_implicit_validation_reports_ndcg(blocks):
    data = blocks[0]
    rng = np.random.default_rng(0)
    mask = rng.random(len(data)) < 0.2
    train, valid = data.subset(~mask), data.subset(mask)
    model = MatrixFactorization(loss="ials", factors=2, epochs=3, verbose=False).fit(train, validation=valid)
    last = model.history_[-1]
    assert {"val_ndcg@10", "val_recall@10"} <= set(last)
    # the same NDCG@10 by hand from the public ranking
    users = model.user_map.indices(valid.user_map.raw(valid.users))
    items = model.item_map.indices(valid.item_map.raw(valid.items), missing="ignore")
    disc = 1 / np.log2(np.arange(2, 12))
    scores = []
    for u in np.unique(users):
        rel = set(items[(users == u) & (items >= 0)].tolist())
        if not rel:
            continue
        top = model.top_k(np.array([u]), 10)[0][0]
        scores.append(sum(disc[r] for r, i in enumerate(top) if i in rel) / disc[: min(10, len(rel))].sum())
    assert last["val_ndcg@10"] == pytest.approx(np.mean(scores), rel=1e-5)


# ---------------------------------------------------------------------- iALS maths
def _dense_objective(P, Q, R, C, a0, reg, nu):
    """The iALS objective by brute force over all pairs (float64)."""
    S = P @ Q.T
    W = np.where(R > 0, C, a0)
    T = (R > 0).astype(float)
    n_u, n_i = (R > 0).sum(1), (R > 0).sum(0)
    pen = reg * ((n_u + a0 * Q.shape[0]) ** nu @ (P**2).sum(1) + (n_i + a0 * P.shape[0]) ** nu @ (Q**2).sum(1))
    return float((W * (T - S) ** 2).sum() + pen)


@pytest.mark.parametrize("cg_steps, layout", [(0, "csr"), (30, "csr"), (30, "gathered")])
def test_half_sweep_minimises_the_all_pairs_objective(cg_steps, layout):
    rng = np.random.default_rng(0)
    n_u, n_i, k = 15, 12, 3
    R = (rng.random((n_u, n_i)) < 0.3) * rng.integers(1, 4, (n_u, n_i))
    R[:, 0] = np.maximum(R[:, 0], 1)  # every row has an entry
    R[0, :] = np.maximum(R[0, :], 1)
    u, i = np.nonzero(R)
    conf = confidence(R[u, i], 1.5, "linear", 1.0)
    C = np.zeros(R.shape)
    C[u, i] = conf
    s = IALSSettings(reg=0.1, reg_exponent=0.7, unobserved_weight=0.3, cg_steps=cg_steps)
    P = torch.tensor(rng.normal(size=(n_u, k)), dtype=torch.float64)
    Q = torch.tensor(rng.normal(size=(n_i, k)), dtype=torch.float64)
    cpu = torch.device("cpu")
    side = ials_side(u, i, conf, n_u, n_i, k, cpu, s, dtype=torch.float64, layout=layout)
    ials_half_sweep(side, P, Q, s)  # float64: tight check
    # the gradient of the brute-force objective w.r.t. P vanishes at the solution
    Pt = P.clone().requires_grad_(True)
    St = Pt @ Q.T
    W, T = torch.tensor(np.where(R > 0, C, 0.3)), torch.tensor((R > 0).astype(float))
    pen = 0.1 * ((torch.tensor((R > 0).sum(1), dtype=torch.float64) + 0.3 * n_i) ** 0.7 * (Pt**2).sum(1)).sum()
    ((W * (T - St) ** 2).sum() + pen).backward()
    assert float(Pt.grad.abs().max()) < 1e-8
    # and the loss the sweep reports (after the items' half-sweep) equals the brute-force objective
    Pf, Qf = P.float(), Q.float()
    item_side = ials_side(i, u, conf, n_i, n_u, k, cpu, s, layout=layout)
    observed = ials_half_sweep(item_side, Qf, Pf, s, with_loss=True)
    full = ials_loss(observed, Pf, Qf, ials_side(u, i, conf, n_u, n_i, k, cpu, s, layout=layout), item_side, s)
    dense = _dense_objective(Pf.double().numpy(), Qf.double().numpy(), R, C, 0.3, 0.1, 0.7)
    assert full == pytest.approx(dense, rel=1e-4)


def test_csr_and_gathered_layouts_take_the_same_cg_steps(monkeypatch):
    """Both layouts compute the same A p, so a few CG steps (not converged) agree to rounding.

    Also covers rows without pairs (left untouched), chunks split across
    several buckets, and the observed loss both report.
    """
    rng = np.random.default_rng(5)
    n_u, n_i, k = 60, 40, 4
    mask = rng.random((n_u, n_i)) < rng.uniform(0.02, 0.6, (n_u, 1))  # spread of degrees: several buckets
    mask[7] = False  # a user without pairs
    u, i = np.nonzero(mask)
    conf = confidence(rng.integers(1, 5, len(u)), 0.7, "log", 1.0)
    s = IALSSettings(reg=0.05, reg_exponent=1.0, unobserved_weight=0.2, cg_steps=2)
    Q = torch.tensor(rng.normal(size=(n_i, k)))
    P0 = torch.tensor(rng.normal(size=(n_u, k)))
    cpu = torch.device("cpu")
    monkeypatch.setattr(ials_module, "MIN_CHUNK_ENTRIES", 64)  # several chunks on this small set
    monkeypatch.setattr(device_module, "_CHUNK_BYTES_CPU", 64 * 8 * k)
    results = {}
    for layout in ("csr", "gathered"):
        side = ials_side(u, i, conf, n_u, n_i, k, cpu, s, dtype=torch.float64, layout=layout)
        P = P0.clone()
        loss = ials_half_sweep(side, P, Q, s, with_loss=True)
        results[layout] = (P, loss)
    chunks = ials_side(u, i, conf, n_u, n_i, k, cpu, s, dtype=torch.float64, layout="gathered").chunks
    assert len(chunks) > 3 and sum(len(c.buckets) for c in chunks) > len(chunks)
    torch.testing.assert_close(results["csr"][0], results["gathered"][0], rtol=1e-10, atol=1e-12)
    assert results["csr"][1] == pytest.approx(results["gathered"][1], rel=1e-10)
    assert torch.equal(results["csr"][0][7], P0[7])
    assert not torch.allclose(results["csr"][0][0], P0[0])


# ---------------------------------------------------------------------- negatives
@st.composite
def interaction_sets(draw):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(2, 12))
    rows = []
    for u in range(n_users):
        # anything from one positive to all but one item: the nearly-full rows
        # are where rejection sampling alone would fail
        k = draw(st.integers(1, n_items - 1))
        rows += [(u, i) for i in draw(st.permutations(range(n_items)))[:k]]
    return n_users, n_items, rows


@given(interaction_sets(), st.sampled_from(["uniform", "popularity"]), st.integers(0, 2**31 - 1))
def test_negative_sampling_never_returns_a_positive(case, sampling, seed):
    n_users, n_items, rows = case
    users = torch.tensor([r[0] for r in rows])
    items = torch.tensor([r[1] for r in rows])
    sampler = NegativeSampler(users, items, n_items, sampling, torch.Generator().manual_seed(seed))
    positives = set(rows)
    query = torch.arange(n_users).repeat_interleave(20)
    neg = sampler.sample(query, 3)
    assert neg.shape == (len(query), 3)
    assert bool(((neg >= 0) & (neg < n_items)).all())
    for u, row in zip(query.tolist(), neg.tolist(), strict=True):
        assert not any((u, j) in positives for j in row)
    assert not bool(sampler.is_positive(query.unsqueeze(1), neg).any())


def test_complement_fallback_is_uniform_over_non_positives():
    # user 0 has seen items 0..7 of 10: only 8 and 9 are negatives, drawn evenly
    users, items = torch.zeros(8, dtype=torch.long), torch.arange(8)
    sampler = NegativeSampler(users, items, 10, "uniform", torch.Generator().manual_seed(0))
    draws = sampler._complement(torch.zeros(4000, dtype=torch.long))
    counts = torch.bincount(draws, minlength=10)
    assert counts[:8].sum() == 0 and abs(int(counts[8]) - 2000) < 200


# ---------------------------------------------------------------------- pairwise maths
def test_warp_gradient_matches_autograd():
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(16, generator=g, dtype=torch.float64).requires_grad_(True)
    neg = torch.randn(16, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    loss, g_pos, g_neg = warp(pos, neg, n_items=50)
    loss.backward()  # the rank weight is piecewise constant: autograd sees it as a constant too
    torch.testing.assert_close(g_pos, pos.grad)
    torch.testing.assert_close(g_neg, neg.grad)


@pytest.mark.parametrize("loss_name", ["bpr", "logistic", "warp"])
def test_pairwise_step_equals_autograd_sgd_step(loss_name):
    """One full-batch epoch with plain SGD equals one autograd step on the same negatives."""
    n_users, n_items, d, N, lr, reg = 5, 9, 3, 4, 0.1, 0.01
    users = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])
    items = torch.tensor([1, 2, 3, 0, 5, 8, 4, 6])
    model = MFModel(n_users, n_items, d, init_std=0.5, generator=torch.Generator().manual_seed(0))
    model.requires_grad_(False)
    P0, Q0 = model.user_embs.weight.clone(), model.item_embs.weight.clone()
    settings = PairwiseSettings(loss_name, lr, reg, 64, "sgd", N, "uniform")
    make_pairwise_epoch(model, users, items, settings, torch.Generator().manual_seed(7))()
    # replay the epoch's random draws: permutation, then negatives
    gen = torch.Generator().manual_seed(7)
    sampler = NegativeSampler(users, items, n_items, "uniform", gen)
    perm = torch.randperm(len(users), generator=gen)
    u, i = users[perm], items[perm]
    j = sampler.sample(u, N)
    P, Q = P0.clone().requires_grad_(True), Q0.clone().requires_grad_(True)
    pos = (P[u] * Q[i]).sum(1)
    neg = torch.einsum("bd,bnd->bn", P[u], Q[j])
    fn = {"bpr": bpr, "logistic": logistic, "warp": lambda a, b: warp(a, b, n_items)}[loss_name]
    total = fn(pos, neg)[0] + 0.5 * reg * ((P[u] ** 2).sum() + (Q[i] ** 2).sum() + (Q[j] ** 2).sum())
    total.backward()
    torch.testing.assert_close(model.user_embs.weight, P0 - lr * P.grad)
    torch.testing.assert_close(model.item_embs.weight, Q0 - lr * Q.grad)


def test_ials_on_rated_data_uses_values_as_strengths_and_raw_scores():
    # explicit ratings as strengths: confidence 1 + alpha * rating, scores unclipped
    data = Interactions.from_arrays(["a", "a", "b", "b", "c"], ["x", "y", "x", "z", "y"], [5.0, 1.0, 4.0, 2.0, 3.0])
    model = MatrixFactorization(loss="ials", factors=2, epochs=3, verbose=False).fit(data)
    assert not model.implicit_
    scores = model.predict(["a", "b", "c"], ["z", "y", "z"])
    p, q = model.user_factors, model.item_factors
    expected = [p[model.user_map.index(u)] @ q[model.item_map.index(i)] for u, i in zip("abc", "zyz", strict=True)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)  # not clipped to [1, 5]


def test_pairwise_skips_users_who_saw_everything():
    # user "all" interacted with every item: no negative exists, training must neither hang nor fail
    users = ["all"] * 4 + ["u1", "u1", "u2"]
    items = ["a", "b", "c", "d", "a", "b", "c"]
    model = MatrixFactorization(loss="bpr", factors=2, epochs=3, batch_size=4, verbose=False)
    model.fit(Interactions.from_arrays(users, items))
    assert model.recommend("all", k=3).empty  # nothing unseen to recommend
    assert len(model.recommend("u2", k=3)) == 3
