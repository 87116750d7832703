"""Same-run comparison of two source trees (e.g. this commit and the previous one) on the numbers we promise.

Each measurement runs in a fresh child process with ``PYTHONPATH=TREE/src``, the
trees alternating round by round so load on a shared machine hits both alike:

- explicit: default ``MatrixFactorization()`` RMSE on ML-100k u1..u5 and its fit time on u1.base;
- implicit: default ``loss="ials"`` NDCG@10 on the issue-4 protocol (every rating an interaction,
  ``user_split(data, 0.2, min_interactions=5, seed=0)``) and its fit time;
- top-k: ``top_k`` of every user, k=10, seen items excluded.

    git worktree add /tmp/old HEAD~1
    python benchmarks/same_run.py --old /tmp/old --new . --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, sys, time
import numpy as np, torch
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
import torchmf
from torchmf.split import user_split
home = os.environ["TORCHMF_DATA_HOME"]
out = {}
rmses = []
for fold in range(1, 6):
    train, test = torchmf.datasets.load_movielens_fold(fold, data_home=home)
    t = time.perf_counter()
    m = torchmf.MatrixFactorization(verbose=False, device="cpu").fit(train)
    if fold == 1:
        out["explicit_fit_s"] = time.perf_counter() - t
    pred = m.predict(test.user_map.raw(test.users), test.item_map.raw(test.items), unknown="fallback")
    rmses.append(float(np.sqrt(np.mean((pred - test.values) ** 2))))
out["rmse_u1"], out["rmse_mean"] = rmses[0], float(np.mean(rmses))
data = torchmf.datasets.load_movielens("100k", data_home=home)
data = torchmf.Interactions.from_arrays(data.user_map.raw(data.users), data.item_map.raw(data.items))
train, test = user_split(data, 0.2, min_interactions=5, seed=0)
t = time.perf_counter()
m = torchmf.MatrixFactorization(loss="ials", verbose=False, device="cpu").fit(train)
out["ials_fit_s"] = time.perf_counter() - t
out["ials_ndcg10"] = float(torchmf.evaluate(m, test, k=10)["ndcg@10"])
users = np.arange(len(m.user_map))
t = time.perf_counter()
m.top_k(users, 10, exclude_seen=True)
out["topk_all_users_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def run(tree: Path, data_home: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "TORCHMF_DATA_HOME": data_home, "THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"{tree}: {res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    home = os.environ.get("TORCHMF_DATA_HOME", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for name in order:
            results[name].append(run(getattr(args, name), home, args.threads))
        print(f"round {r + 1}: " + ", ".join(f"{n} {results[n][-1]}" for n in order), flush=True)
    keys = list(results["old"][0])
    print("\n| measure | old (min / median) | new (min / median) |\n|---|---:|---:|")
    for key in keys:
        cells = []
        for name in ("old", "new"):
            vals = [row[key] for row in results[name]]
            cells.append(f"{min(vals):.4f} / {statistics.median(vals):.4f}")
        print(f"| {key} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
