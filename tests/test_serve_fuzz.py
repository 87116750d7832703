"""Fuzz every operation of the service's OpenAPI schema (schemathesis, in-process ASGI): never a 5xx."""

from __future__ import annotations

import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from test_serve_support import API_KEY, save, train_small
from torchmf.serve import Limits, create_app


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "model"
    save(train_small(seed=0), path)
    titles = path.parent / "items.csv"
    titles.write_text("item,title\n" + "".join(f"{i},Film {i}\n" for i in range(80)))
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHMF_FUZZ_KEY", API_KEY)
    try:
        app = create_app(path, load="now", items=str(titles), api_key_env="TORCHMF_FUZZ_KEY",
                         limits=Limits(max_body_bytes=64 * 1024))
    finally:
        mp.undo()
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case):
    # half the calls without the key: 401 must come before any validation or model work
    headers = {"X-API-Key": API_KEY} if zlib.crc32((repr(case.query) + repr(case.body)).encode()) % 2 else {}
    response = case.call(headers=headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(("application/json", "text/plain", "text/html")), response.headers


@pytest.fixture(scope="module")
def open_schema(tmp_path_factory):
    """No API key: the hot GET routes take the direct dispatch (DirectRoute), fuzzed here too."""
    path = tmp_path_factory.mktemp("fuzz_open") / "model"
    save(train_small(seed=1), path)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(path, load="now", limits=Limits(max_k=20)))


open_hot = schemathesis.pytest.from_fixture("open_schema").include(
    method="GET", path_regex=r"^/v1/(recommend/\{user\}|predict|similar/\{item\})$"
)


@open_hot.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_hot_routes_without_a_key_never_get_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
