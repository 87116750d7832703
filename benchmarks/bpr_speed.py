"""BPR epoch throughput: torchmf's pairwise solver against implicit's CPU BPR, same process, alternating.

Data: ``torchmf.datasets.synthetic(100_000, 20_000, 5_000_000, implicit=True, seed=0)``
(cached as .npz with ``--cache``). Each round times, on ``--threads`` threads:

- torchmf: the mean of ``--epochs`` epochs after a first one of the BPR solver at its defaults (64
  factors, Adagrad, batch 16384), on the fused numba kernel and, with ``--torch-path``,
  on the torch reference path too; with ``--hogwild`` also ``optimizer="hogwild"`` (lock-free
  per-sample SGD, implicit's algorithm); setup (the sampler's index) excluded;
- implicit: ``BayesianPersonalizedRanking(factors=64, num_threads=threads)``, the
  marginal epoch of a ``1 + epochs``-iteration fit minus a 1-iteration fit (its
  fit has no per-epoch hook), divided by ``epochs``.

Rates are pairs (positives) per second; the best round of each is reported with
wall and process-CPU seconds and the load average, since the machine may be shared.

Usage::

    python benchmarks/bpr_speed.py --cache /tmp/bpr/syn5m.npz --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import torchmf
from torchmf.data.idmap import IdMap
from torchmf.data.interactions import Interactions
from torchmf.solvers import get_solver, pairwise_cpu


def load(args: argparse.Namespace) -> Interactions:
    if args.cache and os.path.exists(args.cache):
        z = np.load(args.cache)
        users, items = z["users"], z["items"]
    else:
        data, _ = torchmf.datasets.synthetic(args.users, args.items, args.interactions, implicit=True, seed=0)
        users, items = data.users, data.items
        if args.cache:
            os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
            np.savez(args.cache, users=users, items=items)
    return Interactions(users, items, np.ones(len(users), np.float32), IdMap(np.arange(args.users), "user"),
                        IdMap(np.arange(args.items), "item"), implicit=True)


def clock(fn: Callable[[], object]) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def torchmf_epochs(data: Interactions, factors: int, epochs: int, mode: str,
                   optimizer: str = "adagrad") -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each of ``epochs`` epochs on the pairwise solver, kernel ``mode``."""
    hp = torchmf.MatrixFactorization(loss="bpr", factors=factors, verbose=False, optimizer=optimizer).effective_params
    hp["batch_size"] = hp["batch_size"] or 16384
    model = torchmf.MFModel(data.n_users, data.n_items, factors, init_std=hp["init_std"],
                            generator=torch.Generator().manual_seed(0)).requires_grad_(False)
    pairwise_cpu._MODE = mode
    try:
        solver = get_solver("bpr")(model, data, hp, torch.device("cpu"))
        return [clock(solver.epoch) for _ in range(1 + epochs)][1:]  # first: warm-up (cf. implicit)
    finally:
        pairwise_cpu._MODE = "auto"


def mean(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean (wall, CPU) seconds of a round's epochs, comparable with implicit's marginal epoch."""
    return sum(w for w, _ in runs) / len(runs), sum(c for _, c in runs) / len(runs)


def implicit_epoch(csr: Any, factors: int, epochs: int, threads: int) -> tuple[float, float]:
    """Marginal (wall, CPU) seconds of one implicit BPR epoch."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    def fit(iters: int) -> tuple[float, float]:
        m = BayesianPersonalizedRanking(factors=factors, iterations=iters, num_threads=threads, random_state=0)
        return clock(lambda: m.fit(csr, show_progress=False))

    one, many = fit(1), fit(1 + epochs)
    return (many[0] - one[0]) / epochs, (many[1] - one[1]) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--interactions", type=int, default=5_000_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per round (implicit: the marginal)")
    ap.add_argument("--cache", default="/tmp/bpr/syn5m.npz")
    ap.add_argument("--torch-path", action="store_true", help="also time the torch reference path")
    ap.add_argument("--no-implicit", action="store_true")
    ap.add_argument("--hogwild", action="store_true", help="also time optimizer='hogwild'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load(args)
    import scipy.sparse as sp

    csr = sp.csr_matrix((np.ones(len(data), np.float32), (data.users, data.items)), shape=(data.n_users, data.n_items))
    n = len(data)
    load0 = os.getloadavg()[0]
    rates: dict[str, list[tuple[float, float]]] = {"kernel": [], "torch": [], "hogwild": [], "implicit": []}
    for r in range(args.rounds):
        kern = torchmf_epochs(data, args.factors, args.epochs, "numba")
        rates["kernel"].append(mean(kern))
        if args.torch_path:
            tp = torchmf_epochs(data, args.factors, max(1, args.epochs // 2), "torch")
            rates["torch"].append(mean(tp))
        if args.hogwild:
            rates["hogwild"].append(mean(torchmf_epochs(data, args.factors, args.epochs, "auto", "hogwild")))
        if not args.no_implicit:
            rates["implicit"].append(implicit_epoch(csr, args.factors, args.epochs, args.threads))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1][0]:.2f} s ({v[-1][1]:.2f} CPU s)" for k, v in rates.items() if v),
              flush=True)
    print(f"{n:,} pairs, {args.factors} factors, {args.threads} threads, load average {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f} (1 min)")
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in rates.items() if v}
    for k, (w, c) in best.items():
        print(f"{k:9s} epoch {w:.3f} s = {n / w / 1e6:.2f} M pairs/s (CPU {c:.2f} s)")
    for name in ("kernel", "hogwild"):
        if "implicit" in best and name in best:
            print(f"{name} / implicit rate ratio: {best['implicit'][0] / best[name][0]:.2f} (wall), "
                  f"{best['implicit'][1] / best[name][1]:.2f} (CPU)")


if __name__ == "__main__":
    main()
