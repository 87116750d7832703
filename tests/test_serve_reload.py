"""Safe reload: swaps under load with zero failed requests; broken models never replace a good one.

Each test runs a real uvicorn server on 127.0.0.1 (a free port) in a thread and
drives it from client threads for a bounded time and request count.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import httpx
import pytest

from test_serve_support import live_server, save, train_small
from torchmf.serve import create_app
from torchmf.serve.store import model_checksum

LOAD_SECONDS = 4.0  # upper bound on each load phase
MAX_REQUESTS = 3000  # per client thread


@pytest.fixture
def two_models():
    return train_small(seed=0), train_small(seed=1)


def _hammer(base: str, stop: threading.Event, results: Counter, versions: set, errors: list) -> None:
    """GET recommendations on one keep-alive connection until ``stop`` (bounded by count)."""
    with httpx.Client(base_url=base, timeout=10) as c:
        for n in range(MAX_REQUESTS):
            if stop.is_set():
                break
            try:
                r = c.get(f"/v1/recommend/{n % 120}", params={"k": 5})
                results[r.status_code] += 1
                if r.status_code != 200:
                    errors.append(r.text)
                versions.add(r.headers.get("x-model-version"))
            except httpx.HTTPError as exc:  # a dropped connection counts as a failure
                results["exception"] += 1
                errors.append(repr(exc))


def _under_load(base: str, action, n_clients: int = 4) -> tuple[Counter, set, list]:
    stop, results, versions, errors = threading.Event(), Counter(), set(), []
    threads = [threading.Thread(target=_hammer, args=(base, stop, results, versions, errors)) for _ in range(n_clients)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: results[200] >= 10)  # traffic flowing before the swap
        action()
        time.sleep(0.3)  # and after it
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=LOAD_SECONDS + 10)
    return results, versions, errors


def _wait_for(predicate, seconds: float = LOAD_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_admin_reload_under_load_fails_no_request(tmp_path, two_models):
    old, new = two_models
    path = tmp_path / "model"
    save(old, path)
    v_old = model_checksum(path)[:12]
    with live_server(create_app(path, load="now")) as base:

        def swap() -> None:
            save(new, path)  # an atomic rename into MODEL_DIR, as training does
            r = httpx.post(f"{base}/v1/admin/reload", timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["previous"] == v_old

        results, versions, errors = _under_load(base, swap)
        v_new = model_checksum(path)[:12]
        assert errors == [] and set(results) == {200}
        assert results[200] > 10  # the clients really ran throughout
        assert v_new != v_old and httpx.get(f"{base}/v1/model").json()["version"] == v_new
        assert versions == {v_old, v_new}  # X-Model-Version: which model answered each request
        # the new model answers now: its own recommendation for user 3
        got = httpx.get(f"{base}/v1/recommend/3", params={"k": 5}).json()["items"]
        assert [e["item"] for e in got] == new.recommend(3, k=5)["item"].tolist()
        metrics = httpx.get(f"{base}/metrics").text
        assert "torchmf_model_reloads_total 1.0" in metrics
        assert f'torchmf_model_info{{version="{v_new}"}} 1.0' in metrics
        assert f'version="{v_old}"' not in metrics


def test_watch_picks_up_a_new_save_under_load(tmp_path, two_models):
    old, new = two_models
    path = tmp_path / "model"
    save(old, path)
    with live_server(create_app(path, load="now", watch=True, watch_interval=0.05)) as base:
        v_new = {}

        def swap() -> None:
            save(new, path)
            v_new["v"] = model_checksum(path)[:12]
            assert _wait_for(lambda: httpx.get(f"{base}/health/ready").json()["version"] == v_new["v"])

        results, _, errors = _under_load(base, swap)
        assert errors == [] and set(results) == {200}
        assert httpx.get(f"{base}/health/ready").json()["reloads"] == 1


def test_a_broken_model_leaves_the_old_one_serving(tmp_path, two_models):
    old, _ = two_models
    path = tmp_path / "model"
    save(old, path)
    v_old = model_checksum(path)[:12]
    with live_server(create_app(path, load="now", watch=True, watch_interval=0.05)) as base:

        def corrupt_and_reload() -> None:
            weights = next(path.glob("weights-*.safetensors"))  # the format-2 content-addressed weights file
            weights.write_bytes(weights.read_bytes()[:-16])  # a truncated copy
            r = httpx.post(f"{base}/v1/admin/reload", timeout=30)
            assert r.status_code == 409
            assert "truncated or modified" in r.json()["error"] and f"still serving {v_old}" in r.json()["error"]

        results, versions, errors = _under_load(base, corrupt_and_reload)
        assert errors == [] and set(results) == {200} and versions == {v_old}
        ready = httpx.get(f"{base}/health/ready")
        assert ready.status_code == 200 and ready.json()["version"] == v_old
        assert "truncated or modified" in ready.json()["last_reload_error"]
        assert ready.json()["failed_reloads"] >= 1
        metrics = httpx.get(f"{base}/metrics").text
        failures = re.search(r"^torchmf_model_reload_failures_total (\S+)$", metrics, re.M)
        assert failures is not None and float(failures.group(1)) == ready.json()["failed_reloads"]
        time.sleep(0.3)  # the watcher saw the same broken files: it does not retry them every poll
        assert httpx.get(f"{base}/health/ready").json()["failed_reloads"] == ready.json()["failed_reloads"]


def test_a_save_landing_during_a_load_is_read_again(tmp_path, two_models, monkeypatch):
    from torchmf.estimator.mf import MatrixFactorization
    from torchmf.serve.store import ModelStore

    old, new = two_models
    path = tmp_path / "model"
    save(old, path)
    real_load = MatrixFactorization.load.__func__
    calls = []

    def racing_load(cls, folder, **kwargs):
        model = real_load(cls, folder, **kwargs)
        calls.append(folder)
        if len(calls) == 1:
            save(new, path)  # a trainer saves while the service is reading
        return model

    monkeypatch.setattr(MatrixFactorization, "load", classmethod(racing_load))
    store = ModelStore(path, device="cpu")
    loaded = store.load()
    assert len(calls) == 2 and loaded.checksum == model_checksum(path)
    assert loaded.model.recommend(3, k=5)["item"].tolist() == new.recommend(3, k=5)["item"].tolist()
