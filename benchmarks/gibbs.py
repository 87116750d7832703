"""Bayesian MF by Gibbs sampling on MovieLens 100K, beside myFM (Rendle's Bayesian FM).

    python benchmarks/gibbs.py --folds 1            # u1: ours vs myFM, with and without implicit features
    python benchmarks/gibbs.py --folds 1 2 3 4 5    # the five canonical folds
    python benchmarks/gibbs.py --defaults           # also MatrixFactorization(solver="gibbs") as shipped
    python benchmarks/gibbs.py --tune               # default selection on u1.base only (internal 90/10 split)

Both libraries get the same data, rank (10) and number of sweeps, and keep every
sweep's sample (``samples=200, burn_in=0`` here, ``n_iter=200, n_kept_samples=200``
for myFM); "implicit" is the flipped SVD++ of Rendle et al. 2019: the user's
normalised set of rated items and the item's normalised set of raters (training
ratings only), myFM's relation blocks with one hyperprior group per block.
myFM is only a benchmark peer (``pip install myfm``), never a dependency.
Timings here are single runs on whatever the machine is doing; treat them as provisional.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sps
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_HOME, machine
from torchmf.solvers import gibbs as gibbs_mod

N_USERS, N_ITEMS = 943, 1682


def load(name: str) -> np.ndarray:
    """(n, 3) int64: user index, item index (0-based), rating."""
    raw = np.loadtxt(DATA_HOME / "ml-100k" / name, dtype=np.int64)[:, :3]
    raw[:, :2] -= 1
    return raw


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.clip(pred, 1, 5) - truth) ** 2)))


def run_ours(train: np.ndarray, test: np.ndarray, rank: int, samples: int, burn_in: int, implicit: bool,
             seed: int = 0, robust: bool = True, thin: int = 1) -> tuple[float, float]:
    start = time.perf_counter()
    res = gibbs_mod.gibbs_fit(train[:, 0], train[:, 1], train[:, 2].astype(np.float32), N_USERS, N_ITEMS, rank,
                              samples, burn_in, torch.Generator().manual_seed(seed), torch.device("cpu"),
                              implicit_features=implicit, robust=robust, thin=thin)
    seconds = time.perf_counter() - start
    u, i = torch.as_tensor(test[:, 0]), torch.as_tensor(test[:, 1])
    pred = ((res["user_embs.weight"][u] * res["item_embs.weight"][i]).sum(1) + res["user_bias.weight"][u, 0]
            + res["item_bias.weight"][i, 0] + res["global_bias"])
    return rmse(pred.numpy(), test[:, 2]), seconds


def _import_myfm():
    # myFM 0.4 imports pkg_resources only for its version string; setuptools >= 81 no longer ships it
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pkg_resources")
            stub.DistributionNotFound = Exception
            stub.get_distribution = None
            sys.modules["pkg_resources"] = stub
    import myfm

    return myfm


def _blocks(myfm, train: np.ndarray, pairs: np.ndarray, implicit: bool) -> list:
    """Relation blocks: user one-hot (+ normalised rated items), item one-hot (+ normalised raters)."""
    out = []
    for side, other, n, n_other in ((0, 1, N_USERS, N_ITEMS), (1, 0, N_ITEMS, N_USERS)):
        onehot = sps.identity(n, format="csr")
        if implicit:
            deg = np.bincount(train[:, side], minlength=n).astype(float)
            vals = 1.0 / np.sqrt(np.maximum(deg, 1.0))[train[:, side]]
            rated = sps.csr_matrix((vals, (train[:, side], train[:, other])), shape=(n, n_other))
            onehot = sps.hstack([onehot, rated], format="csr")
        out.append(myfm.RelationBlock(pairs[:, side].astype(np.int32), onehot))
    return out


def run_myfm(train: np.ndarray, test: np.ndarray, rank: int, n_iter: int, implicit: bool,
             seed: int = 0) -> tuple[float, float]:
    myfm = _import_myfm()
    groups = [N_USERS, N_ITEMS, N_ITEMS, N_USERS] if implicit else [N_USERS, N_ITEMS]
    start = time.perf_counter()
    fm = myfm.MyFMRegressor(rank=rank, random_seed=seed)
    fm.fit(None, train[:, 2].astype(float), X_rel=_blocks(myfm, train, train, implicit), n_iter=n_iter,
           n_kept_samples=n_iter, group_shapes=groups)
    seconds = time.perf_counter() - start
    pred = fm.predict(None, _blocks(myfm, train, test, implicit))
    return rmse(pred, test[:, 2]), seconds


def run_facade(train: np.ndarray, test: np.ndarray, implicit: bool) -> tuple[float, float]:
    """``MatrixFactorization(solver="gibbs")`` with its defaults, through fit / predict."""
    import torchmf
    from torchmf.data import Interactions

    data = Interactions.from_arrays(train[:, 0], train[:, 1], train[:, 2].astype(np.float32))
    model = torchmf.MatrixFactorization(solver="gibbs", implicit_features=implicit, device="cpu", verbose=False)
    start = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - start
    pred = model.predict(test[:, 0], test[:, 1], unknown="fallback")
    return rmse(pred, test[:, 2]), seconds


def folds(numbers: list[int], rank: int, samples: int, with_myfm: bool, defaults: bool) -> list[dict]:
    rows = []
    for f in numbers:
        train, test = load(f"u{f}.base"), load(f"u{f}.test")
        for implicit in (False, True):
            if defaults:
                r, s = run_facade(train, test, implicit)
                rows.append({"fold": f, "lib": "torchmf-defaults", "implicit": implicit, "rmse": r, "seconds": s})
                print(json.dumps(rows[-1]), flush=True)
            r, s = run_ours(train, test, rank, samples, 0, implicit)
            rows.append({"fold": f, "lib": "torchmf", "implicit": implicit, "rmse": r, "seconds": s})
            print(json.dumps(rows[-1]), flush=True)
            if with_myfm:
                r, s = run_myfm(train, test, rank, samples, implicit)
                rows.append({"fold": f, "lib": "myfm", "implicit": implicit, "rmse": r, "seconds": s})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def tune() -> list[dict]:
    """Grid on u1.base alone: a seeded random 90/10 split of it, never u1.test."""
    base = load("u1.base")
    perm = np.random.default_rng(0).permutation(len(base))
    cut = int(0.9 * len(base))
    train, val = base[perm[:cut]], base[perm[cut:]]
    rows = []

    def one(**kw) -> None:
        nu = kw.pop("nu", final_nu)
        robust = nu is not None
        if robust:
            gibbs_mod.NU = nu
        r, s = run_ours(train, val, robust=robust, **kw)
        rows.append({"nu": nu, **kw, "val_rmse": r, "seconds": s})
        print(json.dumps(rows[-1]), flush=True)

    final_nu = gibbs_mod.NU
    for implicit in (False, True):
        for nu in (None, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0):
            one(rank=10, samples=200, burn_in=0, implicit=implicit, nu=nu)
    for implicit in (False, True):
        for rank in (5, 16):
            one(rank=rank, samples=200, burn_in=0, implicit=implicit)
        for samples, burn_in, thin in ((200, 50, 1), (400, 100, 1), (200, 100, 2)):
            one(rank=10, samples=samples, burn_in=burn_in, thin=thin, implicit=implicit)
    gibbs_mod.NU = final_nu
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, nargs="+", default=[1])
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--no-myfm", action="store_true")
    ap.add_argument("--defaults", action="store_true",
                    help="also fit MatrixFactorization(solver='gibbs') with its defaults (burn-in 50)")
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    rows = tune() if args.tune else folds(args.folds, args.rank, args.samples, not args.no_myfm, args.defaults)
    if not args.tune:
        for lib in ("torchmf", "myfm", "torchmf-defaults"):
            for implicit in (False, True):
                sel = [r for r in rows if r["lib"] == lib and r["implicit"] == implicit]
                if sel:
                    print(f"{lib:8s} implicit={implicit!s:5s} mean RMSE {np.mean([r['rmse'] for r in sel]):.4f} "
                          f"mean fit {np.mean([r['seconds'] for r in sel]):.2f}s over folds {args.folds}")


if __name__ == "__main__":
    main()
