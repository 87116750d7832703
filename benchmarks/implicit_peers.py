"""Implicit feedback on ML-100k: torchmf's defaults against tuned peer libraries.

Protocol (the one of ``implicit_tune.py``):

- ML-100k, every rating an interaction of value 1;
- ``user_split(data, 0.2, min_interactions=5, seed=0)`` -> ``train`` / ``test``;
- full ranking over every item (all 1682 of ML-100k's id map) minus the
  user's train items, K = 10;
- NDCG@10 (binary gains, IDCG over min(K, |relevant|)), recall@10 and
  precision@10 from :func:`torchmf.metrics.ranking_metrics`: every model's
  top-10 lists are mapped to torchmf item indices and scored by that one
  function (torchmf's own models also through ``torchmf.evaluate`` as a check).

Models: torchmf ``MatrixFactorization(loss="ials")`` and ``loss="bpr"`` with
their *default* hyperparameters (no tuning here); most popular unseen items;
and, where installed, implicit's AlternatingLeastSquares and
BayesianPersonalizedRanking, LightFM (WARP) and cornac's BPR, each once with
its library defaults and once *tuned* on a validation split carved out of
train (``user_split(train, 0.2, min_interactions=5, seed=1)``), the best
setting refitted on all of train and scored once on test.

Then fit time of torchmf iALS against implicit ALS at the same 64 factors and
15 iterations (alternating repeats after a warm-up; min, median and rounds won:
the machine is shared).

Usage::

    python benchmarks/implicit_peers.py                   # everything (~10 min on 2 cores)
    python benchmarks/implicit_peers.py --quick           # one grid point per peer (smoke test)
    python benchmarks/implicit_peers.py --out benchmarks/RESULTS_implicit.md
    python benchmarks/implicit_peers.py --timing-only --repeat 25   # only the fit-time comparison
"""

from __future__ import annotations

import os

# implicit asks for a single-threaded BLAS (its own threads do the work); set it
# before numpy loads OpenBLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import datetime
import itertools
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

import torchmf
from torchmf.data.interactions import Interactions
from torchmf.metrics import ranking_metrics
from torchmf.split import user_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from implicit_tune import as_implicit

