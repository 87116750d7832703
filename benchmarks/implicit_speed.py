"""Speed of the implicit solvers on a 5M-interaction synthetic set.

Measures, on whatever CPU/GPU torch picks (the targets are for 2 CPU cores):

- ``synthetic(n_users=100_000, n_items=20_000, n_interactions=5_000_000, implicit=True)``
  generation time;
- iALS, 64 factors: seconds per sweep (users then items, incl. the loss the
  monitor records), timed sweep by sweep exactly as ``fit`` runs them;
- top-10 with seen items filtered for every user, via ``top_k`` and via
  ``recommend`` (which also builds the DataFrame of raw ids);
- BPR (and any other sampled-negative loss asked for): interactions per second
  of one epoch.

A shared machine's speed drifts by tens of percent from minute to minute, so
each timing is repeated and the minimum (the run least disturbed by other
processes) is reported next to the median.

Usage::

    python benchmarks/implicit_speed.py                        # everything, default sizes
    python benchmarks/implicit_speed.py --cache /tmp/syn5m.npz # reuse the generated data
    python benchmarks/implicit_speed.py --losses bpr,warp --repeat 5
    python benchmarks/implicit_speed.py --cache /tmp/syn5m.npz --versus-implicit --losses none

``--versus-implicit`` times, in the same process and alternating round by round
(``--rounds``), a whole 10-sweep iALS fit (``MatrixFactorization(loss="ials",
epochs=10)``) against implicit's ``AlternatingLeastSquares(iterations=10)`` on the
same pairs and factors, and top-10 of every user with seen items filtered
(``top_k`` against implicit's ``recommend(..., filter_already_liked_items=True)``),
both libraries on ``torch.get_num_threads()`` threads (implicit's BLAS limited to one
thread, as implicit asks); it prints the ratios.

``--phases`` times one whole torchmf fit phase by phase, wall and CPU seconds: the
set-up before the first sweep, every half-sweep, the loss; CPU / wall is the number of
cores a phase kept busy (2 on an idle 2-core machine when both threads work)::

    python benchmarks/implicit_speed.py --cache /tmp/syn5m.npz --phases --losses none --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import torchmf
from torchmf.data.idmap import IdMap
from torchmf.data.interactions import Interactions
from torchmf.device import resolve_device
from torchmf.solvers import get_solver
from torchmf.solvers.sgd_solver import auto_batch_size


def load_data(args: argparse.Namespace) -> Interactions:
    if args.cache and os.path.exists(args.cache):
        z = np.load(args.cache)
        users, items = z["users"], z["items"]
        print(f"data: {len(users):,} interactions from {args.cache}")
    else:
        t = time.perf_counter()
        data, _ = torchmf.datasets.synthetic(
            n_users=args.users, n_items=args.items, n_interactions=args.interactions, implicit=True, seed=0
        )
        print(f"synthetic(implicit=True) generated {len(data):,} interactions in {time.perf_counter() - t:.1f} s")
        users, items = data.users, data.items
        if args.cache:
            np.savez(args.cache, users=users, items=items)
    return Interactions(users, items, np.ones(len(users), np.float32), IdMap(np.arange(args.users), "user"),
                        IdMap(np.arange(args.items), "item"), implicit=True)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(min, median) seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def fresh_model(data: Interactions, hp: dict) -> torchmf.MFModel:
    model = torchmf.MFModel(data.n_users, data.n_items, hp["factors"], init_std=hp["init_std"],
                            generator=torch.Generator().manual_seed(0))
    return model.requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--interactions", type=int, default=5_000_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5, help="timed sweeps / top-k runs / epochs")
    ap.add_argument("--losses", default="bpr", help="sampled-negative losses to time (comma separated, or none)")
    ap.add_argument("--cache", help="npz file to keep the generated data in")
    ap.add_argument("--skip-ials", action="store_true", help="time only the sampled-negative losses")
    ap.add_argument("--versus-implicit", action="store_true",
                    help="same-run whole-fit and top-10 ratios against implicit's ALS (needs implicit)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of --versus-implicit")
    ap.add_argument("--epochs", type=int, default=10, help="sweeps of the --versus-implicit fits")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (and implicit's num_threads) first")
    ap.add_argument("--phases", action="store_true", help="one whole fit, wall and CPU seconds phase by phase")
    ap.add_argument("--same-input", action="store_true",
                    help="--versus-implicit: torchmf fits Interactions.from_csr(the scipy CSR implicit gets), from_csr "
                         "timed as part of its fit, instead of the (user, item) arrays")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    data = load_data(args)

    if args.phases:
        fit_phases(args, data)
    elif args.versus_implicit:
        versus_implicit(args, data)
    elif not args.skip_ials:
        time_ials(args, data, device)

    # ---- sampled-negative epochs
    for loss in [x for x in args.losses.split(",") if x and x != "none"]:
        hp = MatrixFactorizationDefaults(loss=loss, factors=args.factors)
        hp["batch_size"] = hp["batch_size"] or auto_batch_size(loss, len(data))  # as fit() resolves it
        model = fresh_model(data, hp).to(device)
        epoch = get_solver(loss)(model, data, hp, device).epoch
        best, median = timed(epoch, args.repeat)
        rate = len(data) / best / 1e6
        print(f"{loss} epoch ({hp['optimizer']}, negatives={hp['negatives']}, batch {hp['batch_size']}): "
              f"min {best:.2f} s = {rate:.2f} M interactions/s, median {median:.2f} s")


def time_ials(args: argparse.Namespace, data: Interactions, device: torch.device) -> None:
    """iALS sweeps exactly as fit runs them, then top-10 of every user with seen items filtered."""
    hp = MatrixFactorizationDefaults(loss="ials", factors=args.factors)
    model = fresh_model(data, hp).to(device)
    t = time.perf_counter()
    sweep = get_solver("ials")(model, data, hp, device).epoch
    print(f"iALS setup (CSR and/or gathered layout of both sides): {time.perf_counter() - t:.2f} s")
    best, median = timed(sweep, args.repeat)
    print(f"iALS sweep, {args.factors} factors, cg_steps={hp['cg_steps']}: min {best:.3f} s, median {median:.3f} s")

    # top-10 of every user, seen items filtered
    est = torchmf.MatrixFactorization(loss="ials", factors=args.factors, epochs=1, verbose=False).fit(data)
    users = np.arange(data.n_users)
    best, median = timed(lambda: est.top_k(users, 10, exclude_seen=True), max(1, args.repeat // 2))
    print(f"top_k(all {len(users):,} users, k=10, exclude_seen=True): min {best:.2f} s, median {median:.2f} s")
    raw = est.user_map.raw(users)
    best, median = timed(lambda: est.recommend(raw, k=10), 1)
    print(f"recommend(all users, k=10) incl. DataFrame: {best:.2f} s")


def fit_phases(args: argparse.Namespace, data: Interactions) -> None:
    """One ``MatrixFactorization(loss="ials").fit`` with each phase's wall and CPU seconds (see the module doc)."""
    from torchmf.solvers import ials_solver

    marks: list[tuple[str, float, float]] = []  # (phase that ends here, wall, CPU) at each phase boundary
    originals = {name: getattr(ials_solver, name) for name in ("ials_half_sweep", "fused_half_sweep", "ials_loss")}

    def timed_phase(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def run(*a: object, **k: object) -> object:
            marks.append(("before", time.perf_counter(), time.process_time()))
            out = fn(*a, **k)
            marks.append((name, time.perf_counter(), time.process_time()))
            return out
        return run

    for name, fn in originals.items():
        setattr(ials_solver, name, timed_phase(name, fn))
    try:
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        torchmf.MatrixFactorization(loss="ials", factors=args.factors, epochs=args.epochs, device="cpu",
                                    verbose=False).fit(data)
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        for name, fn in originals.items():
            setattr(ials_solver, name, fn)
    rows: dict[str, list[float]] = {}
    prev_t, prev_c, half = t0, c0, 0
    for name, t, c in marks:
        if name == "before":
            key = "set-up before the first sweep" if prev_t == t0 else "between phases (monitor, policy)"
        elif name in ("ials_half_sweep", "fused_half_sweep"):
            key = f"half-sweep ({'users' if half % 2 == 0 else 'items'})"
            half += 1
        else:
            key = "training loss"
        row = rows.setdefault(key, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += t - prev_t
        row[2] += c - prev_c
        prev_t, prev_c = t, c
    row = rows.setdefault("after the last sweep (install, seen index)", [0, 0.0, 0.0])
    row[0], row[1], row[2] = 1, t1 - prev_t, c1 - prev_c
    print(f"iALS fit phases, {torch.get_num_threads()} threads, {args.epochs} sweeps, factors {args.factors}, "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} (1 min)")
    for key, (n, wall, cpu) in rows.items():
        print(f"  {key:45s} x{n:<3d} wall {wall:7.3f} s  CPU {cpu:7.3f} s  CPU/wall {cpu / max(wall, 1e-9):.2f}")
    print(f"  {'whole fit':45s}      wall {t1 - t0:7.3f} s  CPU {c1 - c0:7.3f} s  CPU/wall {(c1 - c0) / (t1 - t0):.2f}")


def versus_implicit(args: argparse.Namespace, data: Interactions) -> None:
    """Whole iALS fit and all-user filtered top-10, torchmf then implicit, ``args.rounds`` rounds, same process."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    csr = sp.csr_matrix((np.ones(len(data), np.float32), (data.users, data.items)),
                        shape=(data.n_users, data.n_items))
    users = np.arange(data.n_users)
    load = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in ("fit_t", "fit_i", "top_t", "top_i")}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # process CPU seconds: far less disturbed by load

    def timed_run(key: str, fn: Callable[[], object]) -> object:
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times[key].append(time.perf_counter() - t)
        cpu[key].append(time.process_time() - c)
        return out

    def torchmf_input() -> Interactions:
        # --same-input: the very matrix implicit is given (its building is timed for neither library)
        return Interactions.from_csr(csr, implicit=True) if args.same_input else data

    for r in range(args.rounds):
        est = timed_run("fit_t", lambda: torchmf.MatrixFactorization(
            loss="ials", factors=args.factors, epochs=args.epochs, device="cpu", verbose=False).fit(torchmf_input()))
        timed_run("top_t", lambda e=est: e.top_k(users, 10, exclude_seen=True))
        del est
        with threadpool_limits(1, "blas"):  # as implicit asks: its own threads, single-threaded BLAS
            m = AlternatingLeastSquares(factors=args.factors, iterations=args.epochs, calculate_training_loss=False,
                                        num_threads=threads, random_state=0)
            timed_run("fit_i", lambda m=m: m.fit(csr, show_progress=False))
            timed_run("top_i", lambda m=m: m.recommend(users, csr, N=10, filter_already_liked_items=True))
        del m
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s ({cpu[k][-1]:.2f} CPU s)" for k, v in times.items()),
              flush=True)
    load = (load, os.getloadavg())
    best = {k: min(v) for k, v in times.items()}
    least = {k: min(v) for k, v in cpu.items()}
    print("torchmf input: " + ("Interactions.from_csr(implicit's CSR), timed in its fit" if args.same_input
                               else "(user, item) arrays (Interactions), its CSR layouts built in its fit"))
    print(f"{threads} threads, {args.epochs} sweeps, factors {args.factors}, load average "
          f"{load[0][0]:.1f} -> {load[1][0]:.1f} (1 min)")
    print(f"whole fit: torchmf {best['fit_t']:.2f} s, implicit {best['fit_i']:.2f} s (best of {args.rounds}): "
          f"ratio {best['fit_t'] / best['fit_i']:.2f}")
    print(f"top-10 all users, seen filtered: torchmf {best['top_t']:.2f} s, implicit {best['top_i']:.2f} s: "
          f"ratio {best['top_t'] / best['top_i']:.2f}")
    print(f"CPU seconds: fit torchmf {least['fit_t']:.2f}, implicit {least['fit_i']:.2f}: ratio "
          f"{least['fit_t'] / least['fit_i']:.2f}; top-10 torchmf {least['top_t']:.2f}, implicit {least['top_i']:.2f}: "
          f"ratio {least['top_t'] / least['top_i']:.2f}")


def MatrixFactorizationDefaults(**kwargs: object) -> dict:  # noqa: N802 - reads like the estimator call
    """The effective hyperparameters ``MatrixFactorization(**kwargs)`` would train with."""
    return torchmf.MatrixFactorization(verbose=False, **kwargs).effective_params


if __name__ == "__main__":
    main()
