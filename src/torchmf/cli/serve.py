"""``torchmf serve``: the HTTP recommendation service."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torchmf.cli import common, titles

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  torchmf serve model                                  # http://127.0.0.1:8000, explorer page at /
  torchmf serve model --port 9000 --workers 2 --watch
  torchmf serve model --items movies.csv --item-col movie_id --title-col title
  TORCHMF_API_KEY=secret torchmf serve model           # /v1/* then needs header X-API-Key: secret

endpoints: GET /v1/recommend/USER?k=10, POST /v1/recommend, POST /v1/recommend/session,
GET|POST /v1/predict, GET /v1/similar/ITEM, GET /v1/model, POST /v1/admin/reload,
GET /health/live, /health/ready, /metrics; OpenAPI at /docs and /openapi.json.
"""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", parents=parents, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="serve a model over HTTP (needs the serve extra)",
        description="Serve recommendations, predictions and similar items from a saved model over HTTP\n"
                    "(FastAPI + uvicorn; pip install 'torchmf[serve]').",
        epilog=_EPILOG,
    )
    p.add_argument("model", metavar="MODEL_DIR", help="folder written by 'torchmf train'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port and a memory-mapped model")
    p.add_argument("--device", default="auto", help="where the weights live: auto, cpu, cuda, cuda:N (default auto)")
    titles.add_title_options(p)  # shown in responses and on the explorer page
    g = p.add_argument_group("operation")
    g.add_argument("--api-key-env", metavar="NAME", default="TORCHMF_API_KEY",
                   help="environment variable holding the API key (default TORCHMF_API_KEY); "
                        "when set, /v1/* needs header X-API-Key")
    g.add_argument("--watch", action="store_true", help="reload when a new model is saved into MODEL_DIR")
    g.add_argument("--watch-interval", type=float, default=1.0, metavar="S", help="seconds between checks (default 1)")
    g.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for (default 1000)")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: requests run concurrently already; 0 = torch's default)")
    g.add_argument("--batch-wait-ms", type=float, default=1.0, metavar="MS",
                   help="how long concurrent top-K requests are gathered into one batch (default 1 ms)")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    try:
        from torchmf.serve import server
        from torchmf.serve.app import ServeConfig, api_key_from_env
        from torchmf.serve.schemas import Limits
    except ImportError as exc:
        raise common.CLIError(f"torchmf serve needs the serve extra: pip install 'torchmf[serve]' ({exc})") from None
    if args.workers < 1:
        raise common.CLIError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise common.CLIError(f"--port must be between 0 and 65535, got {args.port}")
    if (args.item_col or args.title_col) and not args.items:
        raise common.CLIError("--item-col and --title-col go with --items ITEMS.csv")
    for flag in ("max_k", "max_body_bytes"):
        if getattr(args, flag) <= 0:
            raise common.CLIError(f"--{flag.replace('_', '-')} must be positive")
    if args.threads < 0:
        raise common.CLIError(f"--threads must be >= 0, got {args.threads}")
    if args.batch_wait_ms < 0 or not args.watch_interval > 0:
        raise common.CLIError("--batch-wait-ms must be >= 0 and --watch-interval positive")
    api_key_from_env(args.api_key_env)  # an empty key is an error before anything listens
    config = ServeConfig(
        model_dir=args.model, device=args.device, items=args.items, item_col=args.item_col,
        title_col=args.title_col, api_key_env=args.api_key_env, watch=args.watch,
        watch_interval=args.watch_interval, batch_wait=args.batch_wait_ms / 1000,
        limits=Limits(max_k=args.max_k, max_body_bytes=args.max_body_bytes),
    )
    if args.workers > 1:  # workers load it themselves; check it loads before forking them
        common.load_model(args.model)
    sock = server.bind(args.host, args.port)

    def ready(url: str) -> None:
        workers = f", {args.workers} workers" if args.workers > 1 else ""
        print(f"torchmf: serving {args.model} at {url} (explorer page at {url}/{workers})", file=sys.stderr,
              flush=True)

    try:
        server.serve(config, sock, workers=args.workers, on_ready=ready, threads=args.threads)
    finally:
        sock.close()
    return 0
