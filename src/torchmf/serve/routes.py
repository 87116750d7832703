"""The ``/v1`` endpoints: recommend, session, predict, similar, model, search.

No ``from __future__ import annotations``: FastAPI reads these annotations and
the request models are built per app.
"""

import functools
import re
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import request_response

from torchmf.data.idmap import INT_PATTERN
from torchmf.serve.batcher import MicroBatcher
from torchmf.serve.query import Param, Params
from torchmf.serve.schemas import (
    BatchRecommendations,
    Error,
    Explanation,
    ItemSearchResult,
    Limits,
    ModelInfo,
    Prediction,
    Predictions,
    SessionRecommendations,
    SimilarItems,
    UserRecommendations,
    UserSearchResult,
)
from torchmf.serve.store import LoadedModel

__all__ = ["DirectRoute", "Prefixed", "add_routes"]

_NOT_FOUND = {404: {"model": Error, "description": "unknown user or item"}}
_APPROX = "search the model's approximate (HNSW) index when it has one (torchmf index); exact otherwise"


class Prefixed:
    """``app.get``/``app.post`` under a path prefix with shared dependencies.

    Routes are added to the app itself (not an included router) so each
    request's ``scope["route"]`` carries the full path template for metrics.
    """

    def __init__(self, app: FastAPI, prefix: str, dependencies: list[Any],
                 verify_key: Callable[[str | None], None] | None = None) -> None:
        self.app, self.prefix, self.dependencies, self.verify_key = app, prefix, dependencies, verify_key

    def get(self, path: str, direct: bool = False, **kwargs: Any) -> Callable:
        """``app.get``; ``direct=True`` for an endpoint ``(request) -> Response`` (see :class:`DirectRoute`).

        A direct route checks the API key (``verify_key(header value)``, the
        function the key dependency of the other routes calls) before its
        endpoint runs, and documents it as those routes do.
        """
        if not direct:
            return self.app.get(self.prefix + path, dependencies=self.dependencies, **kwargs)

        def add(endpoint: Callable) -> Callable:
            call, extra = endpoint, dict(kwargs.pop("openapi_extra", None) or {})
            if self.verify_key is not None:
                call = _key_checked(endpoint, self.verify_key)
                extra["security"] = [{"APIKeyHeader": []}]
            self.app.router.add_api_route(self.prefix + path, call, methods=["GET"], openapi_extra=extra or None,
                                          route_class_override=DirectRoute, **kwargs)
            return endpoint

        return add

    def post(self, path: str, **kwargs: Any) -> Callable:
        return self.app.post(self.prefix + path, dependencies=self.dependencies, **kwargs)


def _key_checked(endpoint: Callable[[Request], Any], verify_key: Callable[[str | None], None]) -> Callable:
    @functools.wraps(endpoint)
    async def checked(request: Request) -> Any:
        verify_key(request.headers.get("x-api-key"))  # 401 before any validation or model work
        return await endpoint(request)

    return checked


