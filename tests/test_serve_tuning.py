"""What ``torchmf serve`` tunes for latency: the event loop and parser, the garbage collector, metrics."""

from __future__ import annotations

import builtins
import gc
from typing import Annotated

import pytest
from fastapi import FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from test_serve_support import save, train_small
from torchmf.serve import create_app
from torchmf.serve.app import GC_GEN0_THRESHOLD, freeze_heap
from torchmf.serve.metrics import ServeMetrics
from torchmf.serve.query import Param, Params
from torchmf.serve.server import event_loop_and_parser


@pytest.fixture()
def restore_gc():
    """Undo freeze_heap's process-wide changes after the test."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_uvloop_and_httptools_are_picked_when_installed():
    # the serve and test extras install them (uvicorn[standard])
    assert event_loop_and_parser() == ("uvloop", "httptools")


def test_falls_back_to_asyncio_and_h11_without_them(monkeypatch, caplog):
    real_import = builtins.__import__

    def no_fast_parts(name, *args, **kwargs):
        if name in ("uvloop", "httptools"):
            raise ImportError(f"no module named {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fast_parts)
    with caplog.at_level("WARNING", logger="torchmf.serve.server"):
        assert event_loop_and_parser() == ("asyncio", "h11")
    assert "uvloop/httptools not installed" in caplog.text


def test_freeze_heap_freezes_and_raises_the_young_threshold(restore_gc):
    gc.set_threshold(700, 10, 10)
    freeze_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
    gc.set_threshold(GC_GEN0_THRESHOLD * 2, 10, 10)
    freeze_heap()  # never lowers a threshold someone raised further
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD * 2


def test_app_freezes_the_heap_only_when_asked(tmp_path, restore_gc):
    path = tmp_path / "model"
    save(train_small(seed=3), path)
    gc.unfreeze()
    create_app(path, load="now")
    assert gc.get_freeze_count() == 0  # embedding apps leave the process's collector alone
    app = create_app(path, load="now", freeze_gc=True)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    with TestClient(app) as client:  # and the app serves as before
        assert client.get("/v1/recommend/3", params={"k": 3}).status_code == 200
        assert client.post("/v1/admin/reload").status_code == 200  # a reload freezes again
    assert gc.get_freeze_count() > 0


def test_metrics_keep_one_child_per_label_set():
    m = ServeMetrics()
    for _ in range(3):
        m.observe("/v1/recommend/{user:path}", "GET", 200, 0.002)
    m.observe("/v1/recommend/{user:path}", "GET", 404, 0.001)
    assert len(m._children) == 2
    text = m.render().decode()
    # 3 answered with 200 and 1 with 404, each once in the histogram's count
    assert 'torchmf_http_requests_total{method="GET",route="/v1/recommend/{user:path}",status="200"} 3.0' in text
    assert 'torchmf_http_requests_total{method="GET",route="/v1/recommend/{user:path}",status="404"} 1.0' in text
    assert ('torchmf_http_request_duration_seconds_count{method="GET",route="/v1/recommend/{user:path}",'
            'status="200"} 3.0') in text


# ---------------------------------------------------------------------- the hot routes' query parser
_PARAMS = Params(
    Param("user", "str", where="path", description="user id"),
    Param("k", "int", 10, description="number of items", ge=1, le=50),
    Param("exclude_seen", "bool", True),
    Param("item", "strs", None, description="candidates", max_items=7),
    Param("who", "str", description="a required one"),
)


def test_params_document_themselves_as_fastapi_documents_declared_parameters():
    app = FastAPI()

    @app.get("/x/{user}")
    async def declared(
        user: Annotated[str, Path(description="user id")],
        who: Annotated[str, Query(description="a required one")],
        k: Annotated[int, Query(ge=1, le=50, description="number of items")] = 10,
        exclude_seen: bool = True,
        item: Annotated[list[str] | None, Query(max_length=7, description="candidates")] = None,
    ) -> None: ...

    generated = {p["name"]: p for p in app.openapi()["paths"]["/x/{user}"]["get"]["parameters"]}
    ours = {p["name"]: p for p in _PARAMS.openapi()["parameters"]}
    for name, want in generated.items():  # key order too: the served schema stays byte-for-byte the same
        assert list(ours[name].items()) == list(want.items()), name
        assert list(ours[name]["schema"].items()) == list(want["schema"].items()), name
    assert set(ours) == set(generated)


def _scope(query: bytes) -> dict:
    return {"path_params": {"user": "u1"}, "query_string": query}


def test_params_parse_like_fastapi():
    q = _PARAMS.parse(_scope(b"who=me&k=3&exclude_seen=off&item=a&item=b&unknown=1"))
    assert q == {"user": "u1", "who": "me", "k": 3, "exclude_seen": False, "item": ["a", "b"]}
    q = _PARAMS.parse(_scope(b"who=a&who=b&k=9&k=4"))  # a repeated scalar: the last value
    assert q == {"user": "u1", "who": "b", "k": 4, "exclude_seen": True, "item": None}
    with pytest.raises(RequestValidationError) as info:
        _PARAMS.parse(_scope(b"k=0&exclude_seen=maybe&item=1&item=2&item=3&item=4&item=5&item=6&item=7&item=8"))
    locs = [tuple(e["loc"]) for e in info.value.errors()]
    assert locs == [("query", "k"), ("query", "exclude_seen"), ("query", "item"), ("query", "who")]
    assert info.value.errors()[-1]["msg"] == "Field required"


def test_hot_routes_keep_their_parameters_in_the_schema(tmp_path):
    save(train_small(seed=0), tmp_path / "m")
    schema = create_app(tmp_path / "m", load="now").openapi()
    op = schema["paths"]["/v1/recommend/{user}"]["get"]
    assert [p["name"] for p in op["parameters"]] == ["user", "k", "exclude_seen", "item", "approximate"]
    assert list(op).index("parameters") < list(op).index("responses")  # where FastAPI puts declared ones
    assert [p["name"] for p in schema["paths"]["/v1/predict"]["get"]["parameters"]] == ["user", "item"]
    assert [p["name"] for p in schema["paths"]["/v1/similar/{item}"]["get"]["parameters"]] == ["item", "k"]


def test_hot_routes_are_called_directly_and_still_check_the_key(tmp_path, monkeypatch):
    from torchmf.serve.routes import DirectRoute

    save(train_small(seed=0), tmp_path / "m")
    hot = {"/v1/recommend/{user:path}", "/v1/predict", "/v1/similar/{item:path}"}
    for key in (None, "s3cret"):
        if key:
            monkeypatch.setenv("TORCHMF_API_KEY", key)
        app = create_app(tmp_path / "m", load="now")
        routes = [r for r in app.routes if getattr(r, "path", None) in hot and "GET" in r.methods]
        assert len(routes) == 3 and all(isinstance(r, DirectRoute) and r.direct for r in routes)
        with TestClient(app) as client:
            headers = {"X-API-Key": key} if key else {}
            assert client.get("/v1/recommend/3?k=2", headers=headers).status_code == 200
            assert client.get("/v1/predict?user=3&item=4", headers=headers).status_code == 200
            assert client.get("/v1/similar/4?k=0", headers=headers).status_code == 422
            if key:  # the key check runs first, before validation
                for bad in ({}, {"X-API-Key": "wrong"}):
                    r = client.get("/v1/recommend/3?k=0", headers=bad)
                    assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
                    assert client.get("/v1/predict?user=3", headers=bad).status_code == 401
            text = client.get("/metrics").text
            assert 'route="/v1/recommend/{user}"' in text and 'route="/v1/similar/{item}"' in text


def test_batcher_call_runs_on_the_scoring_thread_and_returns_each_callers_error():
    # visitor fold-ins run through MicroBatcher.call: one caller's exception must reach that caller only
    import asyncio
    import threading

    from torchmf.serve.batcher import MicroBatcher

    batcher = MicroBatcher()

    def fail() -> None:
        raise KeyError("unknown item 'x'")

    async def go():
        return await asyncio.gather(
            batcher.call(None, lambda: threading.current_thread().name),
            batcher.call(None, fail),
            batcher.call(None, lambda: 41 + 1),
            return_exceptions=True,
        )

    try:
        name, error, value = asyncio.run(go())
    finally:
        batcher.stop()
    assert name == "torchmf-topk" and value == 42
    assert isinstance(error, KeyError) and "unknown item" in str(error)