DATA_HOME = os.environ.get("TORCHMF_DATA_HOME", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
K = 10
THREADS = 2
SEED = 0

Scorer = Callable[[np.ndarray], np.ndarray]  # user indices -> (len, n_items) scores


# ---------------------------------------------------------------------- evaluation
class Split:
    """A (train, test) pair in the parent's index space, with the CSR arrays every model needs."""

    def __init__(self, train: Interactions, test: Interactions) -> None:
        # torchmf's fit compacts its train set (ids without a train interaction are dropped): the same index
        # space for every model; test items unknown to train stay relevant as -1 (never hit), as in evaluate()
        c = train.compact()
        self.train, self.test, self.user_map, self.item_map = train, test, c.user_map, c.item_map
        self.n_users, self.n_items = len(c.user_map), len(c.item_map)
        self.X = sp.csr_matrix((np.ones(len(c), np.float32), (c.users, c.items)), shape=(self.n_users, self.n_items))
        self.X.sum_duplicates()
        self.X.data[:] = 1.0
        users = c.user_map.indices(test.user_map.raw(test.users), missing="ignore")
        items = c.item_map.indices(test.item_map.raw(test.items), missing="ignore")
        users, items = users[users >= 0], items[users >= 0]
        self.unknown_test_items = int((items < 0).sum())
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        self.eval_users, counts = np.unique(users, return_counts=True)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.items = items.astype(np.int64)

    def top_k(self, scorer: Scorer, k: int = K, batch: int = 512) -> np.ndarray:
        """Top-k item indices per evaluation user, the user's train items excluded."""
        out = []
        for start in range(0, len(self.eval_users), batch):
            users = self.eval_users[start:start + batch]
            s = np.asarray(scorer(users), dtype=np.float64).copy()
            seen = self.X[users]
            s[np.repeat(np.arange(len(users)), np.diff(seen.indptr)), seen.indices] = -np.inf
            part = np.argpartition(-s, k, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
            out.append(np.take_along_axis(part, order, 1))
        return np.concatenate(out).astype(np.int64)

    def metrics(self, top: np.ndarray) -> dict[str, float]:
        res = ranking_metrics(top, self.indptr, self.items, K, n_items_known=self.n_items)
        return {"ndcg": res["ndcg"], "recall": res["recall"], "precision": res["precision"]}

    def score(self, scorer: Scorer) -> dict[str, float]:
        return self.metrics(self.top_k(scorer))


# ---------------------------------------------------------------------- models
# Each fit_* takes (split, params) and returns a scorer over *all* items in torchmf's index space.
def fit_torchmf(s: Split, p: dict[str, Any]) -> torchmf.MatrixFactorization:
    return torchmf.MatrixFactorization(verbose=False, **p).fit(s.train)


def fit_popularity(s: Split, p: dict[str, Any]) -> Scorer:
    counts = np.asarray(s.X.sum(0)).ravel()
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


def fit_implicit_als(s: Split, p: dict[str, Any]) -> Scorer:
    from implicit.cpu.als import AlternatingLeastSquares

    m = AlternatingLeastSquares(**p, num_threads=THREADS, random_state=SEED)
    m.fit(s.X, show_progress=False)
    return lambda users: m.user_factors[users] @ m.item_factors.T


def fit_implicit_bpr(s: Split, p: dict[str, Any]) -> Scorer:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    m = BayesianPersonalizedRanking(**p, num_threads=THREADS, random_state=SEED)
    m.fit(s.X, show_progress=False)
    # the item bias is a factor column paired with a constant 1 in the user factors
    return lambda users: m.user_factors[users] @ m.item_factors.T


def fit_lightfm(s: Split, p: dict[str, Any]) -> Scorer:
    from lightfm import LightFM

    p = dict(p)
    epochs = p.pop("epochs", 1)  # LightFM.fit's default
    m = LightFM(loss="warp", random_state=SEED, **p)
    m.fit(s.X.tocoo(), epochs=epochs, num_threads=THREADS)
    _, U = m.get_user_representations()
    bias, V = m.get_item_representations()
    return lambda users: U[users] @ V.T + bias


def fit_cornac_bpr(s: Split, p: dict[str, Any]) -> Scorer:
    import cornac
    from cornac.models import BPR

    coo = s.X.tocoo()
    ds = cornac.data.Dataset.from_uir(list(zip(coo.row.tolist(), coo.col.tolist(), [1.0] * coo.nnz, strict=True)),
                                      seed=SEED)
    m = BPR(**p, seed=SEED, num_threads=THREADS).fit(ds)
    # back to torchmf's index space (every item has a train interaction, so cornac knows them all)
    U = np.zeros((s.n_users, m.u_factors.shape[1]), np.float32)
    U[np.fromiter(ds.uid_map.keys(), np.int64)] = m.u_factors[np.fromiter(ds.uid_map.values(), np.int64)]
    V = np.zeros((s.n_items, m.i_factors.shape[1]), np.float32)
    bias = np.full(s.n_items, -np.inf)
    item_raw, item_int = np.fromiter(ds.iid_map.keys(), np.int64), np.fromiter(ds.iid_map.values(), np.int64)
    V[item_raw], bias[item_raw] = m.i_factors[item_int], m.i_biases[item_int]
    return lambda users: U[users] @ V.T + bias


def grid(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]


PEERS: dict[str, dict[str, Any]] = {
    "implicit ALS": {
        "module": "implicit", "fit": fit_implicit_als, "defaults": {},
        "grid": grid({"factors": [64, 128], "regularization": [0.01, 1.0, 10.0, 50.0], "alpha": [1.0, 5.0, 20.0],
                      "iterations": [15]}),
    },
    "implicit BPR": {
        "module": "implicit", "fit": fit_implicit_bpr, "defaults": {},
        "grid": grid({"factors": [64, 128], "learning_rate": [0.01, 0.05, 0.1], "regularization": [0.001, 0.01, 0.1],
                      "iterations": [100, 300]}),
    },
    "LightFM WARP": {
        "module": "lightfm", "fit": fit_lightfm, "defaults": {},
        "grid": grid({"no_components": [64], "learning_rate": [0.01, 0.05, 0.1], "item_alpha": [0.0, 1e-5, 1e-4],
                      "epochs": [20, 50, 100]}),
    },
    "cornac BPR": {
        "module": "cornac", "fit": fit_cornac_bpr, "defaults": {},
        "grid": grid({"k": [64], "learning_rate": [0.001, 0.01, 0.05], "lambda_reg": [0.001, 0.01, 0.1],
                      "max_iter": [100, 300]}),
    },
}


def run(fit: Callable[[Split, dict[str, Any]], Any], s: Split, p: dict[str, Any]) -> tuple[dict[str, float], float]:
    """Fit on ``s.train``, score on ``s.test``: (metrics, fit seconds)."""
    t = time.perf_counter()
    model = fit(s, p)
    took = time.perf_counter() - t
    if isinstance(model, torchmf.MatrixFactorization):
        return s.metrics(model.top_k(s.eval_users, K, exclude_seen=True)[0]), took
    return s.score(model), took


def fmt(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()) or "-"


# ---------------------------------------------------------------------- main
def fit_time(full: Split, repeat: int) -> list[str]:
    """torchmf iALS against implicit's ALS at equal size (64 factors, 15 iterations, 2 threads each).

    The fits alternate, so drift in the shared machine's speed hits both
    alike; min, median and the count of rounds each side won are reported.
    """
    contenders: list[tuple[str, Callable[[], Any]]] = [
        ("torchmf iALS (factors=64, epochs=15, other defaults)",
         lambda: fit_torchmf(full, {"loss": "ials", "factors": 64, "epochs": 15})),
    ]
    try:
        import implicit  # noqa: F401

        contenders.append(("implicit ALS (factors=64, iterations=15, other defaults, CG)",
                           lambda: fit_implicit_als(full, {"factors": 64, "iterations": 15})))
    except ImportError:
        pass
    for _, fn in contenders:  # warm-up: first-call start-up costs are not fit time
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for _ in range(repeat):
        for name, fn in contenders:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    lines = []
    for name, fn in contenders:
        res = run(lambda s, p, fn=fn: fn(), full, {})[0]
        lines.append(f"{name}: fit min {min(times[name]):.3f} s, median {statistics.median(times[name]):.3f} s "
                     f"({len(times[name])} runs); test NDCG@10 {res['ndcg']:.4f}")
    if len(contenders) == 2:
        a, b = (times[name] for name, _ in contenders)
        wins = sum(x < y for x, y in zip(a, b, strict=True))
        lines.append(f"torchmf faster in {wins} of {repeat} alternating rounds")
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="first grid point only, 1 timing repeat")
    ap.add_argument("--repeat", type=int, default=7, help="repeats of the iALS fit-time comparison")
    ap.add_argument("--out", help="write the markdown report here")
    ap.add_argument("--timing-only", action="store_true", help="only the iALS fit-time comparison")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", module="implicit")
    torch.set_num_threads(THREADS)
    started = time.perf_counter()

    data = as_implicit(torchmf.datasets.load_movielens("100k", data_home=DATA_HOME))
    train, test = user_split(data, 0.2, min_interactions=5, seed=0)
    fit_, valid = user_split(train, 0.2, min_interactions=5, seed=1)
    full, val = Split(train, test), Split(fit_, valid)
    print(f"{machine()}\nML-100k implicit: train {len(train):,}, test {len(test):,} "
          f"({len(full.eval_users)} users, {full.n_items} items in train, {full.unknown_test_items} test "
          f"interactions on items absent from train); validation: fit {len(fit_):,}, valid {len(valid):,}",
          flush=True)
    if args.timing_only:
        fit_time(full, args.repeat)
        return

    rows: list[tuple[str, str, dict[str, float], float]] = []
    notes: list[str] = []

    # torchmf with defaults, checked against the official evaluate()
    for loss in ("ials", "bpr"):
        p = {"loss": loss}
        t = time.perf_counter()
        model = fit_torchmf(full, p)
        took = time.perf_counter() - t
        m = full.metrics(model.top_k(full.eval_users, K, exclude_seen=True)[0])
        official = torchmf.evaluate(model, test, k=K)
        assert model.item_map == full.item_map and model.user_map == full.user_map
        assert abs(official["ndcg@10"] - m["ndcg"]) < 1e-9, (official["ndcg@10"], m["ndcg"])
        eff = model.effective_params
        keys = ("factors", "epochs", "reg", "alpha", "unobserved_weight") if loss == "ials" else (
            "factors", "epochs", "lr", "reg", "optimizer")
        rows.append((f"torchmf {loss}", "defaults (" + fmt({k: eff[k] for k in keys}) + ")", m, took))
        print(f"torchmf {loss} defaults: {m}  {took:.2f}s", flush=True)
    m, took = run(fit_popularity, full, {})
    rows.append(("popularity", "-", m, took))
    print(f"popularity: {m}", flush=True)

    for name, peer in PEERS.items():
        try:
            __import__(peer["module"])
        except ImportError as exc:
            notes.append(f"{name}: not run, `import {peer['module']}` failed: {exc}")
            print(notes[-1], flush=True)
            continue
        fit = peer["fit"]
        m, took = run(fit, full, peer["defaults"])
        rows.append((name, "library defaults", m, took))
        print(f"{name} defaults: {m}  {took:.2f}s", flush=True)
        points = peer["grid"][:1] if args.quick else peer["grid"]
        t = time.perf_counter()
        tried = []
        for p in points:
            v, _ = run(fit, val, p)
            tried.append((v["ndcg"], p))
        best_v, best = max(tried, key=lambda r: r[0])
        m, took = run(fit, full, best)
        rows.append((name, f"tuned ({fmt(best)})", m, took))
        print(f"{name}: {len(points)} settings on validation in {time.perf_counter() - t:.0f}s; best valid NDCG "
              f"{best_v:.4f} at {fmt(best)}; test {m}  {took:.2f}s", flush=True)
        notes.append(f"{name}: grid of {len(points)} settings, best validation NDCG@10 {best_v:.4f}; "
                     f"top 3: " + "; ".join(f"{v:.4f} ({fmt(p)})" for v, p in sorted(tried, key=lambda r: -r[0])[:3]))

    timing = fit_time(full, 1 if args.quick else args.repeat)

    table = ["| model | setting | NDCG@10 | recall@10 | precision@10 | fit s |", "|---|---|---|---|---|---|"]
    for name, setting, m, took in rows:
        table.append(f"| {name} | {setting} | {m['ndcg']:.4f} | {m['recall']:.4f} | {m['precision']:.4f} | "
                     f"{took:.2f} |")
    print("\n" + "\n".join(table))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.out:
        write_report(args, table, timing, notes, time.perf_counter() - started)


def write_report(args: argparse.Namespace, table: list[str], timing: list[str], notes: list[str],
                 total: float) -> None:
    versions = []
    for mod in ("implicit", "lightfm", "cornac"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            versions.append(f"{mod} not installed")
    cmd = "python benchmarks/implicit_peers.py" + (" --quick" if args.quick else "") + f" --out {args.out}"
    text = [
        "## Implicit feedback: torchmf defaults vs tuned peers (ML-100k)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()} (a small VM: timings drift by tens of percent from minute to minute)  ",
        f"Date: {datetime.date.today().isoformat()}; {', '.join(versions)}; total run {total:.0f} s; "
        f"command line: `{' '.join(sys.argv[1:])}`",
        "",
        *table,
        "",
        "Fit time at equal size (after one warm-up fit each, alternating torchmf / implicit, 2 threads each):",
        "",
        *[f"- {line}" for line in timing],
        "",
        "Notes:",
        "",
        "- Protocol: every ML-100k rating is an interaction of value 1; `user_split(data, 0.2, "
        "min_interactions=5, seed=0)`; each model ranks every item of train (torchmf's index space: 1682 ML-100k "
        "items minus those with no train interaction) minus the user's train items; the top 10 "
        "are mapped to torchmf item indices and scored by `torchmf.metrics.ranking_metrics` (NDCG binary gains, "
        "IDCG over min(10, |test items|)), the same code for every model. torchmf rows are also checked equal to "
        "`torchmf.evaluate(model, test, k=10)`.",
        "- torchmf rows use the library defaults (no tuning in this script; the defaults were chosen by "
        "`implicit_tune.py` on validation splits of train, never on test).",
        "- Peers: 'library defaults' = constructor defaults (LightFM also `fit(epochs=1)`, its default); "
        "'tuned' = the best of the grid by NDCG@10 on the validation split `user_split(train, 0.2, "
        "min_interactions=5, seed=1)` (fit on the other 80% of train), then refitted on all of train and scored "
        "once on test. Fit seconds are one fit on train. Seeds fixed (random_state/seed 0); "
        "threads 2 (implicit num_threads, LightFM num_threads, cornac num_threads, torch.set_num_threads), "
        "OPENBLAS_NUM_THREADS=1.",
        "- Test interactions on items absent from train stay in recall's and IDCG's denominators and can't be "
        "hit (as in `torchmf.evaluate`).",
        *[f"- {n}" for n in notes],
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
