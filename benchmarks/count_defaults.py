"""iALS confidence defaults on heavy-tailed counts (issue 11 item 4, issue 13 item 2).

Real play counts (median in the hundreds, maximum several hundred thousand)
break ``loss="ials"``'s default confidence ``1 + 1 * count``: a few enormous
counts dominate the weighted least squares. This script measures a small grid
of confidence settings on synthetic heavy-tailed counts
(:func:`torchmf.datasets.synthetic_counts`, three count scales) and on
ML-100k treated as binary interactions, and the data-dependent default rule of
:func:`torchmf.data.profile.value_profile` / ``confidence_defaults`` when the
library has it.

Protocol per data set: ``user_split(data, 0.2, min_interactions=5, seed=0)``
-> train / test; the grid is scored on a validation split carved out of train
(``user_split(train, 0.2, min_interactions=5, seed=1)``) *and* on test (the
target is "the default within 0.01 NDCG@10 of the grid's best"); NDCG@10 with
binary relevance (every held-out pair relevant), full ranking minus the user's
train items (``torchmf.evaluate``).

Usage::

    python benchmarks/count_defaults.py            # grid + rule on all data sets
    python benchmarks/count_defaults.py --quick    # one count scale
    python benchmarks/count_defaults.py --autotune 60 --skip-grid   # defaults vs torchmf.autotune("ials")

``--autotune S`` also runs, on each count set, ``torchmf.autotune("ials", train,
budget_s=S, seed=0, params=["confidence", "alpha"])`` (the confidence setting
alone, every other value the default; ``--params``) and the whole-space
``torchmf.autotune("ials", train, budget_s=S, seed=0)`` (confidence transform,
alpha, unobserved weight, factors and reg), both on a validation split of
``train``, and reports their test NDCG@10 beside the defaults': the issue's
target is the defaults within 0.01 of the best confidence setting autotune finds.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchmf
from torchmf.data.interactions import Interactions
from torchmf.data.split import user_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from implicit_tune import as_implicit

DATA_HOME = os.environ.get("TORCHMF_DATA_HOME", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
K = 10


def grid(median: float) -> dict[str, dict[str, Any]]:
    """The confidence settings compared (``median``: the training values' median)."""
    g: dict[str, dict[str, Any]] = {
        "binary (values -> 1)": {"binary": True},
        "linear alpha=1 (old default)": {"confidence": "linear", "alpha": 1.0},
        "linear alpha=1/median": {"confidence": "linear", "alpha": 1.0 / median},
    }
    for a in (0.3, 1.0, 3.0):
        g[f"log eps=1 alpha={a:g}"] = {"confidence": "log", "confidence_eps": 1.0, "alpha": a}
    for a in (0.5, 1.0 / math.log(2.0), 3.0):
        g[f"log eps=median alpha={a:.3g}"] = {"confidence": "log", "confidence_eps": median, "alpha": a}
    return g


def binary(data: Interactions) -> Interactions:
    return as_implicit(data)


def score(train: Interactions, test: Interactions, setting: dict[str, Any]) -> float:
    p = dict(setting)
    if p.pop("binary", False):
        train = binary(train)
    model = torchmf.MatrixFactorization(loss="ials", verbose=False, **p).fit(train)
    return torchmf.evaluate(model, test, k=K)["ndcg@10"]


def popularity(train: Interactions, test: Interactions) -> float:
    """NDCG@10 of most-popular unseen items (by number of users), same evaluation."""
    # an iALS model whose items all share one factor ranks by nothing; score popularity directly instead
    model = torchmf.MatrixFactorization(loss="ials", verbose=False, epochs=1, factors=1).fit(binary(train))
    counts = np.bincount(model.seen_indices_, minlength=len(model.item_map)).astype(np.float32)
    with torch.no_grad():
        model.model.user_embs.weight.fill_(1.0)
        model.model.item_embs.weight.copy_(torch.as_tensor(counts).view(-1, 1))
    return torchmf.evaluate(model, test, k=K)["ndcg@10"]


def compare_autotune(train: Interactions, test: Interactions, budget: float, defaults: float,
                     params: list[str] | None = None) -> None:
    """Print autotune's chosen setting, its test NDCG@10 and the defaults' gap to it.

    ``params``: search only these names (``["confidence", "alpha"]``: the confidence setting alone,
    every other value the library's default; the epoch count is still chosen by validation).
    """
    t = time.perf_counter()
    tuned = torchmf.autotune("ials", train, budget_s=budget, seed=0, params=params, verbose=False)
    took = time.perf_counter() - t
    best = tuned.extras_["autotune"]["params"]
    ndcg = torchmf.evaluate(tuned, test, k=K)["ndcg@10"]
    what = f"params={params}" if params else "whole space"
    print(f"autotune('ials', {what}, budget {budget:g} s, {took:.1f} s, {len(tuned.tuning_)} trials, "
          f"load {os.getloadavg()[0]:.1f}): {best}, {tuned.extras_['autotune']['epochs']} epochs", flush=True)
    print(f"autotune ({what}) test NDCG@10 {ndcg:.4f}; defaults {defaults:.4f}; defaults - autotune "
          f"{defaults - ndcg:+.4f}", flush=True)
    # Separate what the confidence setting buys from what capacity/regularisation/epochs buy: the
    # library's defaults with only autotune's confidence transform and scale.
    conf = {k: best[k] for k in ("confidence", "alpha") if k in best}
    only = score(train, test, conf)
    print(f"defaults + autotune's confidence setting {conf}: test NDCG@10 {only:.4f} "
          f"(defaults - this {defaults - only:+.4f})", flush=True)


def datasets(quick: bool) -> list[tuple[str, Interactions]]:
    out = []
    for median in (200.0,) if quick else (5.0, 200.0, 2000.0):
        data, _ = torchmf.datasets.synthetic_counts(median=median, seed=0)
        out.append((f"synthetic_counts(median={median:g})", data))
    if not quick:
        out.append(("ML-100k binary", as_implicit(torchmf.datasets.load_movielens("100k", data_home=DATA_HOME))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--autotune", type=float, metavar="S", help="also run autotune('ials') with this budget")
    ap.add_argument("--params", default="confidence,alpha",
                    help="with --autotune: also a search restricted to these names ('none': skip it)")
    ap.add_argument("--confidence-only", action="store_true",
                    help="with --autotune: only the restricted search, not the whole space")
    ap.add_argument("--skip-grid", action="store_true", help="only the defaults (and autotune)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("torchmf.data.profile").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(machine(), "(shared machine)", flush=True)
    for name, data in datasets(args.quick):
        v = data.values
        print(f"\n## {name}: {len(data):,} pairs, values median {np.median(v):g}, p99 {np.percentile(v, 99):g}, "
              f"max {v.max():g}", flush=True)
        train, test = user_split(data, 0.2, min_interactions=5, seed=0)
        fit_, valid = user_split(train, 0.2, min_interactions=5, seed=1)
        med = float(np.median(train.values))
        defaults = score(train, test, {})
        if args.autotune and "synthetic" in name:
            if args.params != "none":
                compare_autotune(train, test, args.autotune, defaults, args.params.split(","))
            if not args.confidence_only:
                compare_autotune(train, test, args.autotune, defaults)
        if args.skip_grid:
            print(f"library defaults: test NDCG@10 {defaults:.4f}", flush=True)
            continue
        rows = [("most popular", popularity(fit_, valid), popularity(train, test))]
        for label, setting in grid(med).items():
            rows.append((label, score(fit_, valid, setting), score(train, test, setting)))
        rows.append(("library defaults (loss='ials' only)", score(fit_, valid, {}), defaults))
        print("| setting | validation NDCG@10 | test NDCG@10 |\n|---|---|---|")
        for label, val, tst in rows:
            print(f"| {label} | {val:.4f} | {tst:.4f} |", flush=True)
        best_val = max(rows[1:-1], key=lambda r: r[1])
        best_test = max(r[2] for r in rows[1:-1])
        print(f"grid best on validation: {best_val[0]} (test {best_val[2]:.4f}); grid best on test {best_test:.4f}; "
              f"defaults {rows[-1][2]:.4f} (gap {best_test - rows[-1][2]:+.4f})", flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
