"""Which iALS layout is faster where: CSR kernels versus gathered degree buckets.

torchmf's iALS picks, per side, how conjugate gradient reads the observed
pairs (``torchmf.solvers.cg``): CSR sampled/sparse products, which read
the other side's factors at random, or gathered padded buckets streamed through
batched matrix products. The rule in ``ials_side`` takes CSR on the CPU while
the other side's factor table is at most ``_CSR_MAX_OTHER_BYTES`` and rows
hold at least ``_CSR_MIN_MEAN_DEGREE`` pairs on average; this script measures
both layouts on both sides of a few sets so those thresholds can be checked on
a new machine.

Usage::

    python benchmarks/ials_layouts.py                    # synthetic sets, 1M-2M pairs
    python benchmarks/ials_layouts.py --movielens        # plus ML-100k ($TORCHMF_DATA_HOME)

Each half-sweep is timed ``--repeat`` times and the minimum reported (the
run least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from torchmf.solvers import cg
from torchmf.solvers.ials import IALSSettings, ials_half_sweep, ials_side

try:
    from common import DATA_HOME, machine
except ImportError:  # run as a module
    from benchmarks.common import DATA_HOME, machine

K = 64
SETTINGS = IALSSettings(reg=0.03, reg_exponent=1.0, unobserved_weight=0.3, cg_steps=3)


def skewed_pairs(n_users: int, n_items: int, nnz: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, users uniform, items with a Zipf-like popularity."""
    pop = np.bincount(rng.zipf(1.3, size=n_items * 50) % n_items, minlength=n_items) + 1
    u = rng.integers(0, n_users, nnz * 2)
    i = rng.choice(n_items, nnz * 2, p=pop / pop.sum())
    key = np.unique(u * n_items + i)[:nnz]
    rng.shuffle(key)
    return key // n_items, key % n_items


def min_time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def compare(name: str, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, repeat: int) -> None:
    cpu = torch.device("cpu")
    conf = np.full(len(users), 2.0, dtype=np.float32)
    g = torch.Generator().manual_seed(0)
    P = torch.randn(n_users, K, generator=g) * 0.1
    Q = torch.randn(n_items, K, generator=g) * 0.1
    for side, rows, cols, n_r, n_c, mine, other in (
        ("users", users, items, n_users, n_items, P, Q),
        ("items", items, users, n_items, n_users, Q, P),
    ):
        times = {}
        for layout in ("csr", "gathered"):
            lay = ials_side(rows, cols, conf, n_r, n_c, K, cpu, SETTINGS, layout=layout)
            times[layout] = min_time(lambda lay=lay, x=mine, y=other: ials_half_sweep(lay, x, y, SETTINGS), repeat)
        auto = "csr" if ials_side(rows, cols, conf, n_r, n_c, K, cpu, SETTINGS).chunks is None else "gathered"
        degree = len(rows) / len(np.unique(rows))
        print(f"| {name} | {side} | {len(users):,} | {degree:.0f} | {n_c * K * 4 / 2**20:.1f} MB | "
              f"{times['csr'] * 1e3:.1f} | "
              f"{times['gathered'] * 1e3:.1f} | {auto} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--movielens", action="store_true", help="also ML-100k from $TORCHMF_DATA_HOME")
    args = ap.parse_args()
    print(machine())
    print(f"{K} factors, cg_steps {SETTINGS.cg_steps}; min of {args.repeat} half-sweeps; "
          f"CSR when the other side's factors <= {cg._CSR_MAX_OTHER_BYTES / 2**20:.0f} MB and mean pairs per row "
          f">= {cg._CSR_MIN_MEAN_DEGREE}\n")
    print("| set | side | pairs | mean pairs per row | other side's factors | CSR ms | gathered ms | auto picks |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    if args.movielens:
        import torchmf

        d = torchmf.datasets.load_movielens("100k", data_home=DATA_HOME)
        compare("ML-100k", d.users, d.items, d.n_users, d.n_items, args.repeat)
    rng = np.random.default_rng(0)
    for n_users, n_items, nnz in ((6040, 3706, 1_000_000), (20_000, 8000, 1_000_000), (40_000, 16_000, 2_000_000),
                                  (100_000, 20_000, 2_000_000)):
        u, i = skewed_pairs(n_users, n_items, nnz, rng)
        compare(f"{n_users:,} x {n_items:,}", u, i, n_users, n_items, args.repeat)


if __name__ == "__main__":
    main()
