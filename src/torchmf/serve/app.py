"""The FastAPI application: :func:`create_app`.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint
annotations, and the request models are built per app (with its limits).
"""

import gc
import hmac
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchmf.errors import TorchMFError, UnknownIdError
from torchmf.serve import routes
from torchmf.serve.batcher import MicroBatcher
from torchmf.serve.catalogue import ItemSearch, read_catalogue
from torchmf.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics, ServeMiddleware
from torchmf.serve.query import parameters_before_responses
from torchmf.serve.schemas import Error, Health, Limits, ReloadResult, build_schemas
from torchmf.serve.store import LoadedModel, ModelStore

__all__ = ["ServeConfig", "create_app", "freeze_heap"]

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Everything :func:`create_app` can be told (the ``torchmf serve`` options).

    Attributes
    ----------
    model_dir : str
        Folder written by ``MatrixFactorization.save``.
    device : str
        Where the weights live: "cpu", "auto", "cuda", "cuda:N".
    items, item_col, title_col : str, optional
        Item titles (``--items``): a file with a header line; columns
        recognised by name unless given.
    api_key_env : str
        Environment variable holding the API key; when it is set, every
        ``/v1/*`` route needs header ``X-API-Key``.
    watch : bool
        Reload when a new model is saved into ``model_dir``.
    watch_interval : float
        Seconds between checks of ``model_dir``.
    load : {"now", "background"}
        Load the model in :func:`create_app` (errors raise there) or on a
        background thread at startup (``/health/ready`` says 503 until done).
    mmap : bool
        Memory-map the weights (``--workers``: processes share one copy).
    batch_wait : float
        Seconds the top-K micro-batcher waits for company (default 1 ms).
    max_batch : int
        Most users scored in one micro-batch.
    limits : Limits
        Request size limits.
    freeze_gc : bool
        After each model load, collect garbage once and move every object
        alive into the permanent generation (``gc.freeze``), so the cyclic
        collector's full passes no longer walk the model, torch, pandas and
        FastAPI (~250,000 objects): under load those passes paused the event
        loop 100-700 ms every few seconds (the p99 tail). Also raises the
        young-generation threshold (:func:`freeze_heap`). Off by default
        (it changes the whole process); ``torchmf serve`` turns it on.
    """

    model_dir: str
    device: str = "auto"
    items: str | None = None
    item_col: str | None = None
    title_col: str | None = None
    api_key_env: str = "TORCHMF_API_KEY"
    watch: bool = False
    watch_interval: float = 1.0
    load: str = "background"
    mmap: bool = False
    batch_wait: float = 0.001
    max_batch: int = 256
    limits: Limits = field(default_factory=Limits)
    freeze_gc: bool = False

    def __post_init__(self) -> None:
        if self.load not in ("now", "background"):
            raise ValueError(f"load must be 'now' or 'background', got {self.load!r}")
        if not self.watch_interval > 0:
            raise ValueError(f"watch_interval must be positive, got {self.watch_interval!r}")
        if self.batch_wait < 0 or self.max_batch <= 0:
            raise ValueError("batch_wait must be >= 0 and max_batch positive")
        if (self.item_col or self.title_col) and not self.items:
            raise ValueError("item_col and title_col need items (the titles file)")


def api_key_from_env(name: str) -> str | None:
    """The API key in environment variable ``name`` (None when unset); an empty value is an error."""
    key = os.environ.get(name)
    if key is not None and not key.strip():
        raise ValueError(f"environment variable {name} is set but empty; unset it or give a key")
    return key


def create_app(
    model_dir: str | os.PathLike | None = None, config: ServeConfig | None = None, **options: Any
) -> FastAPI:
    """The recommendation service as an ASGI app, for ``uvicorn`` or embedding.

    Parameters
    ----------
    model_dir : path-like, optional
        Model folder (or give ``config``).
    config : ServeConfig, optional
    **options
        :class:`ServeConfig` fields, e.g. ``items="items.csv"``, ``watch=True``,
        ``load="now"``, ``limits=Limits(max_k=100)``.

    Returns
    -------
    fastapi.FastAPI
        ``app.state.store`` is the :class:`ModelStore`, ``app.state.metrics``
        the :class:`ServeMetrics`.

    Raises
    ------
    ModelFileError, DataError
        With ``load="now"``: the model or the titles file cannot be read.
    ValueError
        A bad option, or an empty API key variable.
    """
    if config is None:
        if model_dir is None:
            raise TypeError("create_app needs model_dir or config")
        config = ServeConfig(model_dir=str(model_dir), **options)
    elif options or model_dir is not None:
        raise TypeError("give either config or model_dir and options, not both")
    api_key = api_key_from_env(config.api_key_env)
    metrics = ServeMetrics()
    batcher = MicroBatcher(config.batch_wait, config.max_batch, on_batch=metrics.batch_size.observe)

    def prepare(model: Any) -> dict[str, Any]:
        catalogue = None
        if config.items:
            catalogue = read_catalogue(config.items, model.item_map, config.item_col, config.title_col)
        return {"catalogue": catalogue, "search": ItemSearch(model.item_map, catalogue)}

    built = False  # the first load (load="now") freezes once the app is built too

    def on_event(kind: str, payload: Any) -> None:
        metrics.model_event(kind, payload)
        if kind == "loaded" and config.freeze_gc and built:
            freeze_heap()

    store = ModelStore(config.model_dir, config.device, config.mmap, on_event=on_event, prepare=prepare)
    if config.load == "now":
        store.load(log_failure=False)  # the caller sees the exception

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        if store.current is None and not store.loading:
            store.load_in_background()
        if config.watch:
            store.start_watching(config.watch_interval)
        log.debug("service started")
        yield
        store.stop_watching()
        batcher.stop()

    app = FastAPI(
        title="torchmf",
        summary="Recommendations from a torchmf matrix-factorization model",
        version=_version(),
        lifespan=lifespan,
        responses={
            401: {"model": Error, "description": "missing or wrong API key"},
            413: {"model": Error, "description": "request body too large"},
            422: {"model": Error, "description": "a parameter or body field is invalid"},
            503: {"model": Error, "description": "no model loaded yet"},
        },
    )
    app.state.store, app.state.metrics, app.state.config, app.state.batcher = store, metrics, config, batcher
    app.add_middleware(ServeMiddleware, metrics=metrics, max_body_bytes=config.limits.max_body_bytes)
    _add_error_handlers(app)

    def current() -> LoadedModel:
        """The model serving now; the routes call it first (HTTP 503 before the first load)."""
        lm = store.current
        if lm is None:
            why = f" (last attempt: {store.last_error})" if store.last_error else ""
            raise HTTPException(503, f"no model loaded yet{why}")
        return lm

    dependencies = []
    verify_key = None
    if api_key is not None:
        header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
        expected = api_key.encode()

        def verify_key(key: str | None) -> None:
            if key is None or not hmac.compare_digest(key.encode("utf-8", "surrogateescape"), expected):
                raise HTTPException(401, "missing or wrong API key (send it in the X-API-Key header)")

        async def check_key(key: str | None = Security(header)) -> None:
            verify_key(key)

        dependencies.append(Depends(check_key))
        log.info("API key required on /v1/* (from %s)", config.api_key_env)

    schemas = build_schemas(config.limits)
    v1 = routes.Prefixed(app, "/v1", dependencies, verify_key)
    routes.add_routes(v1, current, batcher, config.limits, schemas, str(config.model_dir))

    @v1.post("/admin/reload", response_model=ReloadResult, responses={409: {"model": Error}}, tags=["admin"])
    async def reload() -> Any:
        """Load the model files in MODEL_DIR again and swap them in; the old model serves until then."""
        from starlette.concurrency import run_in_threadpool

        old = store.current
        try:
            new = await run_in_threadpool(store.load)
        except Exception as exc:
            still = f"; still serving {old.version}" if old is not None else ""
            return JSONResponse({"error": f"reload failed: {store.last_error or exc}{still}"}, status_code=409)
        return {"status": "reloaded", "version": new.version, "previous": None if old is None else old.version}

    @app.get("/health/live", response_model=Health, tags=["health"])
    async def live() -> Any:
        """The process is up."""
        return {"status": "alive"}

    @app.get("/health/ready", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
    async def ready() -> Any:
        """200 when a model is serving (with the last reload failure, if any); 503 before."""
        detail = store.status()
        return JSONResponse(detail, status_code=200 if store.current is not None else 503)

    @app.get("/metrics", response_class=Response, tags=["health"])
    async def prometheus_metrics() -> Response:
        """Prometheus text format: requests and latency per route and status, model version, reloads."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("torchmf.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def explorer() -> HTMLResponse:
        return HTMLResponse(page)

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the hot routes' ``openapi_extra`` parameters where declared ones go."""
        if app.openapi_schema is None:
            app.openapi_schema = parameters_before_responses(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    built = True
    if config.freeze_gc and store.current is not None:
        freeze_heap()
    return app


GC_GEN0_THRESHOLD = 10_000  # allocations between young collections while serving (CPython's default: 700)


def freeze_heap() -> None:
    """Collect garbage, exempt every object alive from future collections, collect the young less often.

    Called after each model load when :attr:`ServeConfig.freeze_gc` is on.
    ``gc.freeze`` moves the model, torch, pandas and FastAPI objects into the
    permanent generation, so full collections only walk what requests
    allocated since. The objects frozen before are unfrozen first, so a
    replaced model's cyclic garbage is collected here (one pause per reload)
    instead of leaking. Requests waiting on the micro-batcher hold many live
    containers (but create almost no cyclic garbage), which at CPython's
    default threshold of 700 triggered a young collection every ~10 requests;
    the threshold is raised to :data:`GC_GEN0_THRESHOLD` (never lowered).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _version() -> str:
    from torchmf.version import __version__

    return __version__


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": message}``; client mistakes are 4xx, never 500."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors[:20]]
        return JSONResponse({"error": _describe(errors), "detail": detail}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = str(exc.detail)
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no such endpoint: {request.url.path}"
        elif exc.status_code == 405:
            msg = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse({"error": msg}, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownIdError)
    async def unknown(request: Request, exc: UnknownIdError) -> JSONResponse:
        return JSONResponse({"error": f"unknown {exc.kind} {exc.raw_id!r}"}, 404)

    @app.exception_handler(TorchMFError)
    async def bad_input(request: Request, exc: TorchMFError) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(exc).split())}, 422)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(exc).split())}, 422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal server error"}, 500)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "tuple", "none", "dict[str,float]"}


def _clean_loc(loc: Any) -> tuple[str, ...]:
    """The error location without pydantic's union-member tags (``'str'``, ``'list[...]'``, ...)."""
    return tuple(
        str(p) for p in loc
        if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p or p.startswith("function-")))
    )


def _describe(errors: list[dict[str, Any]]) -> str:
    """'query parameter 'k': Input should be ...' from pydantic's errors (the first location)."""
    if not errors:
        return "invalid request"
    err = errors[0]
    if err.get("type") == "json_invalid":
        return f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
    loc = _clean_loc(err.get("loc", ()))
    # a union gives one error per member at the same place: say all of them
    msgs = list(dict.fromkeys(str(e.get("msg", "invalid")) for e in errors if _clean_loc(e.get("loc", ())) == loc))
    msg = ", or ".join(msgs)
    if not loc:
        return msg
    where, rest = loc[0], loc[1:]
    kind = {"query": "query parameter", "path": "path parameter", "header": "header", "body": "body field"}.get(
        where, where
    )
    if not rest:
        return f"request body: {msg}" if where == "body" else f"{kind}: {msg}"
    name = rest[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest[1:])
    return f"{kind} {name!r}: {msg}"
