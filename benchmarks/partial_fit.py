"""Incremental updates (issue 14): ``partial_fit`` of held-back rows against a full refit.

Protocol (issue 14's target): take a training set, hold back a random 10 % of
its users (all their interactions) and the interactions of a random 5 % of its
items (seed 0), fit on the rest, then ``partial_fit`` the held-back rows (new
users, new items, and new interactions of known users) and compare with a
full refit on the whole training set:

- explicit: default ``MatrixFactorization()`` (ALS) and ``solver="sgd"`` on
  ML-100k u1.base, u1.test RMSE (target: within 0.003 of the refit);
- implicit: default ``loss="ials"`` on the issue-4 protocol (every rating an
  interaction, ``user_split(data, 0.2, min_interactions=5, seed=0)``), NDCG@10
  on its test part (target: within 0.005);

and the time of ``partial_fit`` against the full fit's (target: <= 20 %).
The explicit cases also report NDCG@10 of ``recommend`` on u1.test (what
their interaction-ranking component ranks by; no target, a check that the
update keeps it up to date).
Times (wall and process CPU) are the best of ``--rounds`` runs on 2 threads
(``--threads``), full fits and updates alternating (the ratios of the median
times are printed too); the copy of the fitted model each ``partial_fit``
round updates is made outside the timed region.

    TORCHMF_DATA_HOME=/path/to/data python benchmarks/partial_fit.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchmf
from torchmf.data.split import user_split

DATA_HOME = os.environ.get("TORCHMF_DATA_HOME", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


def hold_back(data: torchmf.Interactions, seed: int = 0) -> tuple[np.ndarray, int, int]:
    """Boolean mask of held-back rows: every row of 10 % of the users and of 5 % of the items."""
    rng = np.random.default_rng(seed)
    users = rng.choice(data.n_users, size=round(0.10 * data.n_users), replace=False)
    items = rng.choice(data.n_items, size=round(0.05 * data.n_items), replace=False)
    held = np.isin(data.users, users) | np.isin(data.items, items)
    return held, len(users), len(items)


def rmse(model: torchmf.MatrixFactorization, test: torchmf.Interactions) -> float:
    pred = model.predict(test.user_map.raw(test.users), test.item_map.raw(test.items), unknown="fallback")
    return float(np.sqrt(np.mean((pred - test.values) ** 2)))


def ndcg(model: torchmf.MatrixFactorization, test: torchmf.Interactions) -> float:
    return float(torchmf.evaluate(model, test, k=10)["ndcg@10"])


def timed(fns: list[Any], rounds: int) -> list[tuple[Any, list[float], list[float]]]:
    """Run each ``(fn, setup)`` of ``fns`` once per round, alternating: last result, wall and CPU times of each.

    ``setup`` (or None) runs outside the timed region and its result is ``fn``'s
    argument. Alternating puts the runs being compared under the same load.
    """
    out: list[Any] = [None] * len(fns)
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for j, (fn, setup) in enumerate(fns):
            args = () if setup is None else (setup(),)
            t, c = time.perf_counter(), time.process_time()
            out[j] = fn(*args)
            wall[j].append(time.perf_counter() - t)
            cpu[j].append(time.process_time() - c)
    return list(zip(out, wall, cpu, strict=True))


def compare(name: str, train: torchmf.Interactions, test: torchmf.Interactions, metric: Any, rounds: int,
            ranking: Any = None, **params: Any) -> dict[str, Any]:
    held, n_u, n_i = hold_back(train)
    base, extra = train.subset(~held), train.subset(held)

    def make() -> torchmf.MatrixFactorization:
        return torchmf.MatrixFactorization(verbose=False, device="cpu", **params)

    before = make().fit(base)
    m_before = metric(before, test)
    # full fits and updates alternate; each update runs on a fresh copy of the same fitted model (not timed)
    (full, w_full, cp_full), (updated, w_upd, cp_upd) = timed(
        [(lambda: make().fit(train), None), (lambda est: est.partial_fit(extra), lambda: copy.deepcopy(before))],
        rounds)
    t_full, c_full, t_upd, c_upd = min(w_full), min(cp_full), min(w_upd), min(cp_upd)
    m_full, m_upd = metric(full, test), metric(updated, test)
    ranks = {} if ranking is None else {
        "ranking_ndcg10_full_refit": round(ranking(full, test), 5), "ranking_ndcg10_partial_fit":
        round(ranking(updated, test), 5), "ranking_delta": round(ranking(updated, test) - ranking(full, test), 5)}
    return {
        "case": name, "held_rows": int(held.sum()), "held_users": n_u, "held_items": n_i,
        "metric_full_refit": round(m_full, 5), "metric_before_update": round(m_before, 5),
        "metric_partial_fit": round(m_upd, 5), "delta": round(m_upd - m_full, 5),
        "full_fit_s": round(t_full, 3), "partial_fit_s": round(t_upd, 3), "time_ratio": round(t_upd / t_full, 3),
        "full_fit_cpu_s": round(c_full, 3), "partial_fit_cpu_s": round(c_upd, 3), "cpu_ratio": round(c_upd / c_full, 3),
        "time_ratio_median": round(float(np.median(w_upd) / np.median(w_full)), 3),
        "cpu_ratio_median": round(float(np.median(cp_upd) / np.median(cp_full)), 3),
        **ranks, "updates": updated.extras_["updates"][-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per fit (best kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-sgd", action="store_true", help="leave out the (slow) SGD case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = torchmf.datasets.load_movielens_fold(1, data_home=DATA_HOME)
    rows = [compare("u1 RMSE, ALS (default)", train, test, rmse, args.rounds, ranking=ndcg)]
    if not args.skip_sgd:
        rows.append(compare("u1 RMSE, SGD", train, test, rmse, args.rounds, ranking=ndcg, solver="sgd"))
    data = torchmf.datasets.load_movielens("100k", data_home=DATA_HOME)
    data = torchmf.Interactions.from_arrays(data.user_map.raw(data.users), data.item_map.raw(data.items))
    itrain, itest = user_split(data, 0.2, min_interactions=5, seed=0)
    rows.append(compare("implicit NDCG@10, iALS", itrain, itest, ndcg, args.rounds, loss="ials"))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
