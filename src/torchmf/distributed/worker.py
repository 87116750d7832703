"""One rank started by the local launcher (:func:`main`; also ``python -m torchmf.distributed.worker CONFIG.json``).

Runs :func:`~torchmf.distributed.job.run_job` and, if it fails, writes one
JSON line ``{"rank", "type", "message", "collective"}`` to
``$TORCHMF_DIST_ERRORS/rank-R.json`` for the launcher and one
``torchmf: error: rank R: ...`` line on stderr, then exits 2 (user errors)
or 1. ``collective`` marks errors of the communication itself (a timeout, a
peer that went away), which are symptoms of another rank's failure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch.distributed as dist

from torchmf.distributed import comm
from torchmf.distributed.job import ERRORS_ENV, JobConfig, run_job
from torchmf.errors import TorchMFError

__all__ = ["describe_error", "main"]


def describe_error(exc: BaseException) -> dict[str, object]:
    """One rank's failure as ``{"rank", "type", "message", "collective"}``; the message names the rank."""
    r = comm.rank() if comm.world() > 1 else int(os.environ.get("RANK", "0"))
    text = " ".join(str(exc).split()) or type(exc).__name__
    collective = isinstance(exc, dist.DistError) or (
        type(exc) is RuntimeError and any(w in text for w in ("gloo", "Gloo", "NCCL", "Timed out", "Connection")))
    if collective:
        text = f"rank {r}: a collective failed (a peer died, hung or timed out): {text.splitlines()[0][:300]}"
    elif not text.startswith("rank "):  # errors agreed from another rank already name it
        text = f"rank {r}: {text}"
    return {"rank": r, "type": type(exc).__name__, "message": text, "collective": collective}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=os.environ.get("TORCHMF_LOG", "WARNING"), format="torchmf: %(levelname)s: %(message)s")
    cfg = JobConfig(**json.loads(Path(argv[0]).read_text()))
    try:
        run_job(cfg)
    except BaseException as exc:  # every failure must reach the launcher
        info = describe_error(exc)
        folder = os.environ.get(ERRORS_ENV)
        if folder:
            Path(folder, f"rank-{info['rank']}.json").write_text(json.dumps(info))
        print(f"torchmf: error: {info['message']}", file=sys.stderr, flush=True)
        code = 2 if isinstance(exc, (TorchMFError, ValueError)) else 1
        os._exit(code)  # no process-group teardown: a dead peer would make it hang
    return 0


if __name__ == "__main__":
    sys.exit(main())
