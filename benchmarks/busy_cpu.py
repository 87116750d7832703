"""Fit time on a busy CPU: idle vs. busy-loop processes holding cores, same run (issue 12).

    python benchmarks/busy_cpu.py                    # 1 busy core, best of 3, policy vs fixed threads
    python benchmarks/busy_cpu.py --busy 2 --repeats 5
    python benchmarks/busy_cpu.py --modes policy     # only the thread policy (skip the slow fixed case)

Times two fits on MovieLens 100K u1.base (80,000 ratings): the default
``MatrixFactorization()`` (ALS, 5 sweeps) and a 10-epoch SGD fit. Each is run
``--repeats`` times on the idle machine, then as many times while ``--busy``
child processes spin in a pure-Python loop (each pinned to one core, from the
last core down, and killed after ``--max-busy-seconds`` at the latest). The
ratio busy/idle of the best runs is the issue's target (<= 2.5 with one busy
core of two). ``policy`` is torchmf's default thread policy
(``torchmf.device.thread_policy``); ``fixed`` turns it off
(``TORCHMF_THREAD_POLICY=off``), i.e. torch's default of one intra-op thread
per core, as before the policy existed.

Timing is only meaningful on an otherwise quiet machine: the "idle" column is
whatever else runs there too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from torchmf import MatrixFactorization
from torchmf.data.datasets import load_movielens_fold

CASES = {
    "default ALS (5 sweeps)": {},
    "SGD, 10 epochs": {"solver": "sgd", "epochs": 10},
}
_SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def fit_seconds(train, params: dict) -> float:
    start = time.perf_counter()
    MatrixFactorization(verbose=False, device="cpu", **params).fit(train)
    return time.perf_counter() - start


def start_busy(n: int, seconds: float) -> list[subprocess.Popen]:
    """``n`` spinning children, each pinned to one core (last cores first), alive at most ``seconds``."""
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for j in range(n):
        p = subprocess.Popen([sys.executable, "-c", _SPIN.format(seconds=seconds)])
        try:
            os.sched_setaffinity(p.pid, {cores[-1 - j % len(cores)]})
        except OSError:
            pass
        procs.append(p)
    time.sleep(0.3)  # let them start spinning
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="policy,fixed", help="comma list of policy, fixed")
    parser.add_argument("--max-busy-seconds", type=float, default=60.0)
    args = parser.parse_args()
    train, _ = load_movielens_fold(1)
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"ML-100k u1.base ({len(train):,} ratings); {args.busy} busy-loop process(es); "
          f"best and median of {args.repeats}\n")
    print("| fit | threads | idle best (s) | busy best (s) | busy median (s) | busy/idle (best) |")
    print("|---|---|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        os.environ["TORCHMF_THREAD_POLICY"] = "auto" if mode == "policy" else "off"
        for name, params in CASES.items():
            fit_seconds(train, params)  # warm-up
            idle = sorted(fit_seconds(train, params) for _ in range(args.repeats))
            procs = start_busy(args.busy, args.max_busy_seconds)
            try:
                busy = sorted(fit_seconds(train, params) for _ in range(args.repeats))
            finally:
                stop_busy(procs)
            label = "policy" if mode == "policy" else f"fixed {torch.get_num_threads()}"
            print(f"| {name} | {label} | {idle[0]:.3f} | {busy[0]:.3f} | {busy[len(busy) // 2]:.3f} "
                  f"| {busy[0] / idle[0]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
