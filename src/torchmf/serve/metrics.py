"""Prometheus metrics of one app, and the ASGI middleware that records them.

Each app has its own registry, so several apps in one process (tests,
embedding) never share counters. With ``--workers N`` every worker process
counts its own requests; Prometheus scrapes whichever worker answers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics", "ServeMiddleware"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """The service's counters, histograms and gauges, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "torchmf_http_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "torchmf_http_request_duration_seconds", "Time to answer a request, by route template, method and status",
            ["route", "method", "status"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.model_info = Gauge(
            "torchmf_model_info", "The model serving now (value 1), labelled with its version", ["version"], registry=r,
        )
        self.model_loaded = Gauge(
            "torchmf_model_loaded_timestamp_seconds", "Unix time the serving model was swapped in", registry=r,
        )
        self.reloads = Counter("torchmf_model_reloads", "Successful model reloads", registry=r)
        self.failed_reloads = Counter(
            "torchmf_model_reload_failures", "Reloads (or the first load) that failed; the old model kept serving",
            registry=r,
        )
        self.batch_size = Histogram(
            "torchmf_topk_batch_size", "Users scored together in one micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self._version: str | None = None
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency.

        The labelled children are looked up once per (route, method, status)
        and kept (``labels()`` takes a lock and builds its key on every call);
        the label set stays bounded because ``route`` is a template or
        ``"unmatched"``.
        """
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            labels = (route, method, str(status))
            pair = self._children.setdefault(key, (self.requests.labels(*labels), self.latency.labels(*labels)))
        pair[0].inc()
        pair[1].observe(seconds)

    def model_event(self, kind: str, payload: Any) -> None:
        """Hook for :class:`~torchmf.serve.store.ModelStore`: count loads and failures."""
        if kind == "failed":
            self.failed_reloads.inc()
            return
        if self._version is not None:
            self.model_info.remove(self._version)
            self.reloads.inc()
        self._version = payload.version
        self.model_info.labels(payload.version).set(1)
        self.model_loaded.set(payload.loaded_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ServeMiddleware:
    """Pure ASGI middleware: body-size limit, then per-route metrics.

    Requests whose body exceeds ``max_body_bytes`` are answered 413 before the
    application reads them (by ``Content-Length``, or while streaming a
    chunked body). Unmatched paths are counted under the route label
    ``"unmatched"`` so random URLs cannot grow the label set.
    """

    def __init__(self, app: Any, metrics: ServeMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        limit = self.max_body_bytes
        length = _content_length(scope)
        try:
            if length is not None and length > limit:
                await _too_large(send_wrapper, limit)
                return
            if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                # chunked body: read it here, up to the limit, and replay it to the app
                chunks, size, more = [], 0, True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    more = message.get("more_body", False)
                    if size > limit:
                        await _too_large(send_wrapper, limit)
                        return
                receive = _replay(b"".join(chunks), receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            label = getattr(scope.get("route"), "path_format", None) or "unmatched"
            self.metrics.observe(label, scope.get("method", ""), status["code"], time.perf_counter() - start)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # e.g. http.disconnect

    return replay


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"error": f"request body too large: the limit is {limit} bytes"}).encode()
    await send({
        "type": "http.response.start", "status": 413,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
