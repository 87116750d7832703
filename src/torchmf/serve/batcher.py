"""Micro-batching of concurrent single-user requests (top-K and predictions).

Requests for single users arrive one by one; scoring them one at a time wastes
most of a matrix product (and the estimator's per-call overhead). The
:class:`MicroBatcher` queues them, and a scoring thread takes whatever arrived
within ``max_wait`` seconds of the first (and everything that queued while the
previous batch was scored), scores each group sharing a model and settings
with one ``model.top_k`` or ``model.predict`` call, and hands each caller its
row. The event loop only enqueues and awaits, so it stays free to parse the
next requests while the scoring thread computes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)


@dataclass
class _Request:
    model: Any  # a MatrixFactorization
    kind: str  # "top_k", "predict" or "call"
    group: Any  # requests with equal (model, kind, group) are scored together
    payload: Any  # top_k: (user_index, k); predict: (user, item) raw ids; call: a function of no arguments
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class MicroBatcher:
    """Gathers concurrent single-user requests into batched ``top_k`` / ``predict`` calls.

    Parameters
    ----------
    max_wait : float
        Seconds to wait for more requests after the first one of an idle
        period (default 1 ms). Requests that queue while a batch is being
        scored go into the next batch without waiting.
    max_batch : int
        Most users scored in one call.
    on_batch : callable, optional
        ``on_batch(size)`` after each scored batch (metrics).
    """

    def __init__(
        self, max_wait: float = 0.001, max_batch: int = 256, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self.max_wait = max_wait
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="torchmf-topk", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    async def top_k(
        self, model: Any, user_index: int, k: int, exclude_seen: bool, approximate: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` item indices and scores for one user index, shapes (k,) and (k,).

        Exactly ``model.top_k([user_index], k, exclude_seen, approximate=approximate)[..][0]``,
        computed together with whatever other requests are waiting.
        """
        return await self._submit(model, "top_k", (exclude_seen, approximate), (user_index, k))

    async def predict(self, model: Any, user: Any, item: Any) -> float:
        """``model.predict(user, item)`` for raw ids known to the model, computed with other waiting pairs."""
        return await self._submit(model, "predict", None, (user, item))

    async def call(self, model: Any, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the scoring thread, between batches; its exception (if any) is raised here.

        For model work that cannot be batched (a visitor's fold-in): run on the one thread that
        already does the service's model work, it costs what it costs alone (~1.3 ms on ML-100k),
        instead of ~5x that when many such calls contend for the GIL in a thread pool while the
        scoring thread and the event loop need it too.
        """
        return await self._submit(model, "call", None, fn)

    async def _submit(self, model: Any, kind: str, group: Any, payload: Any) -> Any:
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            self._pending.append(_Request(model, kind, group, payload, fut, loop))
            self._cond.notify()
        return await fut

    # ------------------------------------------------------------------ scoring thread
    def _run(self) -> None:
        first = True  # the request that started this thread may already be queued: still an idle start
        while True:
            with self._cond:
                idle = first or not self._pending  # nothing queued while the last batch was scored
                first = False
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    batch, self._pending = self._pending, []
                    for r in batch:
                        r.loop.call_soon_threadsafe(_set_exception, r.future, RuntimeError("server shutting down"))
                    return
                gather = idle and len(self._pending) < self.max_batch
            if gather and self.max_wait > 0:
                # first request after an idle spell: give its neighbours ~max_wait to arrive
                time.sleep(self.max_wait)
            with self._cond:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._score(batch)

    def _score(self, batch: list[_Request]) -> None:
        groups: dict[tuple[int, str, Any], list[_Request]] = {}
        for r in batch:
            groups.setdefault((id(r.model), r.kind, r.group), []).append(r)
        for (_, kind, group), reqs in groups.items():
            if kind == "call":
                for r in reqs:
                    try:
                        value, error = r.payload(), None
                    except Exception as exc:  # a client error (unknown item, bad value) goes back to its caller
                        value, error = None, exc
                    _deliver([(r, value, error)])
                continue
            try:
                for chunk, values in (_top_k(reqs, group) if kind == "top_k" else _predict(reqs)):
                    _deliver([(r, v, None) for r, v in zip(chunk, values, strict=True)])  # as soon as scored
            except Exception as exc:  # reach the callers, never kill the thread
                log.exception("batched %s failed", kind)
                _deliver([(r, None, exc) for r in reqs])  # (those already answered are skipped)
        if self._on_batch is not None:
            self._on_batch(len(batch))


def _deliver(results: list[tuple[_Request, Any, BaseException | None]]) -> None:
    """Hand results to their event loops: one wake-up per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any, BaseException | None]]] = {}
    for r, value, exc in results:
        by_loop.setdefault(r.loop, []).append((r.future, value, exc))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # that loop is closed: its callers are gone
            pass


# scores computed by one top_k call, at most: 8 M floats (32 MB). With a large catalogue
# the product is memory-bound and a (B, n_items) block bigger than the caches gets slower
# per user (1 M items, one thread: 27 ms/user at B=8, 44 ms/user at B=50).
SCORE_BUDGET = 1 << 23


def _top_k(reqs: list[_Request], group: tuple[bool, bool]) -> Iterator[tuple[list[_Request], list[Any]]]:
    """(chunk, per-request (items, scores)) for chunks that fit :data:`SCORE_BUDGET`."""
    exclude_seen, approximate = group
    model = reqs[0].model
    rows = max(1, SCORE_BUDGET // max(1, len(model.item_map)))
    for start in range(0, len(reqs), rows):
        chunk = reqs[start : start + rows]
        k = max(r.payload[1] for r in chunk)
        users = np.fromiter((r.payload[0] for r in chunk), dtype=np.int64, count=len(chunk))
        items, scores = model.top_k(users, k, exclude_seen=exclude_seen, approximate=approximate)
        yield chunk, [(items[j, : r.payload[1]], scores[j, : r.payload[1]]) for j, r in enumerate(chunk)]


def _predict(reqs: list[_Request]) -> Iterator[tuple[list[_Request], list[float]]]:
    users = [r.payload[0] for r in reqs]
    items = [r.payload[1] for r in reqs]
    yield reqs, np.asarray(reqs[0].model.predict(users, items), dtype=np.float64).tolist()


def _resolve(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.done():  # cancelled (client went away)
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
