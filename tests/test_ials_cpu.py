"""The fused numba iALS kernel (torchmf.solvers.ials_cpu) against the torch path it replaces on large CPU fits."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import torchmf
from torchmf import MatrixFactorization
from torchmf.solvers import ials_cpu
from torchmf.solvers.ials import confidence, ials_half_sweep, ials_side
from torchmf.solvers.ials_layout import IALSSettings
from torchmf.training import monitor as monitor_module


@contextlib.contextmanager
def mode(name: str):
    before = ials_cpu._MODE
    ials_cpu._MODE = name
    try:
        yield
    finally:
        ials_cpu._MODE = before


@pytest.fixture(scope="module")
def binary() -> torchmf.Interactions:
    data, _ = torchmf.datasets.synthetic(n_users=400, n_items=250, n_interactions=12000, rank=5, seed=2, implicit=True)
    return data


@pytest.fixture(scope="module")
def counts(binary) -> torchmf.Interactions:
    rng = np.random.default_rng(0)
    values = np.floor(rng.pareto(1.2, len(binary)) * 5 + 1).astype(np.float32)  # heavy-tailed play counts
    return torchmf.Interactions.from_arrays(binary.user_map.raw(binary.users), binary.item_map.raw(binary.items),
                                            values)


def fit(data, name: str, fit_kw: dict | None = None, **kw) -> MatrixFactorization:
    with mode(name):
        est = MatrixFactorization(**{"loss": "ials", "factors": 12, "epochs": 5, "verbose": False, "device": "cpu",
                                     **kw})
        return est.fit(data, **(fit_kw or {}))


@pytest.mark.parametrize("which", ["binary", "counts"])
def test_kernel_equals_torch_path(request, which):
    """Same data, seed and settings: the two paths differ only by float reassociation."""
    data = request.getfixturevalue(which)
    a, b = fit(data, "torch"), fit(data, "numba")
    torch.testing.assert_close(b.model.user_embs.weight, a.model.user_embs.weight, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(b.model.item_embs.weight, a.model.item_embs.weight, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose([h["train_loss"] for h in b.history_], [h["train_loss"] for h in a.history_],
                               rtol=1e-5)
    # and the sweeps changed the factors: one sweep fewer ends elsewhere
    assert not torch.allclose(fit(data, "numba", epochs=4).model.user_embs.weight, b.model.user_embs.weight)


def test_kernel_is_used_from_the_threshold_on(binary, monkeypatch):
    calls = []
    real = ials_cpu.fused_half_sweep
    monkeypatch.setattr("torchmf.solvers.ials_solver.fused_half_sweep",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    fit(binary, "auto")
    assert calls == []  # 12,000 pairs: below MIN_KERNEL_PAIRS, the torch path
    monkeypatch.setattr(ials_cpu, "MIN_KERNEL_PAIRS", 1000)
    fit(binary, "auto")
    assert len(calls) == 10  # two halves x five sweeps
    calls.clear()
    fit(binary, "auto", cg_steps=0)  # exact solves: the torch path
    assert calls == []
    assert not ials_cpu.kernel_applies(torch.device("cpu"), torch.float64, 3, 10**7)
    assert not ials_cpu.kernel_applies(torch.device("meta"), torch.float32, 3, 10**7)


def test_fit_factors_do_not_depend_on_the_thread_count(counts):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fit(counts, "numba")
        torch.set_num_threads(2)
        two = fit(counts, "numba")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.model.user_embs.weight, two.model.user_embs.weight)
    assert torch.equal(one.model.item_embs.weight, two.model.item_embs.weight)
    assert one.history_ == two.history_


def test_interrupted_fit_resumes_to_the_same_factors(binary, tmp_path):
    reference = fit(binary, "numba", epochs=6)
    original = monitor_module.Monitor.end_epoch

    def end_epoch(self, e, loss):
        if e == 5:
            raise KeyboardInterrupt
        return original(self, e, loss)

    monitor_module.Monitor.end_epoch = end_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(binary, "numba", {"checkpoint_dir": tmp_path, "checkpoint_every": 2}, epochs=6)
    finally:
        monitor_module.Monitor.end_epoch = original
    resumed = fit(binary, "numba", {"checkpoint_dir": tmp_path, "checkpoint_every": 2, "resume": True}, epochs=6)
    assert torch.equal(resumed.model.user_embs.weight, reference.model.user_embs.weight)
    assert resumed.history_ == reference.history_


def test_half_sweep_leaves_rows_without_pairs_and_matches_cg_rows():
    """One half-sweep on hand-made sides: rows 1 and 4 have no pairs; conf per pair (not one number)."""
    rng = np.random.default_rng(5)
    rows = np.array([0, 0, 2, 2, 2, 3, 5, 5])
    cols = np.array([0, 3, 1, 2, 3, 0, 1, 2])
    values = np.array([1, 4, 2, 1, 9, 3, 1, 2], np.float32)
    s = IALSSettings(0.1, 1.0, 0.3, 3)
    conf = confidence(values, 2.0, "log", 1.0)
    other = torch.as_tensor(rng.normal(size=(4, 6)), dtype=torch.float32)
    x0 = torch.as_tensor(rng.normal(size=(6, 6)), dtype=torch.float32)
    want = x0.clone()
    ials_half_sweep(ials_side(rows, cols, conf, 6, 4, 6, torch.device("cpu"), s, layout="csr"), want, other, s)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=6))])
    side = ials_cpu._side(indptr, cols, conf, 0.0, 4, 6, s)
    got = x0.clone()
    observed = ials_cpu.fused_half_sweep(side, got, other, s, with_loss=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # float32 CG, summed in another order
    assert torch.equal(got[[1, 4]], x0[[1, 4]])  # no pairs: left as they were
    y = (got[rows] * other[cols]).sum(1).double()
    c = torch.as_tensor(conf).double()
    assert observed == pytest.approx(float((c * (1 - y) ** 2 - 0.3 * y**2).sum()), rel=1e-5)


def _sweep(threads: int, seed: int = 0) -> np.ndarray:
    """One fused half-sweep on a random side (2,000 rows, 64 chunks) with ``threads`` threads."""
    rng = np.random.default_rng(seed)
    indptr = np.arange(0, 2001 * 30, 30, dtype=np.int32)
    cols = rng.integers(0, 500, indptr[-1]).astype(np.int32)
    s = IALSSettings(0.05, 1.0, 0.3, 3)
    side = ials_cpu._side(indptr, cols, None, 2.0, 500, 8, s)
    x = torch.as_tensor(rng.normal(size=(2000, 8)), dtype=torch.float32)
    other = torch.as_tensor(rng.normal(size=(500, 8)), dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        ials_cpu.fused_half_sweep(side, x, other, s)
    finally:
        torch.set_num_threads(before)
    return x.numpy()


def test_half_sweep_gives_the_same_bits_on_any_number_of_threads(monkeypatch):
    started = []
    real = ials_cpu.threading.Thread.start
    monkeypatch.setattr(ials_cpu.threading.Thread, "start", lambda self: started.append(self.name) or real(self))
    one = _sweep(1)
    assert started == []
    for n in (2, 3):
        np.testing.assert_array_equal(_sweep(n), one)
    assert started.count("torchmf-ials") == 1 + 2  # the caller's thread works too
