"""Solvers: a shared accuracy/determinism contract, then the maths piece by piece."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchmf import MatrixFactorization, TrainingError
from torchmf import device as device_module
from torchmf.solvers.als import als_half_sweep, als_side, ridge_rows
from torchmf.solvers.losses import bpr, logistic, mse, warp
from torchmf.solvers.optim import OPTIMIZERS, SGD, Adagrad, Adam, SparseAdam, make_optimizer
from torchmf.solvers.ragged import bucketize

# ---------------------------------------------------------------------- contract
# Every configuration must recover planted rank-4 data. The true rank is 4 and the
# noise sd 0.1, so a correct solver gets a held-out RMSE close to 0.1; 0.2 (twice
# the noise) leaves room for the 20% of rows the model never saw. Hyperparameters
# are tuned per optimiser so each converges in well under a couple of seconds
# (Adagrad's steps shrink, so it needs a larger lr and more epochs). Gradients are
# summed over a minibatch, so the SGD family uses batches of 1024, not the default
# 16384, to keep the step on popular items stable.
COMMON = {"factors": 4, "reg": 0.01, "verbose": False, "seed": 0}
SGD_COMMON = {**COMMON, "solver": "sgd", "batch_size": 1024}
BUCKETS = "_buckets"
CONFIGS = [
    ("als", {**COMMON, "solver": "als", "epochs": 10}),  # CSR kernels: rows here hold 53-80 ratings
    ("als", {**COMMON, "solver": "als", "epochs": 10, BUCKETS: True}),
    ("als", {**COMMON, "solver": "als", "epochs": 10, "cg_steps": 0}),
    ("sgd", {**SGD_COMMON, "optimizer": "sgd", "lr": 0.02, "epochs": 60}),
    ("sgd", {**SGD_COMMON, "optimizer": "adagrad", "lr": 0.1, "epochs": 100}),
    ("sgd", {**SGD_COMMON, "optimizer": "adam", "lr": 0.01, "epochs": 40}),
    ("sgd", {**SGD_COMMON, "optimizer": "sparse_adam", "lr": 0.01, "epochs": 40}),
]
IDS = ["als-cg", "als-cg-buckets", "als-cholesky", "sgd-sgd", "sgd-adagrad", "sgd-adam", "sgd-sparse_adam"]


def fit(kwargs: dict, train) -> MatrixFactorization:
    """Fit ``MatrixFactorization(**kwargs)``; the key BUCKETS forces the bucketed CG layout."""
    kwargs = dict(kwargs)
    with pytest.MonkeyPatch.context() as mp:
        if kwargs.pop(BUCKETS, False):
            mp.setattr(device_module, "_CSR_MAX_OTHER_BYTES", 0)
        return MatrixFactorization(**kwargs).fit(train)


def heldout_predictions(model, test):
    return model.predict(test.user_map.raw(test.users), test.item_map.raw(test.items), unknown="fallback")


@pytest.fixture(scope="module", params=CONFIGS, ids=IDS)
def fitted(request, synthetic_split):
    train, _, _ = synthetic_split
    _, kwargs = request.param
    return kwargs, fit(kwargs, train)


def test_contract_heldout_rmse_near_noise(fitted, synthetic_split):
    _, test, truth = synthetic_split
    _, model = fitted
    pred = heldout_predictions(model, test)
    rmse = float(np.sqrt(np.mean((pred - test.values) ** 2)))
    # the noise sd (truth.noise = 0.1) is the floor; 2x the floor is the bar
    assert rmse < 2 * truth.noise, f"held-out RMSE {rmse:.4f}"


def test_contract_train_loss_decreases(fitted):
    kwargs, model = fitted
    losses = [row["train_loss"] for row in model.history_]
    assert len(losses) == kwargs["epochs"]
    assert [row["epoch"] for row in model.history_] == list(range(1, kwargs["epochs"] + 1))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    # near convergence the per-rating half squared error is about noise^2 / 2 = 0.005
    assert losses[-1] < 0.02


def test_contract_same_seed_same_predictions(fitted, synthetic_split):
    # reproducibility is promised on the CPU; CUDA's atomic scatter-adds sum in no fixed order
    train, test, _ = synthetic_split
    kwargs, _ = fitted
    model = fit({**kwargs, "device": "cpu"}, train)
    again = fit({**kwargs, "device": "cpu"}, train)
    np.testing.assert_array_equal(heldout_predictions(again, test), heldout_predictions(model, test))
    np.testing.assert_array_equal(again.user_factors, model.user_factors)


def test_different_seed_different_factors(synthetic_split):
    train, _, _ = synthetic_split
    a = MatrixFactorization(**CONFIGS[0][1]).fit(train)
    b = MatrixFactorization(**{**CONFIGS[0][1], "seed": 1}).fit(train)
    assert not np.array_equal(a.user_factors, b.user_factors)


def test_sgd_divergence_raises_training_error_naming_lr(synthetic_split):
    train, _, _ = synthetic_split
    model = MatrixFactorization(solver="sgd", optimizer="sgd", lr=1e3, epochs=5, verbose=False)
    with pytest.raises(TrainingError) as info:
        model.fit(train)
    msg = str(info.value)
    assert "lr" in msg
    assert "1000" in msg  # the current value, so the user knows what to lower
    assert isinstance(info.value, RuntimeError)


def test_early_stopping_restores_best_epoch(synthetic_split):
    train, test, _ = synthetic_split
    # a quarter of the training rows, 16 factors and no penalty: overfits within a few
    # epochs (found by trying: validation RMSE bottoms out around epoch 5 of 200)
    small = train.subset(np.arange(len(train)) % 4 == 0)
    model = MatrixFactorization(
        solver="sgd", optimizer="adam", lr=0.02, factors=16, reg=0.0, epochs=200, early_stopping=3,
        batch_size=512, verbose=False,
    ).fit(small, validation=test)
    history = model.history_
    val = [row["val_rmse"] for row in history]
    assert all("val_mae" in row for row in history)
    best = int(np.argmin(val)) + 1
    assert model.best_epoch_ == best
    # patience 3: training stops three epochs after the best one, long before 200
    assert len(history) == best + 3 < 200
    # the weights kept are the best epoch's: recompute its validation RMSE from scratch
    known = np.isin(test.user_map.raw(test.users), model.user_map.ids) & np.isin(
        test.item_map.raw(test.items), model.item_map.ids
    )
    pred = model.predict(test.user_map.raw(test.users[known]), test.item_map.raw(test.items[known]))
    rmse = float(np.sqrt(np.mean((pred - test.values[known]) ** 2)))
    assert rmse == pytest.approx(min(val), abs=1e-5)
    assert rmse < val[-1]


def test_validation_without_early_stopping_keeps_best(synthetic_split):
    train, test, _ = synthetic_split
    model = MatrixFactorization(**{**CONFIGS[0][1], "epochs": 4}).fit(train, validation=test)
    assert len(model.history_) == 4
    val = [row["val_rmse"] for row in model.history_]
    assert model.best_epoch_ == int(np.argmin(val)) + 1


# ---------------------------------------------------------------------- ALS maths
def test_ridge_rows_single_row_equals_numpy_solve():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(6, 3))
    t = rng.normal(size=6)
    lam = np.array([0.5, 1.0, 2.0])
    # normal equations of ridge regression: (F^T F + diag(lam)) w = F^T t
    expected = np.linalg.solve(F.T @ F + np.diag(lam), F.T @ t)
    got = ridge_rows(torch.tensor(F[None]), torch.tensor(t[None]), torch.tensor(lam[None]))
    np.testing.assert_allclose(got.numpy()[0], expected, rtol=1e-10, atol=1e-12)


def test_ridge_rows_hand_worked():
    # one feature, entries x = [1, 2], targets [2, 4], lam 1:
    # w = (1*2 + 2*4) / (1 + 4 + 1) = 10 / 6
    got = ridge_rows(torch.tensor([[[1.0], [2.0]]]), torch.tensor([[2.0, 4.0]]), torch.tensor([[1.0]]))
    assert float(got[0, 0]) == pytest.approx(10 / 6, rel=1e-6)


def test_ridge_rows_padding_is_ignored():
    rng = np.random.default_rng(1)
    F = torch.tensor(rng.normal(size=(1, 4, 2)))
    t = torch.tensor(rng.normal(size=(1, 4)))
    lam = torch.tensor([[0.3, 0.3]])
    padded_F = torch.cat([F, torch.zeros(1, 3, 2, dtype=F.dtype)], 1)
    padded_t = torch.cat([t, torch.zeros(1, 3, dtype=t.dtype)], 1)
    torch.testing.assert_close(ridge_rows(padded_F, padded_t, lam), ridge_rows(F, t, lam))


def test_cg_with_enough_steps_equals_cholesky():
    rng = np.random.default_rng(2)
    B, L, m = 5, 20, 6
    F = torch.tensor(rng.normal(size=(B, L, m)))
    t = torch.tensor(rng.normal(size=(B, L)))
    lam = torch.tensor(rng.uniform(0.5, 2.0, size=(B, m)))
    exact = ridge_rows(F, t, lam, cg_steps=0)
    # CG solves an m x m SPD system exactly in m steps (in exact arithmetic)
    cg = ridge_rows(F, t, lam, cg_steps=3 * m)
    torch.testing.assert_close(cg, exact, rtol=1e-8, atol=1e-10)
    # warm-started at the answer, CG stays there
    torch.testing.assert_close(ridge_rows(F, t, lam, init=exact, cg_steps=2), exact, rtol=1e-8, atol=1e-10)
    # and a single step is not yet the answer (so the comparison above means something)
    assert not torch.allclose(ridge_rows(F, t, lam, cg_steps=1), exact, atol=1e-4)


def test_als_half_sweep_equals_per_row_numpy():
    rng = np.random.default_rng(3)
    n_users, n_items, k = 7, 9, 3
    mask = rng.random((n_users, n_items)) < 0.5
    mask[:, 0] = True  # every user has a rating
    rows, cols = np.nonzero(mask)
    vals = rng.uniform(1, 5, len(rows)).astype(np.float32)
    Q = rng.normal(size=(n_items, k))
    ci = rng.normal(size=n_items)
    mu, reg, reg_bias, exponent = 3.0, 0.1, 0.05, 0.75
    P = torch.zeros(n_users, k, dtype=torch.float64)
    bu = torch.zeros(n_users, dtype=torch.float64)
    buckets = bucketize(rows, cols, vals, n_users, n_items, torch.device("cpu"), max_elements=8)
    buckets = [
        type(b)(b.rows, b.cols, b.vals.double(), b.mask.double(), b.counts.double()) for b in buckets
    ]
    als_half_sweep(buckets, P, bu, torch.tensor(Q), torch.tensor(ci), mu, reg, reg_bias, cg_steps=0,
                   reg_exponent=exponent)
    for u in range(n_users):
        sel = rows == u
        X = np.hstack([Q[cols[sel]], np.ones((sel.sum(), 1))])
        y = vals[sel] - mu - ci[cols[sel]]
        # weighted-lambda penalty: reg * n_u ** exponent on factors, reg_bias * n_u ** exponent on the bias
        lam = np.r_[np.full(k, reg), reg_bias] * sel.sum() ** exponent
        w = np.linalg.solve(X.T @ X + np.diag(lam), X.T @ y)
        np.testing.assert_allclose(P[u].numpy(), w[:k], rtol=1e-6, atol=1e-8)
        assert float(bu[u]) == pytest.approx(w[k], rel=1e-6, abs=1e-8)


def test_bucketize_covers_every_entry_once():
    rng = np.random.default_rng(4)
    rows = rng.integers(0, 30, 400)
    cols = rng.integers(0, 50, 400)
    key = np.unique(rows * 50 + cols)
    rows, cols = key // 50, key % 50
    vals = rng.random(len(rows)).astype(np.float32)
    buckets = bucketize(rows, cols, vals, 30, 50, torch.device("cpu"), max_elements=64)
    seen = []
    for b in buckets:
        m = b.mask.bool()
        assert torch.equal(b.counts, m.sum(1).float())
        assert bool((b.cols[~m] == 50).all())  # padding points at the extra zero row
        for r, c, v, mm in zip(b.rows.tolist(), b.cols.tolist(), b.vals.tolist(), m.tolist(), strict=True):
            seen += [(r, cc, vv) for cc, vv, keep in zip(c, v, mm, strict=True) if keep]
    expected = sorted(zip(rows.tolist(), cols.tolist(), vals.tolist(), strict=True))
    assert sorted(seen) == expected


# ---------------------------------------------------------------------- losses
def _leaf(x):
    return x.clone().requires_grad_(True)


def test_mse_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(17, generator=g, dtype=torch.float64), torch.randn(17, generator=g, dtype=torch.float64)
    p = _leaf(pred)
    ref = 0.5 * ((p - target) ** 2).sum()
    ref.backward()
    loss, grad = mse(pred, target)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, p.grad)


@pytest.mark.parametrize("fn", [bpr, logistic], ids=["bpr", "logistic"])
@pytest.mark.parametrize("neg_shape", [(13,), (13, 1), (13, 4)], ids=["1neg", "1neg-column", "4neg"])
def test_pairwise_gradients_match_autograd(fn, neg_shape):
    g = torch.Generator().manual_seed(1)
    pos = 2 * torch.randn(13, generator=g, dtype=torch.float64)
    neg = 2 * torch.randn(*neg_shape, generator=g, dtype=torch.float64)
    p, n = _leaf(pos), _leaf(neg)
    loss, grad_pos, grad_neg = fn(p, n)
    loss.backward()
    # autograd differentiates the returned loss; the hand gradients must agree
    torch.testing.assert_close(grad_pos.detach(), p.grad)
    torch.testing.assert_close(grad_neg.detach(), n.grad)
    assert grad_pos.shape == pos.shape and grad_neg.shape == neg.shape


def test_bpr_and_logistic_reference_values():
    # bpr: -log sigmoid(2 - 0) = log(1 + e^-2) = softplus(-2)
    loss, _, _ = bpr(torch.tensor([2.0]), torch.tensor([0.0]))
    assert float(loss) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)
    # logistic: -log sigmoid(1) - log(1 - sigmoid(-1)) = 2 * softplus(-1)
    loss, _, _ = logistic(torch.tensor([1.0]), torch.tensor([-1.0]))
    assert float(loss) == pytest.approx(2 * np.log1p(np.exp(-1.0)), rel=1e-6)


def test_warp_shapes_and_signs():
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(32, generator=g)
    neg = torch.randn(32, 5, generator=g)
    loss, grad_pos, grad_neg = warp(pos, neg, n_items=100)
    assert loss.shape == () and float(loss) >= 0
    assert grad_pos.shape == (32,) and grad_neg.shape == (32, 5)
    # raising a positive's score can only lower the loss; raising a negative's only raise it
    assert bool((grad_pos <= 0).all()) and bool((grad_neg >= 0).all())
    # the hinge is averaged over margin violators: exactly the negatives within the margin get a gradient
    assert bool(((grad_neg > 0) == (neg > pos.unsqueeze(1) - 1.0)).all())
    # positives far above every negative: no violation, no loss, no gradient
    loss, grad_pos, grad_neg = warp(torch.full((4,), 10.0), torch.zeros(4, 3), n_items=100)
    assert float(loss) == 0 and float(grad_pos.abs().sum()) == 0 and float(grad_neg.abs().sum()) == 0


# ---------------------------------------------------------------------- optimisers
def test_sgd_row_update_hand_computed():
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    opt = SGD({"P": table}, lr=0.1)
    rows = torch.tensor([0, 2, 0])
    grad = torch.tensor([[1.0, 1.0], [10.0, 0.0], [2.0, -1.0]])
    opt.step("P", rows, grad)
    # row 0 occurs twice: 1 - 0.1*(1 + 2) = 0.7, 2 - 0.1*(1 - 1) = 2;  row 2: 5 - 0.1*10 = 4
    torch.testing.assert_close(table, torch.tensor([[0.7, 2.0], [3.0, 4.0], [4.0, 6.0]]))


def _random_steps(n_steps, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(n_steps)]


def test_sparse_adam_equals_adam_when_every_row_is_touched():
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = start.clone(), start.clone()
    dense, lazy = Adam({"P": a}, lr=0.05), SparseAdam({"P": b}, lr=0.05)
    rows = torch.tensor([3, 0, 1, 2, 5, 4, 0])  # every row, one twice
    for grad in _random_steps(25, (7, 3)):
        dense.step("P", rows, grad.clone())
        lazy.step("P", rows, grad.clone())
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a, start)


def test_sparse_adam_leaves_untouched_rows_alone():
    table = torch.ones(4, 2, dtype=torch.float64)
    opt = SparseAdam({"P": table}, lr=0.1)
    opt.step("P", torch.tensor([1]), torch.ones(1, 2, dtype=torch.float64))
    assert torch.equal(table[[0, 2, 3]], torch.ones(3, 2, dtype=torch.float64))
    # first Adam step moves by lr * sign(g) (bias-corrected m / sqrt(v) = 1)
    torch.testing.assert_close(table[1], torch.full((2,), 0.9, dtype=torch.float64))


@pytest.mark.parametrize(
    "ours, theirs, lr, seed",
    [
        # same algorithm; only eps enters at a slightly different place, a ~1e-8 relative effect
        (Adam, torch.optim.Adam, 0.01, 3),
        # torch uses eps 1e-10 where ours uses 1e-8: negligible next to sqrt(acc) ~ 1
        (Adagrad, torch.optim.Adagrad, 0.1, 5),
    ],
    ids=["adam", "adagrad"],
)
def test_optimizer_matches_torch(ours, theirs, lr, seed):
    start = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    table = start.clone()
    ref = torch.nn.Parameter(start.clone())
    opt = ours({"P": table}, lr=lr)
    ref_opt = theirs([ref], lr=lr)
    rows = torch.arange(5)
    for grad in _random_steps(20, (5, 3), seed=seed + 1):
        opt.step("P", rows, grad.clone())
        ref.grad = grad.clone()
        ref_opt.step()
    torch.testing.assert_close(table, ref.detach(), rtol=1e-6, atol=1e-7)


def test_make_optimizer():
    assert set(OPTIMIZERS) == {"sgd", "adagrad", "adam", "sparse_adam", "hogwild"}
    assert isinstance(make_optimizer("sparse_adam", {"P": torch.zeros(2, 2)}, 0.1), SparseAdam)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("rmsprop", {}, 0.1)


@pytest.mark.parametrize("biases", [True, False])
def test_als_csr_cg_takes_the_same_steps_as_the_bucketed_cg(biases):
    """Matrix-free CG on CSR kernels and CG on formed k x k matrices are the same iteration.

    From the same warm start a few steps (not converged) agree to rounding in
    float64, as does the reported squared error.
    """
    rng = np.random.default_rng(6)
    n_users, n_items, k = 30, 20, 4
    mask = rng.random((n_users, n_items)) < rng.uniform(0.1, 0.8, (n_users, 1))
    mask[:, 0] = True
    rows, cols = np.nonzero(mask)
    vals = rng.integers(1, 6, len(rows)).astype(np.float32)  # exact in float32 and float64 alike
    Q, ci = torch.tensor(rng.normal(size=(n_items, k))), torch.tensor(rng.normal(size=n_items))
    P0, bu0 = torch.tensor(rng.normal(size=(n_users, k))), torch.tensor(rng.normal(size=n_users))
    kw = dict(global_mean=3.0, reg=0.2, reg_bias=0.05, cg_steps=2, reg_exponent=0.75, with_loss=True)
    cpu = torch.device("cpu")
    buckets = [
        type(b)(b.rows, b.cols, b.vals.double(), b.mask.double(), b.counts.double())
        for b in bucketize(rows, cols, vals, n_users, n_items, cpu, max_elements=64)
    ]
    P1, bu1 = P0.clone(), (bu0.clone() if biases else None)
    sse1 = als_half_sweep(buckets, P1, bu1, Q, ci if biases else None, **kw)
    P2, bu2 = P0.clone(), (bu0.clone() if biases else None)
    side = als_side(rows, cols, vals, n_users, n_items, cpu, torch.float64)
    sse2 = als_half_sweep(side, P2, bu2, Q, ci if biases else None, **kw)
    torch.testing.assert_close(P1, P2, rtol=1e-10, atol=1e-12)
    if biases:
        torch.testing.assert_close(bu1, bu2, rtol=1e-10, atol=1e-12)
    assert sse1 == pytest.approx(sse2, rel=1e-10)
    assert not torch.allclose(P1, P0)
    with pytest.raises(ValueError, match="cg_steps >= 1"):
        als_half_sweep(side, P2, bu2, Q, ci if biases else None, **{**kw, "cg_steps": 0})
