"""Explicit-rating benchmark on MovieLens 100K's canonical folds.

Reports RMSE, MAE, fit time and peak memory for torchmf's default model, the
seed model as originally written, and whichever peers are installed (Surprise
SVD / SVD++ / BaselineOnly, cornac MF), all on the same u1..u5 splits in the
same process.

    python benchmarks/explicit.py --folds 1          # u1.base / u1.test
    python benchmarks/explicit.py --folds 1 2 3 4 5  # the 5 canonical folds

Data is read from $TORCHMF_DATA_HOME/ml-100k (default ../shared/data).
Unknown test pairs are predicted by each library's own fallback; torchmf uses
``unknown="fallback"`` (global mean plus whatever bias is known).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchmf
from common import DATA_HOME, machine, measure
from torchmf.data import Interactions


def rmse_mae(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    err = np.asarray(pred, dtype=np.float64) - truth
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


# ---------------------------------------------------------------------- runners
DEVICE = "cpu"


def run_torchmf(train: Interactions, test: Interactions, **params) -> tuple[np.ndarray, float, float]:
    model = torchmf.MatrixFactorization(verbose=False, device=DEVICE, **params)
    m = measure(lambda: model.fit(train))
    pred = model.predict(test.user_map.raw(test.users), test.item_map.raw(test.items), unknown="fallback")
    return pred, m.seconds, m.peak_mb


def run_seed(
    train: Interactions, test: Interactions, dim: int = 32, epochs: int = 10
) -> tuple[np.ndarray, float, float]:
    """The seed model exactly as written: N(0,1) init, MSELoss, SGD(lr=0.01), batch 256."""
    from torch import nn

    data = train.compact()
    u = torch.as_tensor(data.users)
    i = torch.as_tensor(data.items)
    r = torch.as_tensor(data.values)
    torch.manual_seed(0)  # the seed script seeds globally; kept as written
    model = torchmf.MFModel(data.n_users, data.n_items, dim)
    loss_fn = nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def fit() -> None:
        for _ in range(epochs):
            perm = torch.randperm(len(r))
            for s in range(0, len(r), 256):
                idx = perm[s : s + 256]
                opt.zero_grad()
                loss = loss_fn(model(u[idx], i[idx]), r[idx])
                loss.backward()
                opt.step()

    m = measure(fit)
    tu = data.user_map.indices(test.user_map.raw(test.users), missing="ignore")
    ti = data.item_map.indices(test.item_map.raw(test.items), missing="ignore")
    ok = (tu >= 0) & (ti >= 0)
    pred = np.full(len(test), float(data.values.mean()))  # the seed has no fallback; use the mean
    with torch.no_grad():
        pred[ok] = model(torch.as_tensor(tu[ok]), torch.as_tensor(ti[ok])).numpy()
    return pred, m.seconds, m.peak_mb


def run_surprise(train: Interactions, test: Interactions, algo_name: str) -> tuple[np.ndarray, float, float]:
    import surprise

    df = train.to_pandas()
    reader = surprise.Reader(rating_scale=(1, 5))
    trainset = surprise.Dataset.load_from_df(df[["user", "item", "value"]], reader).build_full_trainset()
    algo = {
        "SVD": lambda: surprise.SVD(random_state=0),
        "SVD++": lambda: surprise.SVDpp(random_state=0),
        "BaselineOnly": lambda: surprise.BaselineOnly(verbose=False),
    }[algo_name]()
    m = measure(lambda: algo.fit(trainset))
    users, items = test.user_map.raw(test.users), test.item_map.raw(test.items)
    pred = np.array([algo.predict(u, i).est for u, i in zip(users, items, strict=True)])
    return pred, m.seconds, m.peak_mb


def run_cornac(train: Interactions, test: Interactions) -> tuple[np.ndarray, float, float]:
    import cornac

    users = train.user_map.raw(train.users).astype(str)
    items = train.item_map.raw(train.items).astype(str)
    triples = list(zip(users, items, train.values.astype(float), strict=True))
    ds = cornac.data.Dataset.from_uir(triples, seed=0)
    model = cornac.models.MF(seed=0, verbose=False)
    m = measure(lambda: model.fit(ds))
    mean = float(train.values.mean())
    pred = np.empty(len(test))
    test_users = test.user_map.raw(test.users).astype(str)
    test_items = test.item_map.raw(test.items).astype(str)
    for j, (u, i) in enumerate(zip(test_users, test_items, strict=True)):
        uidx, iidx = ds.uid_map.get(u), ds.iid_map.get(i)
        pred[j] = model.score(uidx, iidx) if uidx is not None and iidx is not None else mean
    return np.clip(pred, 1, 5), m.seconds, m.peak_mb


def available_runners(names: list[str]) -> dict:
    runners = {
        "torchmf (default)": lambda tr, te: run_torchmf(tr, te),
        "torchmf als d=128": lambda tr, te: run_torchmf(tr, te, factors=128, epochs=10),
        "torchmf sgd": lambda tr, te: run_torchmf(tr, te, solver="sgd"),
        "seed MFModel as written": run_seed,
    }
    try:
        import surprise  # noqa: F401

        runners["Surprise SVD"] = lambda tr, te: run_surprise(tr, te, "SVD")
        runners["Surprise SVD++"] = lambda tr, te: run_surprise(tr, te, "SVD++")
        runners["Surprise BaselineOnly"] = lambda tr, te: run_surprise(tr, te, "BaselineOnly")
    except ImportError:
        print("# Surprise not installed: skipped", file=sys.stderr)
    try:
        import cornac  # noqa: F401

        runners["cornac MF"] = run_cornac
    except ImportError:
        print("# cornac not installed: skipped", file=sys.stderr)
    if names:
        runners = {k: v for k, v in runners.items() if any(n.lower() in k.lower() for n in names)}
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", nargs="+", default=["1"], help="which of u1..u5 (default 1)")
    parser.add_argument("--models", nargs="*", default=[], help="substrings of model names to run (default all)")
    parser.add_argument("--json", type=Path, help="also write raw results here")
    parser.add_argument("--device", default="cpu", help="device for the torchmf models (cpu, cuda)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    runners = available_runners(args.models)
    results: dict[str, list[dict]] = defaultdict(list)
    # One untimed fit first: the first torch call of a process pays one-off start-up
    # costs (thread pool, allocator) that no later fit pays.
    warm_train, _ = torchmf.datasets.load_movielens_fold(args.folds[0], DATA_HOME)
    torchmf.MatrixFactorization(verbose=False, device=DEVICE, epochs=1).fit(warm_train)
    for fold in args.folds:
        train, test = torchmf.datasets.load_movielens_fold(fold, DATA_HOME)
        for name, run in runners.items():
            pred, seconds, peak = run(train, test)
            rmse, mae = rmse_mae(pred, test.values)
            results[name].append({"fold": fold, "rmse": rmse, "mae": mae, "fit_s": seconds, "peak_mb": peak})
            print(
                f"u{fold} {name:28s} RMSE {rmse:.4f}  MAE {mae:.4f}  fit {seconds:7.3f} s  peak {peak:7.1f} MB",
                file=sys.stderr,
                flush=True,
            )
    print(f"\nMachine: {machine()}; torchmf device {DEVICE}\nFolds: {', '.join('u' + f for f in args.folds)}\n")
    print("| model | RMSE | MAE | fit time (s) | peak memory (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        mean = {k: np.mean([r[k] for r in rows]) for k in ("rmse", "mae", "fit_s", "peak_mb")}
        std = np.std([r["rmse"] for r in rows])
        rmse = f"{mean['rmse']:.4f}" + (f" ± {std:.4f}" if len(rows) > 1 else "")
        print(f"| {name} | {rmse} | {mean['mae']:.4f} | {mean['fit_s']:.3f} | {mean['peak_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
