"""Start N local ranks (processes on 127.0.0.1) and turn their failure into one error naming a rank.

Each rank runs :func:`torchmf.distributed.worker.main` with the environment
torchrun would give it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT`` = a free port), so the local
launcher, torchrun, Ray and Spark all run the same code. Ranks are forked
from a ``multiprocessing`` fork server that has imported torch and torchmf
once (per parent process), so starting a job costs no imports after the
first; the job itself travels as a JSON file (the fork server is handed only
its path and the environment, strings).

When one rank fails the launcher waits a few seconds for the others to notice
(a dead peer closes its sockets; a hung one makes their collectives time out),
stops whoever is left, and raises one error, chosen in this order:

1. a rank's own error (bad input, divergence, ...), as that rank reported it;
2. a rank that died without reporting (killed, crashed);
3. a rank still running after the others failed on a collective (hung);
4. otherwise the first collective failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from torchmf.distributed.job import ERRORS_ENV, JobConfig
from torchmf.errors import DataError, ModelFileError, TrainingError

__all__ = ["free_port", "spawn"]

log = logging.getLogger(__name__)

# seconds the others get to exit by themselves once one rank has failed
_GRACE = 5.0
_POLL = 0.1


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_env(r: int, world: int, port: int, errors: str) -> dict[str, str]:
    env = dict(os.environ)
    threads = max(1, (os.cpu_count() or 1) // world)
    env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS",
                                                                                        str(threads)))
    env[ERRORS_ENV] = errors
    # the worker imports the same torchmf as this process (a source checkout on PYTHONPATH included)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def spawn(cfg: JobConfig, world_size: int) -> None:
    """Run ``cfg`` on ``world_size`` local ranks; returns when all succeeded.

    Raises
    ------
    DataError, ModelFileError
        A rank's input or output error (message names the rank).
    TrainingError
        Any other failure: a rank that diverged, died, hung or timed out.
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    with tempfile.TemporaryDirectory(prefix="torchmf-dist-") as tmp:
        config = Path(tmp, "job.json")
        config.write_text(json.dumps(cfg.to_dict()))
        errors = Path(tmp, "errors")
        errors.mkdir()
        port = free_port()
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torchmf.distributed.worker"])
        procs = [ctx.Process(target=_rank_main, args=(str(config), _rank_env(r, world_size, port, str(errors))),
                             name=f"torchmf-rank-{r}") for r in range(world_size)]
        with _main_hidden():
            for p in procs:
                p.start()
        try:
            _supervise(procs, errors)
        finally:
            for p in procs:
                if p.exitcode is None:
                    p.kill()
                p.join()


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start processes without multiprocessing re-running the caller's ``__main__`` in them.

    The fork server, like "spawn", re-imports the parent's main script in
    every child unless the script guards its code with ``if __name__ ==
    "__main__"``; a plain script calling :func:`torchmf.distributed.fit` would
    start the fit again in each rank. The ranks need nothing from ``__main__``
    (their target lives in this module), so its path and spec are hidden while
    the processes start.
    """
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _rank_main(config: str, env: dict[str, str]) -> None:
    """One rank, in a process forked from the fork server: the launcher's environment, then the worker."""
    os.environ.clear()
    os.environ.update(env)
    import torch

    from torchmf.distributed.worker import main

    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.exit(main([config]))  # on failure main() has already left through os._exit


def _supervise(procs: list, errors: Path) -> None:
    failed_at = None
    while True:
        codes = [p.exitcode for p in procs]
        if all(c == 0 for c in codes):
            return
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()
        if failed_at is not None and (all(c is not None for c in codes) or time.monotonic() - failed_at > _GRACE):
            break
        time.sleep(_POLL)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join()
    raise _blame(codes, errors)


def _blame(codes: list[int | None], errors: Path) -> Exception:
    """The one error to report (see the module docstring); ``codes[r]`` None: still running at the end."""
    reports = {}
    for f in errors.glob("rank-*.json"):
        info = json.loads(f.read_text())
        reports[int(info["rank"])] = info
    own = [reports[r] for r in sorted(reports) if not reports[r]["collective"]]
    if own:
        info = own[0]
        kind = {"DataError": DataError, "ModelFileError": ModelFileError}.get(info["type"], TrainingError)
        if info["type"] == "ValueError":
            return ValueError(info["message"])
        return kind(info["message"])
    for r, c in enumerate(codes):
        if c not in (None, 0) and r not in reports:
            how = f"killed by signal {signal.Signals(-c).name}" if c < 0 else f"exited with code {c}"
            return TrainingError(f"rank {r} died ({how}) without reporting an error; the other ranks stopped")
    hung = [r for r, c in enumerate(codes) if c is None]
    if hung:
        return TrainingError(f"rank {hung[0]} stopped responding: the other ranks' collectives timed out waiting "
                             "for it; it was stopped")
    first = reports[min(reports)] if reports else {"message": "a rank failed"}
    return TrainingError(str(first["message"]))
