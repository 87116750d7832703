"""Micro-batching of concurrent top-K requests.

Requests for single users arrive one by one; scoring them one at a time wastes
most of a matrix product. :class:`TopKBatcher` queues them, and a scoring thread
takes whatever arrived within ``max_wait`` seconds of the first (and everything
that queued while the previous batch was scored), scores each group sharing a
model and ``exclude_seen`` with one ``model.top_k`` call, and hands each caller
its row. The event loop only enqueues and awaits, so it stays free to parse the
next requests while the scoring thread computes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TopKBatcher"]

log = logging.getLogger(__name__)


@dataclass
class _Request:
    model: Any  # a MatrixFactorization
    user_index: int
    k: int
    exclude_seen: bool
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class TopKBatcher:
    """Gathers concurrent single-user top-K requests into batched ``top_k`` calls.

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

    async def top_k(self, model: Any, user_index: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` item indices and scores for one user index, shapes (k,) and (k,).

        Exactly ``model.top_k([user_index], k, exclude_seen)[..][0]``, computed
        together with whatever other requests are waiting.
        """
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            self._pending.append(_Request(model, user_index, k, exclude_seen, fut, loop))
            self._cond.notify()
        return await fut

    # ------------------------------------------------------------------ scoring thread
    def _run(self) -> None:
        while True:
            with self._cond:
                idle = not self._pending  # nothing queued while the last batch was scored
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
        groups: dict[tuple[int, bool], list[_Request]] = {}
        for r in batch:
            groups.setdefault((id(r.model), r.exclude_seen), []).append(r)
        done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any, BaseException | None]]] = {}
        for (_, exclude_seen), reqs in groups.items():
            k = max(r.k for r in reqs)
            users = np.fromiter((r.user_index for r in reqs), dtype=np.int64, count=len(reqs))
            try:
                items, scores = reqs[0].model.top_k(users, k, exclude_seen=exclude_seen)
                for j, r in enumerate(reqs):
                    done.setdefault(r.loop, []).append((r.future, (items[j, : r.k], scores[j, : r.k]), None))
            except Exception as exc:  # reach the callers, never kill the thread
                log.exception("batched top-k failed")
                for r in reqs:
                    done.setdefault(r.loop, []).append((r.future, None, exc))
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for loop, results in done.items():  # one wake-up per event loop, not per request
            try:
                loop.call_soon_threadsafe(_resolve, results)
            except RuntimeError:  # that loop is closed: its callers are gone
                pass


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
