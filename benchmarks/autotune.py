"""``torchmf.autotune`` against the issue-11 targets, within a fixed time budget.

- explicit: ``autotune("mse", u1.base, budget_s)`` (a loss name: ALS, SGD and Gibbs are all searched, the
  solver a categorical of the search), RMSE on u1.test (target <= 0.905 at 60 s);
- implicit: every ML-100k rating an interaction, ``user_split(data, 0.2, min_interactions=5, seed=0)``
  (the issue-4 protocol, as in benchmarks/same_run.py), ``autotune("ials", train, budget_s)``,
  NDCG@10 on the test part (target >= 0.45 at 60 s).

The search only ever sees the training part (autotune carves its validation split from it). Each run
prints the wall time against the budget, the load average, the test metric and the trials table.

    OMP_NUM_THREADS=1 python benchmarks/autotune.py --budget 60 --threads 1
    python benchmarks/autotune.py --budget 120 --only implicit
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import torchmf
from common import DATA_HOME, machine
from torchmf.split import user_split


def explicit(budget: float, seed: int) -> dict:
    train, test = torchmf.datasets.load_movielens_fold(1, data_home=DATA_HOME)
    start = time.perf_counter()
    model = torchmf.autotune("mse", train, budget_s=budget, seed=seed, verbose=False)
    took = time.perf_counter() - start
    return {"task": "explicit u1", "wall_s": took, "test_rmse": float(torchmf.evaluate(model, test)["rmse"]),
            "table": model.tuning_, "best": model.extras_["autotune"]}


def implicit(budget: float, seed: int) -> dict:
    data = torchmf.datasets.load_movielens("100k", data_home=DATA_HOME)
    data = torchmf.Interactions.from_arrays(data.user_map.raw(data.users), data.item_map.raw(data.items))
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    start = time.perf_counter()
    model = torchmf.autotune("ials", train, budget_s=budget, seed=seed, verbose=False)
    took = time.perf_counter() - start
    return {"task": "implicit ML-100k", "wall_s": took,
            "test_ndcg@10": float(torchmf.evaluate(model, test, k=10)["ndcg@10"]),
            "table": model.tuning_, "best": model.extras_["autotune"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a loaded machine)")
    ap.add_argument("--only", choices=("explicit", "implicit"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    for run in (explicit, implicit):
        if args.only and run.__name__ != args.only:
            continue
        load_before = os.getloadavg()[0]
        res = run(args.budget, args.seed)
        table = res.pop("table")
        res["budget_s"] = args.budget
        res["over_budget_pct"] = 100 * (res["wall_s"] / args.budget - 1)
        res["load_avg_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        res["states"] = table["state"].value_counts().to_dict()
        print(json.dumps(res, default=float))
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
