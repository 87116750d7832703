"""The HTTP service's endpoints and error classes, in-process (FastAPI TestClient)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from test_serve_support import API_KEY, save, train_small
from torchmf.serve import Limits, create_app
from torchmf.serve.batcher import MicroBatcher


@pytest.fixture(scope="module")
def model():
    return train_small(seed=0)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model"
    save(model, path)
    return path


@pytest.fixture(scope="module")
def titles(tmp_path_factory):
    path = tmp_path_factory.mktemp("titles") / "items.csv"
    lines = ["movie_id,name"] + [f"{i},Film number {i}" for i in range(80)] + ["9999,Not in the model"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(model_dir, load="now", limits=Limits(max_k=50, max_body_bytes=4096))) as c:
        yield c


def _pairs(items):
    return [(e["item"], e["score"]) for e in items]


# ---------------------------------------------------------------------- recommend
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_matches_the_estimator(client, model, exclude_seen):
    for user in (0, 7, 119):
        r = client.get(f"/v1/recommend/{user}", params={"k": 5, "exclude_seen": exclude_seen})
        assert r.status_code == 200, r.text
        body = r.json()
        want = model.recommend(user, k=5, exclude_seen=exclude_seen)
        assert body["user"] == user
        assert [e["item"] for e in body["items"]] == want["item"].tolist()
        np.testing.assert_allclose([e["score"] for e in body["items"]], want["score"], rtol=1e-5)


def test_recommend_default_k_and_seen_items_left_out(client, model):
    items = [e["item"] for e in client.get("/v1/recommend/3").json()["items"]]
    assert len(items) == 10  # the default k
    seen = set(model.item_map.raw(model.seen_items(model.user_map.index(3))).tolist())
    assert not seen & set(items)


def test_recommend_restricted_to_candidates(client, model):
    cands = [5, 6, 7, 8, 9, 10]
    r = client.get("/v1/recommend/4", params=[("k", 3)] + [("item", str(c)) for c in cands])
    want = model.recommend(4, k=3, items=cands)
    assert [e["item"] for e in r.json()["items"]] == want["item"].tolist()


def test_ids_resolve_like_the_cli(client):
    assert client.get("/v1/recommend/7").status_code == 200  # "7" finds the int id 7
    r = client.get("/v1/recommend/007")  # never a zero-padded spelling
    assert r.status_code == 404
    assert r.json() == {"error": "unknown user '007'"}
    r = client.get("/v1/recommend/4", params={"item": "nope"})
    assert r.status_code == 404 and r.json() == {"error": "unknown item 'nope'"}


def test_batch_recommend_scores_users_together(client, model):
    r = client.post("/v1/recommend", json={"users": [1, "2", 1], "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["user"] for x in results] == [1, 2, 1]
    for x in results:
        want = model.recommend(x["user"], k=4)
        assert [e["item"] for e in x["items"]] == want["item"].tolist()
    r = client.post("/v1/recommend", json={"users": [1, 12345]})
    assert r.status_code == 404 and r.json()["error"] == "unknown user 12345"


def test_session_recommendations_fold_in_a_visitor(client, model):
    given = {"3": 5.0, "10": 1.0, "22": 4.5}
    r = client.post("/v1/recommend/session", json={"interactions": given, "k": 6})
    assert r.status_code == 200, r.text
    # expected: the same visitor folded into a private copy of the estimator
    m = copy.deepcopy(model)
    m.fold_in("visitor", {3: 5.0, 10: 1.0, 22: 4.5})
    want = m.recommend("visitor", k=6)
    got = r.json()["items"]
    assert [e["item"] for e in got] == want["item"].tolist()
    assert not {3, 10, 22} & {e["item"] for e in got}
    assert "visitor" not in model.user_map and len(model.user_map) == 120  # nothing stored


def test_session_errors(client):
    r = client.post("/v1/recommend/session", json={"interactions": {"500": 3}, "k": 3})
    assert r.status_code == 404 and r.json()["error"] == "unknown item '500'"
    r = client.post("/v1/recommend/session", json={"interactions": ["3", "10"], "k": 3})
    assert r.status_code == 422 and "{item: rating}" in r.json()["error"]  # an explicit model needs ratings
    r = client.post("/v1/recommend/session", json={"interactions": {}, "k": 3})
    assert r.status_code == 422 and "interactions" in r.json()["error"]
    r = client.post("/v1/recommend/session", content=b'{"interactions": {"3": NaN}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "interactions" in r.json()["error"]


# ---------------------------------------------------------------------- predict, similar, model
def test_predict_one_and_many(client, model):
    r = client.get("/v1/predict", params={"user": "5", "item": "6"})
    assert r.status_code == 200
    assert r.json()["user"] == 5 and r.json()["item"] == 6
    assert r.json()["score"] == pytest.approx(model.predict(5, 6), rel=1e-6)
    r = client.post("/v1/predict", json={"pairs": [[5, 6], ["7", "8"]]})
    got = [p["score"] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, model.predict([5, 7], [6, 8]), rtol=1e-6)
    assert client.get("/v1/predict", params={"user": "5", "item": "x"}).json() == {"error": "unknown item 'x'"}
    r = client.post("/v1/predict", json={"pairs": [[5]]})
    assert r.status_code == 422 and "pairs[0]" in r.json()["error"]


def test_similar_items(client, model):
    r = client.get("/v1/similar/12", params={"k": 4})
    want = model.similar_items(12, k=4)
    assert r.json()["item"] == 12
    assert [e["item"] for e in r.json()["items"]] == want["item"].tolist()
    assert client.get("/v1/similar/abc").status_code == 404


def test_model_info(client, model, model_dir):
    info = client.get("/v1/model").json()
    digest = hashlib.sha256((model_dir / "torchmf.json").read_bytes()).hexdigest()
    assert info["checksum"] == f"sha256:{digest}" and info["version"] == digest[:12]
    assert info["users"] == 120 and info["items"] == 80 and info["feedback"] == "explicit"
    assert info["hyperparameters"]["factors"] == 8
    assert info["training"]["epochs_run"] == len(model.history_) == 4
    assert info["loaded_at"].endswith("+00:00")


def test_search_users_and_items(client):
    assert client.get("/v1/users", params={"q": "11", "limit": 3}).json()["users"] == [11, 110, 111]
    items = client.get("/v1/items", params={"q": "7"}).json()["items"]
    assert items[0] == {"item": 7}  # exact id first, then ids containing "7"
    assert {e["item"] for e in items} >= {17, 27, 70}


def test_titles_from_an_items_file(model_dir, titles):
    app = create_app(model_dir, load="now", items=str(titles), item_col="movie_id", title_col="name")
    with TestClient(app) as c:
        first = c.get("/v1/recommend/1", params={"k": 2}).json()["items"][0]
        assert first["title"] == f"Film number {first['item']}"
        hits = c.get("/v1/items", params={"q": "number 42"}).json()["items"]
        assert hits == [{"item": 42, "title": "Film number 42"}]


# ---------------------------------------------------------------------- errors are 4xx JSON
@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/recommend/1?k=0", "'k'"),
        ("/v1/recommend/1?k=51", "'k'"),  # above max_k
        ("/v1/recommend/1?k=ten", "'k'"),
        ("/v1/recommend/1?exclude_seen=maybe", "'exclude_seen'"),
        ("/v1/similar/1?k=-3", "'k'"),
        ("/v1/predict?user=1", "'item'"),
    ],
)
def test_bad_query_parameters_are_422_naming_the_field(client, url, field):
    r = client.get(url)
    assert r.status_code == 422
    assert field in r.json()["error"] and r.json()["error"].startswith("query parameter")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"users": "1"}', "'users'"),
        (b'{"users": []}', "'users'"),
        (b'{"users": [1.5]}', "'users[0]'"),
        (b'{"users": [1], "k": "many"}', "'k'"),
        (b'{"users": [1], "colour": "red"}', "'colour'"),
        (b"[1, 2]", "request body"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(client, body, field):
    r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert field in r.json()["error"]


def test_oversized_bodies_are_413(client):
    big = json.dumps({"users": list(range(2000))}).encode()  # > max_body_bytes=4096
    r = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is applied while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_routes_and_methods_are_json(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json() == {"error": "no such endpoint: /v2/nothing"}
    r = client.delete("/v1/model")
    assert r.status_code == 405 and "DELETE" in r.json()["error"]


# ---------------------------------------------------------------------- auth
def test_api_key_guards_v1_but_not_health_or_metrics(model_dir, monkeypatch):
    monkeypatch.setenv("MY_KEY", API_KEY)
    with TestClient(create_app(model_dir, load="now", api_key_env="MY_KEY")) as c:
        assert c.get("/v1/recommend/1").status_code == 401
        r = c.get("/v1/recommend/1", headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
        assert c.post("/v1/admin/reload").status_code == 401
        assert c.get("/v1/recommend/1", headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.post("/v1/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
        for open_path in ("/health/live", "/health/ready", "/metrics", "/"):
            assert c.get(open_path).status_code == 200
        assert API_KEY not in c.get("/metrics").text


def test_empty_api_key_is_refused(model_dir, monkeypatch):
    monkeypatch.setenv("TORCHMF_API_KEY", " ")
    with pytest.raises(ValueError, match="TORCHMF_API_KEY is set but empty"):
        create_app(model_dir, load="now")


# ---------------------------------------------------------------------- health, metrics, page
def test_ready_is_503_until_a_model_loads(tmp_path, model):
    path = tmp_path / "later"
    with TestClient(create_app(path)) as c:  # background load of a folder that does not exist yet
        assert c.get("/health/live").status_code == 200
        for _ in range(200):
            r = c.get("/health/ready")
            if not r.json()["reloading"]:
                break
        assert r.status_code == 503 and "no such folder" in r.json()["last_reload_error"]
        r = c.get("/v1/recommend/1")
        assert r.status_code == 503 and r.json()["error"].startswith("no model loaded yet")
        save(model, path)
        assert c.post("/v1/admin/reload").status_code == 200
        assert c.get("/health/ready").status_code == 200
        assert c.get("/v1/recommend/1").status_code == 200


def test_metrics_count_requests_per_route_and_status(client):
    client.get("/v1/recommend/1")
    client.get("/v1/recommend/nobody")
    client.get("/some/random/path")
    text = client.get("/metrics").text
    assert 'torchmf_http_requests_total{method="GET",route="/v1/recommend/{user}",status="200"}' in text
    assert 'torchmf_http_requests_total{method="GET",route="/v1/recommend/{user}",status="404"}' in text
    assert 'route="unmatched",status="404"' in text  # random paths never become labels
    assert "torchmf_http_request_duration_seconds_bucket" in text
    version = client.get("/v1/model").json()["version"]
    assert f'torchmf_model_info{{version="{version}"}} 1.0' in text
    assert "torchmf_model_reload_failures_total 0.0" in text


def test_explorer_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "torchmf explorer" in r.text and "/v1/recommend/session" in r.text


# ---------------------------------------------------------------------- micro-batching
def test_batcher_scores_concurrent_requests_in_one_call(model):
    sizes = []
    batcher = MicroBatcher(max_wait=0.2, on_batch=sizes.append)  # a long window: all 12 arrive within it

    async def many():
        return await asyncio.gather(*[batcher.top_k(model, u, 3 + u % 4, exclude_seen=u % 2 == 0) for u in range(12)])

    try:
        results = asyncio.run(many())
    finally:
        batcher.stop()
    assert sizes == [12]
    for u, (items, scores) in enumerate(results):
        want_items, want_scores = model.top_k(np.array([u]), 3 + u % 4, exclude_seen=u % 2 == 0)
        np.testing.assert_array_equal(items, want_items[0])
        np.testing.assert_allclose(scores, want_scores[0], rtol=1e-5)


def test_k_above_the_catalogue_returns_every_eligible_item(model_dir, model):
    with TestClient(create_app(model_dir, load="now")) as c:  # default max_k 1000 > 80 items
        got = c.get("/v1/recommend/2", params={"k": 1000}).json()["items"]
        n_seen = len(model.seen_items(model.user_map.index(2)))
        assert len(got) == 80 - n_seen
        assert len(c.get("/v1/similar/2", params={"k": 1000}).json()["items"]) == 79


def test_implicit_model_session_from_a_list(tmp_path):
    model = train_small(seed=2, implicit=True)
    save(model, tmp_path / "implicit")
    with TestClient(create_app(tmp_path / "implicit", load="now")) as c:
        info = c.get("/v1/model").json()
        assert info["feedback"] == "implicit" and info["ranking_scores"] and info["rating_range"] is None
        r = c.post("/v1/recommend/session", json={"interactions": [4, "5", 6], "k": 5})
        assert r.status_code == 200, r.text
        want = model.recommend_for([4, 5, 6], k=5)
        assert [e["item"] for e in r.json()["items"]] == want["item"].tolist()


def test_batcher_splits_a_batch_to_bound_the_score_block(model, monkeypatch):
    import torchmf.serve.batcher as batcher_module

    monkeypatch.setattr(batcher_module, "SCORE_BUDGET", 2 * 80)  # two users' scores over 80 items per product
    calls = []
    real_top_k = type(model).top_k

    def counting(self, users, k, **kwargs):
        calls.append(len(users))
        return real_top_k(self, users, k, **kwargs)

    monkeypatch.setattr(type(model), "top_k", counting)
    batcher = MicroBatcher(max_wait=0.2)

    async def many():
        return await asyncio.gather(*[batcher.top_k(model, u, 4, exclude_seen=True) for u in range(5)])

    try:
        results = asyncio.run(many())
    finally:
        batcher.stop()
    assert calls == [2, 2, 1]
    for u, (items, _) in enumerate(results):
        np.testing.assert_array_equal(items, real_top_k(model, np.array([u]), 4)[0][0])


def test_approximate_search_uses_the_saved_index(tmp_path):
    model = train_small(seed=3)
    model.build_index("hnsw", m=8, ef_construction=40, ef_search=20, n_recall=50)
    save(model, tmp_path / "ann")
    with TestClient(create_app(tmp_path / "ann", load="now")) as c:
        info = c.get("/v1/model").json()["approximate_index"]
        assert info["kind"] == "hnsw" and 0 <= info["recall_at_10"] <= 1
        for user in (0, 9):
            got = c.get(f"/v1/recommend/{user}", params={"k": 5, "approximate": "true"}).json()["items"]
            want = model.recommend(user, k=5, approximate=True)
            assert [e["item"] for e in got] == want["item"].tolist()
        r = c.post("/v1/recommend", json={"users": [0, 9], "k": 5, "approximate": True})
        assert [e["item"] for e in r.json()["results"][1]["items"]] == want["item"].tolist()
