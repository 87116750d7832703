"""Running the app under uvicorn: one process, or ``workers`` processes sharing a socket."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from torchmf.serve.app import ServeConfig, create_app
from torchmf.serve.schemas import Limits

__all__ = ["app_from_env", "bind", "serve"]

log = logging.getLogger(__name__)

_ENV = "TORCHMF_SERVE_CONFIG"  # how the parent hands the config to worker processes


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    Raises
    ------
    OSError
        The address is in use, or the host is not an address of this machine.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    # proto must say TCP: asyncio only sets TCP_NODELAY on such sockets, and without it
    # Nagle's algorithm holds each keep-alive response's body ~40 ms for an ACK
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_ready(url)`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()


def event_loop_and_parser() -> tuple[str, str]:
    """uvicorn's ``loop`` and ``http``: uvloop and httptools when installed (``uvicorn[standard]``,
    in the serve extra), else asyncio and the pure-Python h11 parser (slower, same behaviour)."""
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    if (loop, http) != ("uvloop", "httptools"):
        log.warning("uvloop/httptools not installed: serving with %s and %s (slower; pip install 'torchmf[serve]')",
                    loop, http)
    return loop, http


def _uvicorn_config(app: Any, workers: int, log_level: str, **kwargs: Any) -> uvicorn.Config:
    loop, http = event_loop_and_parser()
    return uvicorn.Config(
        app, workers=workers, log_level=log_level, access_log=False, server_header=False,
        timeout_keep_alive=30, lifespan="on", loop=loop, http=http, **kwargs,
    )


def serve(
    config: ServeConfig,
    sock: socket.socket,
    workers: int = 1,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
    threads: int = 1,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM).

    Parameters
    ----------
    config : ServeConfig
        With ``workers == 1`` the model is loaded here first, so a bad model
        raises before anything listens.
    sock : socket.socket
        From :func:`bind`.
    workers : int
        Processes sharing ``sock``; each loads the model (memory-mapped).
    on_ready : callable, optional
        ``on_ready(url)`` once the service accepts connections (the first
        worker's start with ``workers > 1``).
    threads : int
        torch intra-op threads per process. One is best for serving on a
        CPU: requests already run concurrently, and on a busy small box
        OpenMP threads spinning against each other made a 64-user top-K
        ten times slower than one thread did.
    """
    url = url_of(sock)
    _set_threads(threads)
    if workers <= 1:
        app = create_app(config=dataclasses.replace(config, load="now", freeze_gc=True))
        ucfg = _uvicorn_config(app, 1, log_level)
        _Server(ucfg, None if on_ready is None else lambda: on_ready(url)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    worker_config = _to_json(dataclasses.replace(config, load="now", mmap=True, freeze_gc=True))
    os.environ[_ENV] = json.dumps({"threads": threads, "config": worker_config})
    ucfg = _uvicorn_config("torchmf.serve.server:app_from_env", workers, log_level, factory=True)

    class _Supervisor(Multiprocess):
        def init_processes(self) -> None:
            super().init_processes()
            ready = all(p.wait_until_ready(120, self.should_exit) for p in self.processes)
            if ready and on_ready is not None:
                on_ready(url)

    _Supervisor(ucfg, sockets=[sock]).run()


def app_from_env() -> Any:
    """Factory each worker process calls: the app for the config the parent put in the environment."""
    env = json.loads(os.environ[_ENV])
    _set_threads(env["threads"])
    data = env["config"]
    data["limits"] = Limits(**data["limits"])
    return create_app(config=ServeConfig(**data))


def _to_json(config: ServeConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