class DirectRoute(APIRoute):
    """A route whose endpoint takes only the ``Request`` and returns a ``Response``: called directly.

    For such an endpoint FastAPI's handler has nothing to resolve or serialise,
    yet builds three exit stacks, an error context and a dependency solution
    per request (about a third of a top-10 request's CPU time). The route is
    still a FastAPI route (OpenAPI, ``scope["route"]`` for metrics, the app's
    exception handlers); a route given dependencies gets FastAPI's handler,
    which runs them as usual.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        d = self.dependant
        bare = not (d.dependencies or d.path_params or d.query_params or d.header_params or d.cookie_params
                    or d.body_params)
        self.direct = bare and d.request_param_name is not None
        if self.direct:
            self.app = request_response(endpoint)


def add_routes(
    router: Prefixed,
    current: Callable[[], LoadedModel],
    batcher: MicroBatcher,
    limits: Limits,
    schemas: dict[str, Any],
    model_dir: str,
) -> None:
    """Add the ``/v1`` routes; ``current()`` gives the model serving now (or raises 503)."""
    K = Annotated[int, Query(ge=1, le=limits.max_k, description="number of items")]
    RecommendRequest = schemas["RecommendRequest"]
    SessionRequest = schemas["SessionRequest"]
    PredictRequest = schemas["PredictRequest"]

    recommend_params = Params(
        Param("user", "str", where="path", description="user id, as in the training file"),
        Param("k", "int", 10, description="number of items", ge=1, le=limits.max_k),
        Param("exclude_seen", "bool", True),
        Param("item", "strs", None, description="restrict to these candidate items (repeatable)",
              max_items=limits.max_interactions),
        Param("approximate", "bool", False, description=_APPROX),
    )

    @router.get("/recommend/{user:path}", direct=True, response_model=UserRecommendations, responses=_NOT_FOUND,
                tags=["recommend"], openapi_extra=recommend_params.openapi())
    async def recommend_user(request: Request) -> Any:
        """Top-k items for one user, best first: ``model.recommend(user, k)``."""
        q = recommend_params.parse(request.scope)
        k, exclude_seen, item, approximate = q["k"], q["exclude_seen"], q["item"], q["approximate"]
        lm = current()
        m = lm.model
        raw = _resolve(m.user_map, q["user"])
        if item:
            cands = list(dict.fromkeys(_resolve(m.item_map, t) for t in item))
            df = await run_in_threadpool(m.recommend, raw, k, exclude_seen, cands, approximate)
            return _json(lm, {"user": raw, "items": _scored(lm, df["item"].tolist(), df["score"].to_numpy())})
        items, scores = await batcher.top_k(m, m.user_map.index(raw), k, exclude_seen, approximate)
        keep = items >= 0
        return _json(lm, {"user": raw, "items": _scored(lm, m.item_map.raw(items[keep]).tolist(), scores[keep])})

    @router.post("/recommend", response_model=BatchRecommendations, responses=_NOT_FOUND, tags=["recommend"])
    async def recommend_users(body: RecommendRequest) -> Any:
        """Top-k items for each of a list of users, scored as one batch."""
        lm = current()
        m = lm.model
        raws = [_resolve(m.user_map, u) for u in body.users]
        idx = m.user_map.indices(raws)
        items, scores = await run_in_threadpool(
            lambda: m.top_k(idx, body.k, body.exclude_seen, approximate=body.approximate)
        )
        results = []
        for j, raw in enumerate(raws):
            keep = items[j] >= 0
            ranked = m.item_map.raw(items[j][keep]).tolist()
            results.append({"user": raw, "items": _scored(lm, ranked, scores[j][keep])})
        return _json(lm, {"results": results})

    @router.post("/recommend/session", response_model=SessionRecommendations, responses=_NOT_FOUND,
                 tags=["recommend"])
    async def recommend_session(body: SessionRequest) -> Any:
        """Top-k items for a visitor the model has never seen, from a few of their interactions.

        The visitor is folded in (their factors fitted with the items held fixed)
        and nothing is stored; the items given are not recommended back.
        """
        lm = current()
        m = lm.model
        if isinstance(body.interactions, dict):
            given: Any = {}
            for text, value in body.interactions.items():
                raw = _resolve(m.item_map, text)
                if raw in given:
                    raise ValueError(f"body field 'interactions': item {text!r} appears twice")
                given[raw] = value
        else:
            given = list(dict.fromkeys(_resolve(m.item_map, t) for t in body.interactions))
        def rank() -> tuple[list, Any]:
            top, scores = m.top_k_for(given, k=body.k, exclude_seen=True)
            return m.item_map.raw(top).tolist(), scores

        ranked, scores = await batcher.call(m, rank)
        return _json(lm, {"items": _scored(lm, ranked, scores)})

    predict_params = Params(Param("user", "str", description="user id"), Param("item", "str", description="item id"))

    @router.get("/predict", direct=True, response_model=Prediction, responses=_NOT_FOUND, tags=["predict"],
                openapi_extra=predict_params.openapi())
    async def predict_one(request: Request) -> Any:
        """The model's score (predicted rating, for explicit models) of one (user, item) pair."""
        q = predict_params.parse(request.scope)
        lm = current()
        m = lm.model
        u, i = _resolve(m.user_map, q["user"]), _resolve(m.item_map, q["item"])
        return _json(lm, {"user": u, "item": i, "score": _num(await batcher.predict(m, u, i))})

    @router.post("/predict", response_model=Predictions, responses=_NOT_FOUND, tags=["predict"])
    async def predict_many(body: PredictRequest) -> Any:
        """Scores of many (user, item) pairs."""
        lm = current()
        m = lm.model
        users = [_resolve(m.user_map, u) for u, _ in body.pairs]
        items = [_resolve(m.item_map, i) for _, i in body.pairs]
        scores = await run_in_threadpool(m.predict, users, items)
        return _json(lm, {"predictions": [
            {"user": u, "item": i, "score": _num(s)} for u, i, s in zip(users, items, np.asarray(scores).tolist(),
                                                                        strict=True)
        ]})

    similar_params = Params(Param("item", "str", where="path", description="item id"),
                            Param("k", "int", 10, description="number of items", ge=1, le=limits.max_k))

    @router.get("/similar/{item:path}", direct=True, response_model=SimilarItems, responses=_NOT_FOUND,
                tags=["similar"], openapi_extra=similar_params.openapi())
    async def similar(request: Request) -> Any:
        """Items whose factors are closest (cosine) to the item's."""
        q = similar_params.parse(request.scope)
        item, k = q["item"], q["k"]
        lm = current()
        m = lm.model
        raw = _resolve(m.item_map, item)
        df = await run_in_threadpool(m.similar_items, raw, k)
        out: dict[str, Any] = {"item": raw, "items": _scored(lm, df["item"].tolist(), df["score"].to_numpy())}
        title = _title(lm, raw)
        if title is not None:
            out["title"] = title
        return _json(lm, out)

    @router.get("/explain/{user}/{item}", response_model=Explanation, responses=_NOT_FOUND, tags=["explain"])
    async def explain(user: Annotated[str, Path(description="user id")],
                      item: Annotated[str, Path(description="item id")], k: K = 10) -> Any:
        """Which of the user's own items contributed most to their score of the item (``model.explain``)."""
        lm = current()
        m = lm.model
        u, i = _resolve(m.user_map, user), _resolve(m.item_map, item)
        df = await run_in_threadpool(m.explain, u, i, k)
        rows = []
        for it, c, v in zip(df["item"].tolist(), df["contribution"].tolist(), df["value"].tolist(), strict=True):
            row: dict[str, Any] = {"item": it, "contribution": _num(c), "value": _num(v)}
            title = _title(lm, it)
            if title is not None:
                row["title"] = title
            rows.append(row)
        return _json(lm, {"user": u, "item": i, "items": rows})

    @router.get("/model", response_model=ModelInfo, tags=["model"])
    async def model_info() -> Any:
        """Hyperparameters, sizes, training summary, checksum, version and load time of the serving model."""
        lm = current()
        return _json(lm, _model_info(lm, model_dir))

    @router.get("/items", response_model=ItemSearchResult, tags=["search"])
    async def search_items(
        q: Annotated[str, Query(max_length=200, description="text in the id or title")] = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Any:
        """Items whose id or title contains ``q`` (case-insensitive)."""
        lm = current()
        return _json(lm, {"items": lm.extras["search"].find(q, limit)})

    @router.get("/users", response_model=UserSearchResult, tags=["search"])
    async def search_users(
        q: Annotated[str, Query(max_length=200, description="text in the id")] = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Any:
        """Users whose id contains ``q``, for pickers."""
        lm = current()
        ids = lm.model.user_map.ids
        ql = q.strip().lower()
        hits = [u for u in ids if ql in str(u).lower()][:limit] if ql else ids[:limit]
        return _json(lm, {"users": hits})



_INT = re.compile(INT_PATTERN)


def _resolve(idmap: Any, text: Any) -> Any:
    """``idmap.resolve(text)``, with fast paths for an exact id and a canonical integer.

    (``IdMap.resolve`` lists every id to return an int match, O(n) per call, and
    a failed ``IdMap.index`` builds a hint by resolving; these paths are two
    hash look-ups, without exceptions, and defer every other case to it.)
    """
    if text in idmap:
        return text
    if isinstance(text, str) and _INT.fullmatch(text.strip()):
        n = int(text)
        if n in idmap:
            return n
    return idmap.resolve(text)  # the other cases, and the error naming the id


def _num(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _title(lm: LoadedModel, item: Any) -> str | None:
    cat = lm.extras.get("catalogue")
    return None if cat is None else cat.title(item)


def _scored(lm: LoadedModel, items: list[Any], scores: np.ndarray) -> list[dict[str, Any]]:
    """``[{"item", "score"[, "title"]}]`` from raw ids and float scores, shape (n,)."""
    values = scores.astype(np.float64).tolist()
    if not np.isfinite(scores).all():
        values = [_num(s) for s in values]
    cat = lm.extras.get("catalogue")
    if cat is None:
        return [{"item": i, "score": s} for i, s in zip(items, values, strict=True)]
    return [{"item": i, "score": s, "title": cat.title(i)} for i, s in zip(items, values, strict=True)]


def _plain(v: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _model_info(lm: LoadedModel, model_dir: str) -> dict[str, Any]:
    m = lm.model
    hist = list(m.history_ or [])
    best = m.best_epoch_
    training: dict[str, Any] = {"epochs_run": len(hist), "best_epoch": best}
    if hist:
        training["first_epoch"] = hist[0]
        training["last_epoch"] = hist[-1]
        if best is not None and 1 <= best <= len(hist):
            training["best"] = hist[best - 1]
    ranking = bool(m.is_ranking)
    return _plain({
        "version": lm.version,
        "checksum": f"sha256:{lm.checksum}",
        "loaded_at": lm.loaded_at_iso,
        "model_dir": model_dir,
        "users": len(m.user_map),
        "items": len(m.item_map),
        "training_interactions": len(m.seen_indices_),
        "feedback": "implicit" if m.implicit_ else "explicit",
        "ranking_scores": ranking,
        "rating_range": None if ranking else [float(x) for x in m.rating_range_],
        "hyperparameters": {k: v for k, v in m.effective_params.items() if k != "verbose"},
        "approximate_index": None if m.index_ is None else {"kind": m.index_.kind, **getattr(m.index_, "info", {})},
        "training": training,
    })


def _json(lm: LoadedModel, body: dict[str, Any]) -> Response:
    """The JSON response (orjson: plain lists and dicts, non-finite floats already None), with header
    ``X-Model-Version`` naming the model that computed it."""
    return Response(orjson.dumps(body), media_type="application/json", headers={"X-Model-Version": lm.version})
