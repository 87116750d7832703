"""Load test of ``torchmf serve`` (issue 9), against cornac's Flask serving app.

Trains a model on MovieLens 100K (all of ``u.data``), starts ``torchmf serve`` in
its own process and drives it from another process with ``--clients``
concurrent keep-alive connections: first ``--duration`` seconds of
``GET /v1/recommend/{random user}?k=10``, then a mix (70 % recommend, 20 %
``GET /v1/predict``, 10 % ``POST /v1/recommend/session`` with 5 rated items).
Then the same top-10 load against cornac's serving app (``cornac.serving.app``,
cornac ``MF`` trained on the same data, under gunicorn with the same worker
count), and, unless ``--skip-synthetic``, the torchmf runs again on a synthetic
model with ``--synthetic-items`` items (exact top-K).

Reports requests/s, p50/p95/p99 latency and errors per run, as a Markdown
table (``--markdown FILE`` appends it there too).

Usage::

    python benchmarks/serve_load.py                       # the full run: 20 s per phase
    python benchmarks/serve_load.py --duration 2 --skip-synthetic   # a quick check

The load generator is a minimal asyncio HTTP/1.1 client (raw sockets, one
coroutine per connection), so it spends as little of the machine's CPU as
possible; on a 2-core box it still shares the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------------- the load generator (its own process)
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server closes the connection after it (gunicorn's sync workers do)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, body, headers.get("connection", "").lower() == "close"


def _request_maker(scenario: str, ids: dict[str, list], rng: np.random.Generator, host: str):
    users, items = ids["users"], ids["items"]

    def get(path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def post(path: str, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode() + data

    def make() -> tuple[str, bytes]:
        u = users[rng.integers(len(users))]
        if scenario == "live":  # the harness's own ceiling: the cheapest route there is
            return "live", get("/health/live")
        if scenario == "cornac":
            return "recommend", get(f"/recommend?uid={u}&k=10&remove_seen=true")  # seen items left out, as ours
        r = rng.random() if scenario == "mix" else 0.0
        if r < 0.7:
            return "recommend", get(f"/v1/recommend/{u}?k=10")
        if r < 0.9:
            return "predict", get(f"/v1/predict?user={u}&item={items[rng.integers(len(items))]}")
        picked = rng.choice(len(items), 5, replace=False)
        rated = {str(items[j]): int(rng.integers(1, 6)) for j in picked}
        return "session", post("/v1/recommend/session", {"interactions": rated, "k": 10})

    return make


async def _client(host: str, port: int, make, stop_at: float, out: dict[str, Any]) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            t0 = time.perf_counter()
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kind, req = make()
            writer.write(req)
            status, _, closing = await _read_response(reader)
            t1 = time.perf_counter()
            if closing:  # reconnect for the next request (counted in its latency)
                writer.close()
                reader = writer = None
            if t1 > stop_at:  # finished after the window: not counted
                break
            out["latency"].append(t1 - t0)
            out["kinds"][kind] = out["kinds"].get(kind, 0) + 1
            if status != 200:
                out["errors"] += 1
                out["statuses"][str(status)] = out["statuses"].get(str(status), 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out["errors"] += 1
            out["statuses"][type(exc).__name__] = out["statuses"].get(type(exc).__name__, 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def _drive(url: str, scenario: str, clients: int, duration: float, ids: dict[str, list], seed: int) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    out: dict[str, Any] = {"latency": [], "errors": 0, "statuses": {}, "kinds": {}}
    start = time.perf_counter()
    stop_at = start + duration
    makers = [_request_maker(scenario, ids, np.random.default_rng([seed, c]), host) for c in range(clients)]
    await asyncio.gather(*[_client(host, int(port), m, stop_at, out) for m in makers])
    elapsed = time.perf_counter() - start
    lat = np.sort(np.array(out["latency"])) * 1000
    n = len(lat)

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if n else float("nan")

    return {"scenario": scenario, "clients": clients, "seconds": round(elapsed, 2), "requests": n,
            "req_per_s": n / elapsed, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "errors": out["errors"], "statuses": out["statuses"], "kinds": out["kinds"]}


def drive_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--scenario", choices=("topk", "mix", "cornac", "live"), required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--ids", required=True, help="JSON file {users: [...], items: [...]}")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ids = json.loads(Path(a.ids).read_text())
    print(json.dumps(asyncio.run(_drive(a.url, a.scenario, a.clients, a.duration, ids, a.seed))))


def run_driver(url: str, scenario: str, clients: int, duration: float, ids_file: Path) -> dict:
    """The load generator in a separate process; returns its JSON report."""
    out = subprocess.run(
        [sys.executable, __file__, "drive", "--url", url, "--scenario", scenario, "--clients", str(clients),
         "--duration", str(duration), "--ids", str(ids_file)],
        check=True, capture_output=True, text=True, timeout=duration + 120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 180) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class Server:
    """A server subprocess, stopped (SIGINT, then SIGKILL) on exit."""

    def __init__(self, cmd: list[str], env: dict[str, str], ready_url: str) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        try:
            _wait_http(ready_url)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def torchmf_server(model_dir: Path, workers: int) -> tuple[Server, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TORCHMF_API_KEY", None)
    cmd = [sys.executable, "-m", "torchmf", "serve", str(model_dir), "--port", str(port), "--workers", str(workers)]
    return Server(cmd, env, url + "/health/ready"), url


def cornac_server(model_dir: Path, workers: int) -> tuple[Server, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODEL_PATH": str(model_dir), "MODEL_CLASS": "cornac.models.MF"}
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
           "--log-level", "warning", "cornac.serving.app:app"]
    return Server(cmd, env, url + "/recommend?uid=1&k=1"), url


# ---------------------------------------------------------------------- models
def ml100k_ratings() -> Any:
    import torchmf
    from common import DATA_HOME  # (imports torch: kept out of the load generator's process)

    path = DATA_HOME / "ml-100k" / "u.data"
    return torchmf.read_ratings(path, sep="\t", columns=["user", "item", "rating", "timestamp"])


def train_torchmf(folder: Path) -> tuple[Path, dict[str, list]]:
    import torchmf

    data = ml100k_ratings()
    model = torchmf.MatrixFactorization(verbose=False).fit(data)
    model.save(folder / "torchmf-ml100k")
    return folder / "torchmf-ml100k", {"users": model.user_map.ids, "items": model.item_map.ids}


def train_cornac(folder: Path) -> Path:
    """cornac MF (defaults) on the same ratings, saved the way cornac.serving.app loads it."""
    import cornac

    from common import DATA_HOME

    raw = (DATA_HOME / "ml-100k" / "u.data").read_text().split("\n")
    triples = [tuple(ln.split("\t")[:3]) for ln in raw if ln.strip()]
    train = cornac.data.Dataset.from_uir([(u, i, float(r)) for u, i, r in triples], seed=0)
    model = cornac.models.MF(seed=0)
    model.fit(train)
    return Path(model.save(str(folder / "cornac-mf"), save_trainset=True))  # the saved file


def synthetic_model(folder: Path, n_items: int, n_users: int = 10_000, seen_per_user: int = 20,
                    factors: int = 48) -> tuple[Path, dict[str, list]]:
    """A model with random factors over ``n_items`` items (only the scoring cost matters here)."""
    import torch

    import torchmf
    from torchmf.data.idmap import IdMap

    rng = np.random.default_rng(0)
    tiny, _ = torchmf.datasets.synthetic(n_users=50, n_items=40, n_interactions=600, seed=0)
    template = torchmf.MatrixFactorization(factors=factors, epochs=1, verbose=False).fit(tiny).to_state()
    scale = 1 / np.sqrt(factors)
    g = torch.Generator().manual_seed(0)
    template.tensors = {
        "user_embs.weight": torch.randn(n_users, factors, generator=g) * scale,
        "item_embs.weight": torch.randn(n_items, factors, generator=g) * scale,
        "user_bias.weight": torch.randn(n_users, 1, generator=g) * 0.1,
        "item_bias.weight": torch.randn(n_items, 1, generator=g) * 0.1,
        "global_bias": torch.tensor(3.5),
    }
    template.user_map = IdMap(np.arange(n_users), "user")
    template.item_map = IdMap(np.arange(n_items), "item")
    seen = np.sort(rng.integers(0, n_items, (n_users, seen_per_user)), axis=1)
    keep = np.concatenate([np.ones((n_users, 1), bool), np.diff(seen, axis=1) > 0], axis=1)  # drop repeats
    template.seen_indptr = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
    template.seen_indices = seen[keep].astype(np.int64)
    template.seen_values = rng.integers(1, 6, len(template.seen_indices)).astype(np.float32)
    template.history, template.best_epoch, template.index = [], None, None
    model = torchmf.MatrixFactorization.from_state(template)
    out = folder / f"torchmf-synthetic-{n_items}"
    model.save(out)
    return out, {"users": list(range(n_users)), "items": list(range(n_items))}


# ---------------------------------------------------------------------- the run
def _row(name: str, r: dict) -> str:
    return (f"| {name} | {r['scenario']} | {r['req_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['errors']} | {r['requests']:,} |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["drive"]:
        drive_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20, help="seconds per load phase (default 20)")
    p.add_argument("--clients", type=int, default=50, help="concurrent keep-alive connections (default 50)")
    p.add_argument("--workers", type=int, default=1, help="server processes, torchmf and gunicorn alike")
    p.add_argument("--warmup", type=float, default=2, help="untimed seconds of load before each server's runs")
    p.add_argument("--skip-cornac", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--synthetic-items", type=int, default=1_000_000)
    p.add_argument("--markdown", metavar="FILE", help="also append the results table to this file")
    a = p.parse_args(argv)

    from common import machine

    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="serve_load.") as tmp:
        folder = Path(tmp)
        ids_file = folder / "ids.json"

        def bench(name: str, server: tuple[Server, str], scenarios: list[str], ids: dict[str, list]) -> None:
            ids_file.write_text(json.dumps(ids))
            srv, url = server
            with srv:
                print(f"{name}: serving at {url}", file=sys.stderr)
                run_driver(url, scenarios[0], a.clients, a.warmup, ids_file)
                for sc in scenarios:
                    r = run_driver(url, sc, a.clients, a.duration, ids_file)
                    rows.append(_row(name, r))
                    print(rows[-1], json.dumps({"statuses": r["statuses"], "kinds": r["kinds"]}), file=sys.stderr)

        model_dir, ids = train_torchmf(folder)
        bench(f"torchmf serve, ML-100k, {a.workers} worker(s)", torchmf_server(model_dir, a.workers),
              ["topk", "mix"], ids)
        if not a.skip_cornac:
            try:
                import cornac  # noqa: F401
                import gunicorn  # noqa: F401
            except ImportError as exc:
                notes.append(f"cornac comparison skipped: {exc} (pip install cornac gunicorn)")
            else:
                cornac_dir = train_cornac(folder)
                cornac_ids = {"users": ids["users"], "items": ids["items"]}
                bench(f"cornac.serving.app (Flask) + gunicorn, ML-100k, {a.workers} worker(s)",
                      cornac_server(cornac_dir, a.workers), ["cornac"], cornac_ids)
        if not a.skip_synthetic:
            syn_dir, syn_ids = synthetic_model(folder, a.synthetic_items)
            bench(f"torchmf serve, synthetic {a.synthetic_items:,} items (exact top-K), {a.workers} worker(s)",
                  torchmf_server(syn_dir, a.workers), ["topk", "mix"], syn_ids)

    head = [
        f"Command: `python benchmarks/serve_load.py {' '.join(argv)}`".rstrip(),
        f"Machine: {machine()} (in this script; `torchmf serve` runs its default 1 torch thread per process). "
        f"Load generator in a separate process on the same machine; {a.clients} keep-alive clients, "
        f"{a.duration:g} s per run after {a.warmup:g} s of warm-up; {a.workers} server worker(s).",
        "",
        "| server | load | req/s | p50 ms | p95 ms | p99 ms | errors | requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    text = "\n".join(head + rows + (["", *notes] if notes else [])) + "\n"
    print(text)
    if a.markdown:
        with open(a.markdown, "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
