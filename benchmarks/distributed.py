"""Distributed fit: per-rank peak memory at W = 1 vs W = 4, and bytes sent per sweep (all_gather and all_to_all).

Generates (once, cached) a synthetic implicit set of ``--interactions`` pairs
over ``--users`` x ``--items`` (item popularity ~ 1 / (rank + 10)^0.8, users
uniform) written as 8 Parquet part files, then runs ``torchmf.distributed.fit``
with iALS at each world size in a fresh process and reads every rank's
"done" log line (peak RSS, RSS at the start of the job, bytes sent per
epoch). World sizes above 1 run once per ``--exchanges`` entry (the
all_gather of whole factor tables, the all_to_all of only the referenced
rows). Memory is reported above the rank's RSS at the start of the job:
a process that has only imported torch and torchmf (the W = 1 job runs in
such a process; W > 1 ranks are forked from one). The peak RSS of a fresh
import-only process is printed too (import itself peaks a little higher
than where it settles).

    python benchmarks/distributed.py                       # 20 M pairs, 200k x 50k, d = 32, W = 1 and 4
    python benchmarks/distributed.py --interactions 2000000 --users 20000 --items 5000   # quick look

With ``--device cuda`` (one GPU) it runs world size 1 under NCCL (via torchrun)
and reports the time per sweep instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_DONE = re.compile(r"rank (\d+): done in ([\d.]+) s; sent (\d+) bytes, (\d+) per epoch; "
                   r"peak RSS ([\d.]+) MiB, ([\d.]+) MiB at start")


def make_data(folder: Path, n: int, n_users: int, n_items: int, parts: int = 8, seed: int = 0) -> Path:
    """The synthetic set as ``parts`` Parquet files (reused when already there)."""
    import pandas as pd

    done = folder / "_SUCCESS"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pop = 1.0 / (np.arange(n_items) + 10.0) ** 0.8
    pop /= pop.sum()
    want = int(n * 1.01)  # a few repeats are dropped below
    users = rng.integers(0, n_users, want)
    items = rng.choice(n_items, want, p=pop)
    _, keep = np.unique(users * n_items + items, return_index=True)
    keep = np.sort(rng.permutation(keep)[:n])  # file order random, as a shuffled export would be
    users, items = users[keep], items[keep]
    for j, rows in enumerate(np.array_split(np.arange(len(users)), parts)):
        pd.DataFrame({"user": users[rows], "item": items[rows]}).to_parquet(folder / f"part-{j:05d}.parquet")
    done.write_text("")
    return folder


def baseline_mib() -> float:
    """Peak RSS of a process that imported torch and torchmf (the distributed worker) and nothing else."""
    code = ("import torch, torchmf.distributed.worker; "
            "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env())
    return float(out.stdout.strip())


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def run_world(data: Path, world: int, factors: int, epochs: int, exchange: str = "auto") -> dict:
    """One fit in a fresh process; every rank's figures from its log line."""
    code = (
        "import logging, sys, torchmf; from torchmf.distributed import fit; "
        "logging.basicConfig(level='INFO', format='torchmf: %(message)s'); "
        f"fit(torchmf.MatrixFactorization(loss='ials', factors={factors}, epochs={epochs}, verbose=False), "
        f"sys.argv[1], world_size={world}, implicit=True, exchange={exchange!r})"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True,
                         env=_env(TORCHMF_LOG="INFO"))
    wall = time.perf_counter() - start
    log = data.parent / f"{data.name}-w{world}-{exchange}.log"  # every rank's phase lines (RSS after each step)
    log.write_text(out.stderr)
    print(f"log: {log}", flush=True)
    if out.returncode:
        raise SystemExit(f"world {world} failed:\n{out.stderr[-3000:]}")
    ranks = sorted((int(m[1]), float(m[2]), int(m[3]), int(m[4]), float(m[5]), float(m[6]))
                   for m in _DONE.finditer(out.stderr))
    return {"world": world, "exchange": exchange, "wall_s": wall, "ranks": [
        {"rank": r, "job_s": t, "sent_total": total, "sent_per_epoch": ep, "peak_rss_mib": rss, "start_rss_mib": rss0}
        for r, t, total, ep, rss, rss0 in ranks]}


def run_gpu(data: Path, factors: int, epochs: int) -> dict:
    """World size 1 on the GPU under torchrun (NCCL process group): seconds per sweep from the history."""
    code = (
        "import sys, time, torchmf; from torchmf.distributed import fit; t = time.perf_counter(); "
        f"m = fit(torchmf.MatrixFactorization(loss='ials', factors={factors}, epochs={epochs}, verbose=False, "
        "device='cuda'), sys.argv[1], implicit=True); print('TOTAL', time.perf_counter() - t)"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--no-python", sys.executable,
           "-c", code, str(data)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(TORCHMF_LOG="INFO"))
    if out.returncode:
        raise SystemExit(f"GPU run failed:\n{out.stderr[-3000:]}")
    return {"stdout": out.stdout[-500:], "log": [m.group(0) for m in _DONE.finditer(out.stderr)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--factors", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--exchanges", nargs="+", default=["all_gather", "all_to_all"],
                    choices=["auto", "all_gather", "all_to_all"])
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/torchmf-dist-bench"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    folder = args.data_dir / f"n{args.interactions}-u{args.users}-i{args.items}"
    t = time.perf_counter()
    data = make_data(folder, args.interactions, args.users, args.items)
    print(f"data: {folder} ({time.perf_counter() - t:.0f} s)", flush=True)
    if args.device != "cpu":
        print(json.dumps(run_gpu(data, args.factors, args.epochs), indent=1))
        return
    base = baseline_mib()
    model_bytes = 2 * (args.users + args.items) * args.factors * 4
    print(f"import-only process: peak RSS {base:.0f} MiB; all-gather model 2 (n_users + n_items) d 4 = {model_bytes:,} "
          "bytes per sweep per rank (upper bound; each rank sends its blocks to W - 1 peers: (W-1)/W of it)")
    results = []
    for w in args.worlds:
        for exchange in args.exchanges if w > 1 else ["auto"]:
            r = run_world(data, w, args.factors, args.epochs, exchange)
            results.append(r)
            for x in r["ranks"]:
                x["above_mib"] = x["peak_rss_mib"] - x["start_rss_mib"]
                print(f"W={w} {exchange} rank {x['rank']}: peak RSS {x['peak_rss_mib']:.0f} MiB, "
                      f"{x['start_rss_mib']:.0f} at start ({x['above_mib']:.0f} above), job {x['job_s']:.1f} s, "
                      f"sent {x['sent_per_epoch']:,} bytes per sweep "
                      f"({x['sent_per_epoch'] / model_bytes:.3f} x model), "
                      f"{x['sent_total']:,} in all", flush=True)
    one = max(x["above_mib"] for x in results[0]["ranks"])
    for r in results[1:]:
        many = max(x["above_mib"] for x in r["ranks"])
        print(f"largest rank at W={r['world']} ({r['exchange']}): {many / one:.1%} of the W={results[0]['world']} "
              "process, above the baseline")
    print(json.dumps({"baseline_mib": base, "model_bytes": model_bytes, "runs": results}))


if __name__ == "__main__":
    main()
