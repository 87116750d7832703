"""Helpers shared by the test_serve* modules: small models and a live server on 127.0.0.1.

(No tests here; pytest imports it as a plain module.)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torchmf

API_KEY = "s3cret-test-key"


def train_small(seed: int = 0, implicit: bool = False, **params: Any) -> torchmf.MatrixFactorization:
    """A tiny fitted model on planted data with int ids 0..119 (users) and 0..79 (items)."""
    data, _ = torchmf.datasets.synthetic(
        n_users=120, n_items=80, n_interactions=2400, rank=4, seed=seed, implicit=implicit
    )
    defaults: dict[str, Any] = {"factors": 8, "epochs": 4, "verbose": False, "seed": seed}
    if implicit:
        defaults["loss"] = "ials"
    return torchmf.MatrixFactorization(**{**defaults, **params}).fit(data)


def save(model: Any, path: Path) -> None:
    """Save over whatever is at ``path`` (an atomic rename, as a trainer would)."""
    model.save(path, overwrite=True)


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    from torchmf.serve.server import bind, url_of

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
