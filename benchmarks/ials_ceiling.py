"""How high iALS can go on the issue-4 protocol, and what the validation carve can and cannot see.

Diagnostics behind RESULTS.md section 8.6 (issue 11, the implicit ``autotune`` target). Every ML-100k
rating is an interaction; the test split is ``user_split(all, 0.2, min_interactions=5, seed=s)``.

- ``settings``: fixed iALS settings refitted on the training part of split seeds ``--splits``; test
  NDCG@10 of each, and their mean (what one setting is worth, free of any search).
- ``regscan``: along one setting's ``reg``, the mean validation NDCG@10 over three 10% carves of split
  0's training part (what autotune sees) beside the test NDCG@10 after a refit on all of it.
- ``halved``: each setting refitted on split 0's training part, scored on the whole test part and on
  six random halves of it (half of each user's test items held out, the other half counted as misses,
  like the carve): does the ranking of settings change with the held-out size?
- ``epochs``: test NDCG@10 after 2, 4, 8 and 16 sweeps, init seeds 0-2.
- ``carves``: validation NDCG@10 of each setting on six 10% carves of split 0's training part (carve n
  with init seed n), and each setting's gap to the first one per carve (mean and spread), beside the
  test gap after a refit: how much one carve's luck can reorder settings (section 8.7).
- ``inits``: validation (carve seed 1) and test NDCG@10 over init seeds 0-5: noise of the setting itself.
- ``average``: the settings refitted on split 0's training part (init seed ``--seed``), each one's test
  NDCG@10 and that of their mean (``estimator.ensemble.average_models``), as autotune's refit averages
  its best three finalists (section 8.7).

    python benchmarks/ials_ceiling.py settings --splits 0,1,2,3 \\
        --settings '[{"factors": 238, "reg": 0.018, "alpha": 0.74, "unobserved_weight": 0.45, "epochs": 12}]'
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import torchmf
from common import DATA_HOME, machine
from torchmf.split import user_split


def _data() -> torchmf.Interactions:
    data = torchmf.datasets.load_movielens("100k", data_home=DATA_HOME)
    return torchmf.Interactions.from_arrays(data.user_map.raw(data.users), data.item_map.raw(data.items))


def _ndcg(setting: dict, train: torchmf.Interactions, held: torchmf.Interactions, seed: int = 0) -> float:
    model = torchmf.MatrixFactorization(loss="ials", seed=seed, **setting).fit(train)
    return float(torchmf.evaluate(model, held, k=10)["ndcg@10"])


def settings(data: torchmf.Interactions, grid: list[dict], splits: list[int]) -> None:
    parts = [user_split(data, 0.2, min_interactions=5, seed=s) for s in splits]
    for setting in grid:
        row = [_ndcg(setting, train, test) for train, test in parts]
        print(json.dumps(setting), " ".join(f"{v:.4f}" for v in row), f"mean {np.mean(row):.4f}", flush=True)


def regscan(data: torchmf.Interactions, grid: list[dict], regs: list[float]) -> None:
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    carves = [user_split(train, 0.1, seed=s) for s in (3, 4, 5)]
    for setting in grid:
        for reg in regs:
            s = {**setting, "reg": reg}
            val = [_ndcg(s, a, b) for a, b in carves]
            print(json.dumps(s), f"validation {np.mean(val):.4f} test {_ndcg(s, train, test):.4f}", flush=True)


def halved(data: torchmf.Interactions, grid: list[dict]) -> None:
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    halves = [user_split(test, 0.5, seed=s)[1] for s in range(6)]
    for setting in grid:
        model = torchmf.MatrixFactorization(loss="ials", seed=0, **setting).fit(train)
        full = float(torchmf.evaluate(model, test, k=10)["ndcg@10"])
        half = [float(torchmf.evaluate(model, h, k=10)["ndcg@10"]) for h in halves]
        print(json.dumps(setting), f"whole test {full:.4f} halves {np.mean(half):.4f}", flush=True)


def epochs(data: torchmf.Interactions, grid: list[dict]) -> None:
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    for setting in grid:
        for n in (2, 4, 8, 16):
            row = [_ndcg({**setting, "epochs": n}, train, test, seed=s) for s in range(3)]
            print(json.dumps(setting), f"{n} sweeps", " ".join(f"{v:.4f}" for v in row), flush=True)


def carves(data: torchmf.Interactions, grid: list[dict]) -> None:
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    parts = [user_split(train, 0.1, seed=np.random.default_rng(100 + n)) for n in range(1, 7)]
    val = np.array([[_ndcg(s, a, b, seed=n) for n, (a, b) in enumerate(parts, 1)] for s in grid])
    tests = [_ndcg(s, train, test) for s in grid]
    for setting, row, t in zip(grid, val, tests, strict=True):
        gap = val[0] - row
        print(json.dumps(setting), f"validation {row.mean():.4f} test {t:.4f} | gap to the first: validation "
              f"{gap.mean():+.4f} ± {gap.std(ddof=1):.4f} per carve, test {tests[0] - t:+.4f}", flush=True)


def inits(data: torchmf.Interactions, grid: list[dict]) -> None:
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    part, held = user_split(train, 0.1, seed=1)
    for setting in grid:
        val = [_ndcg(setting, part, held, seed=s) for s in range(6)]
        tst = [_ndcg(setting, train, test, seed=s) for s in range(6)]
        print(json.dumps(setting), f"validation {np.mean(val):.4f} ± {np.std(val, ddof=1):.4f}, "
              f"test {np.mean(tst):.4f} ± {np.std(tst, ddof=1):.4f} (init seeds 0-5)", flush=True)


def average(data: torchmf.Interactions, grid: list[dict], seed: int) -> None:
    from torchmf.estimator.ensemble import average_models

    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    models = [torchmf.MatrixFactorization(loss="ials", seed=seed, **s).fit(train) for s in grid]
    for setting, model in zip(grid, models, strict=True):
        print(json.dumps(setting), f"test {float(torchmf.evaluate(model, test, k=10)['ndcg@10']):.4f}")
    mean = average_models(models)
    print(f"mean of the {len(models)}: test {float(torchmf.evaluate(mean, test, k=10)['ndcg@10']):.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("settings", "regscan", "halved", "epochs", "carves", "inits", "average"))
    ap.add_argument("--settings", required=True, help="JSON list of MatrixFactorization(loss='ials') keywords")
    ap.add_argument("--splits", default="0,1,2,3", help="split seeds (settings)")
    ap.add_argument("--regs", default="0.012,0.014,0.016,0.018,0.02,0.022,0.026,0.03,0.035", help="(regscan)")
    ap.add_argument("--seed", type=int, default=0, help="init seed of the refits (average)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    grid, data = json.loads(args.settings), _data()
    if args.what == "settings":
        settings(data, grid, [int(s) for s in args.splits.split(",")])
    elif args.what == "regscan":
        regscan(data, grid, [float(r) for r in args.regs.split(",")])
    elif args.what == "halved":
        halved(data, grid)
    elif args.what == "epochs":
        epochs(data, grid)
    else:
        {"carves": carves, "inits": inits}.get(args.what, lambda d, g: average(d, g, args.seed))(data, grid)


if __name__ == "__main__":
    main()
