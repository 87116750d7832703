"""The CPU thread policy (torchmf.device.thread_policy): choice, restore, and no effect on results."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import torchmf
from torchmf import MatrixFactorization, device
from torchmf.device import MIN_WORK_PER_THREAD, ThreadPolicy, fit_threads, thread_policy

BIG = 64 * MIN_WORK_PER_THREAD


@pytest.fixture
def two_threads():
    """torch at 2 intra-op threads for one test (conftest runs the suite at 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_work_runs_serial():
    # below MIN_WORK_PER_THREAD elements per kernel a parallel region costs more than it saves
    assert fit_threads(MIN_WORK_PER_THREAD - 1, limit=8, busy=0) == 1
    assert fit_threads(0, limit=8, busy=0) == 1


def test_threads_follow_free_cores(monkeypatch):
    monkeypatch.setattr(device, "available_cores", lambda: 4)
    assert fit_threads(BIG, limit=8, busy=0) == 4
    assert fit_threads(BIG, limit=8, busy=1) == 3
    assert fit_threads(BIG, limit=8, busy=3) == 1
    assert fit_threads(BIG, limit=8, busy=10) == 1  # never below one
    assert fit_threads(BIG, limit=2, busy=0) == 2  # never above the caller's limit
    assert fit_threads(3 * MIN_WORK_PER_THREAD, limit=8, busy=0) == 3  # no more threads than the work feeds


def test_busy_cores_sees_a_spinning_process(monkeypatch):
    # all online cores ours: no scaling by this process's share (a container's quota would shrink it)
    monkeypatch.setattr(device, "available_cores", lambda: os.cpu_count() or 1)
    spin = "import time\nend = time.time() + 10\nwhile time.time() < end:\n    pass\n"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        seen = 0
        for _ in range(200):  # the child needs a moment to start; bounded to ~2 s
            seen = max(seen, device.busy_cores())
            if seen:
                break
            time.sleep(0.01)
        assert seen >= 1
    finally:
        child.kill()
        child.wait()


def test_policy_restores_threads_even_on_error(two_threads, monkeypatch):
    monkeypatch.setattr(device, "busy_cores", lambda: 1)
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    with pytest.raises(RuntimeError), thread_policy(BIG, torch.device("cpu")) as policy:
        assert torch.get_num_threads() == 1 == policy.threads
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_policy_adapts_on_refresh(two_threads, monkeypatch):
    busy = [0]
    monkeypatch.setattr(device, "busy_cores", lambda: busy[0])
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    with thread_policy(BIG, torch.device("cpu")) as policy:
        assert torch.get_num_threads() == 2
        busy[0] = 1
        assert policy.refresh() == 2  # rate-limited: not re-read yet
        assert policy.refresh(force=True) == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == 2


def test_policy_off_and_on_gpu_leave_threads_alone(two_threads, monkeypatch):
    monkeypatch.setattr(device, "busy_cores", lambda: 5)
    with ThreadPolicy(BIG, torch.device("cuda")):
        assert torch.get_num_threads() == 2
    monkeypatch.setenv("TORCHMF_THREAD_POLICY", "off")
    with ThreadPolicy(BIG, torch.device("cpu")):
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize(
    "params", [{}, {"solver": "sgd", "epochs": 3}, {"loss": "ials", "epochs": 3}, {"loss": "bpr", "epochs": 2}]
)
def test_fit_is_the_same_with_one_thread_or_two(two_threads, monkeypatch, params):
    """The policy picks the thread count from the machine's load: results must not depend on it."""
    implicit = params.get("loss") in ("ials", "bpr")
    data, _ = torchmf.datasets.synthetic(n_users=300, n_items=200, n_interactions=20000, implicit=implicit, seed=1)
    monkeypatch.setattr(device, "MIN_WORK_PER_THREAD", 1)  # let tiny kernels run on two threads
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    factors = []
    for busy in (0, 1):
        monkeypatch.setattr(device, "busy_cores", lambda b=busy: b)
        model = MatrixFactorization(device="cpu", verbose=False, seed=3, **params).fit(data)
        assert torch.get_num_threads() == 2  # restored after the fit
        factors.append((model.user_factors, model.item_factors))
    np.testing.assert_array_equal(factors[0][0], factors[1][0])
    np.testing.assert_array_equal(factors[0][1], factors[1][1])


def test_gathered_ials_fit_is_the_same_with_one_thread_or_two(two_threads, monkeypatch):
    """A whole fit on the gathered layout, its chunks on two workers or on one thread: the same factors and loss."""
    data, _ = torchmf.datasets.synthetic(n_users=300, n_items=200, n_interactions=20000, implicit=True, seed=1)
    monkeypatch.setattr(device, "_CSR_MAX_OTHER_BYTES", 0)  # both sides gathered
    monkeypatch.setattr(device, "_CHUNK_BYTES_CPU", 1)  # MIN_CHUNK_ENTRIES per chunk: several chunks a side
    monkeypatch.setattr(device, "MIN_WORK_PER_THREAD", 1)
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    fits = []
    for busy in (0, 1):
        monkeypatch.setattr(device, "busy_cores", lambda b=busy: b)
        model = MatrixFactorization(loss="ials", epochs=3, device="cpu", verbose=False, seed=3).fit(data)
        assert torch.get_num_threads() == 2
        fits.append(model)
    np.testing.assert_array_equal(fits[0].user_factors, fits[1].user_factors)
    np.testing.assert_array_equal(fits[0].item_factors, fits[1].item_factors)
    assert fits[0].history_ == fits[1].history_


def _gathered_case(monkeypatch):
    """A side laid out in many gathered chunks (small chunk limit), its factors and the other side's."""
    from torchmf.solvers import ials_layout
    from torchmf.solvers.ials import IALSSettings, confidence, ials_side

    rng = np.random.default_rng(2)
    n_u, n_i, k = 400, 150, 8
    mask = rng.random((n_u, n_i)) < rng.uniform(0.02, 0.5, (n_u, 1))  # a spread of degrees: several buckets
    u, i = np.nonzero(mask)
    s = IALSSettings(reg=0.05, reg_exponent=1.0, unobserved_weight=0.2, cg_steps=3)
    monkeypatch.setattr(ials_layout, "MIN_CHUNK_ENTRIES", 256)
    monkeypatch.setattr(device, "_CHUNK_BYTES_CPU", 256 * 4 * k)
    side = ials_side(u, i, confidence(np.ones(len(u)), 1.0, "linear", 1.0), n_u, n_i, k, torch.device("cpu"), s,
                     layout="gathered")
    g = torch.Generator().manual_seed(0)
    return side, s, torch.randn(n_u, k, generator=g), torch.randn(n_i, k, generator=g)


def test_gathered_chunks_on_two_python_threads_match_one_bitwise(monkeypatch):
    """With two intra-op threads the chunks run on two Python threads of serial kernels: same bits as one thread."""
    from torchmf.solvers.ials import ials_half_sweep

    side, s, P0, Q = _gathered_case(monkeypatch)
    assert len(side.chunks) > 8
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            P = P0.clone()
            loss = ials_half_sweep(side, P, Q, s, with_loss=True)
            assert torch.get_num_threads() == threads  # restored after the workers
            out[threads] = (P, loss)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[1][0], out[2][0])
    assert out[1][1] == out[2][1]  # chunk terms added in chunk order either way
    assert not torch.equal(out[1][0], P0)


def test_gathered_worker_error_reaches_the_caller(monkeypatch):
    """An error inside a worker thread is raised by the half-sweep, and the thread count is restored."""
    from torchmf.solvers import ials as ials_module
    from torchmf.solvers.ials import ials_half_sweep

    side, s, P, Q = _gathered_case(monkeypatch)
    calls = []

    def failing(x, gram, lam, steps, term):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("chunk failed")
        return real(x, gram, lam, steps, term)

    real = ials_module.cg_rows
    monkeypatch.setattr(ials_module, "cg_rows", failing)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="chunk failed"):
            ials_half_sweep(side, P, Q, s)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
