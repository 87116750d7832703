"""Peak memory (and time) of an iALS fit at scale, torchmf beside implicit, same scipy CSR input (issue 12).

    python benchmarks/memory_scale.py --cache /tmp/mem50m.npz                   # 50 M: 1 M users x 100 k items
    python benchmarks/memory_scale.py --users 100000 --items 20000 --interactions 5000000 --cache /tmp/mem5m.npz
    python benchmarks/memory_scale.py --cache /tmp/mem50m.npz --libraries torchmf --epochs 1
    python benchmarks/memory_scale.py --cache /tmp/mem50m.npz --libraries "" --csv /tmp/mem50m.csv --readers arrow

The data is a synthetic implicit matrix: users' degrees vary (geometric-like),
items follow a Zipf popularity (exponent ``--zipf``); pairs are distinct. It is
generated once (vectorised numpy, seconds) and kept in ``--cache`` so each
library runs in a *fresh process* on exactly the same CSR matrix, and the peak
resident set size (``ru_maxrss``) of that process is what is reported, next to
the resident size right after loading the matrix (so the fit's own peak is the
difference). implicit (``pip install implicit``; a benchmark-only dependency)
fits ``implicit.cpu.als.AlternatingLeastSquares`` on the same CSR; torchmf runs
``Interactions.from_csr`` and ``MatrixFactorization(loss="ials")``.

With ``--csv`` the pairs are also written as a ``user,item`` CSV and
read: by ``torchmf.read_ratings`` as shipped ("arrow": large files stream
through pyarrow, :mod:`torchmf.data.arrow`) and by the same call with the
streaming threshold out of reach ("pandas": the small-file reader).

Timing is only meaningful on a quiet machine; peak memory does not depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def generate(n_users: int, n_items: int, nnz: int, zipf: float, seed: int = 0) -> sp.csr_matrix:
    """A (n_users, n_items) 0/1 CSR matrix with about ``nnz`` distinct entries, Zipf item popularity."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
    pop = pop[rng.permutation(n_items)]  # popular items anywhere in the id range
    cdf = np.cumsum(pop / pop.sum())
    # draw extra pairs to make up for repeats (popular items repeat often), more until there are enough
    degree = rng.gamma(0.7, 1.0, n_users)
    extra = 1.1
    while True:
        users = np.repeat(np.arange(n_users, dtype=np.int32), rng.multinomial(int(nnz * extra), degree / degree.sum()))
        items = np.searchsorted(cdf, rng.random(len(users))).astype(np.int32)
        np.minimum(items, n_items - 1, out=items)
        m = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
        del users, items
        if m.nnz >= nnz:
            break
        extra *= 1.05 * nnz / m.nnz
    m.data[:] = 1.0  # repeats were summed
    if m.nnz > nnz:  # drop the surplus evenly so nnz matches the request
        keep = np.sort(rng.choice(m.nnz, nnz, replace=False))
        rows = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(m.indptr))[keep]
        m = sp.csr_matrix((m.data[keep], m.indices[keep], np.r_[0, np.cumsum(np.bincount(rows, minlength=n_users))]),
                          shape=m.shape)
    return m


def load(cache: str) -> sp.csr_matrix:
    z = np.load(cache)
    return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PhaseProbe:
    """RSS phase by phase (benchmark-only): a thread samples ``/proc/self/statm`` every 2 ms and the
    fit's set-up steps are wrapped to name the phase; reports the highest RSS seen in each phase and
    the RSS when it ended."""

    def __init__(self) -> None:
        import threading

        self.phase, self.rows, self.high = "start", [], rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.high = max(self.high, rss_mb())

    def enter(self, name: str) -> None:
        self.high = max(self.high, rss_mb())
        self.rows.append({"phase": self.phase, "high_mb": round(self.high), "end_mb": round(rss_mb())})
        self.phase, self.high = name, rss_mb()

    def wrap(self, owner: object, attr: str, name: str) -> None:
        """Name the phase ``name`` while ``owner.attr`` runs; what follows it is ``after <name>``."""
        inner = getattr(owner, attr)
        is_class_method = isinstance(owner.__dict__.get(attr), classmethod) if isinstance(owner, type) else False

        def wrapped(*args, **kwargs):
            self.enter(name)
            try:
                return inner(*args, **kwargs)
            finally:
                self.enter(f"after {name}")

        setattr(owner, attr, classmethod(lambda cls, *a, **k: wrapped(*a, **k)) if is_class_method else wrapped)

    def stop(self) -> list[dict]:
        self.enter("end")
        self._stop.set()
        return self.rows


def probe_torchmf() -> PhaseProbe:
    """A :class:`PhaseProbe` around torchmf's fit set-up steps."""
    import torchmf
    from torchmf.estimator import mf
    from torchmf.solvers import ials_solver

    probe = PhaseProbe()
    probe.wrap(torchmf.Interactions, "from_csr", "from_csr")
    probe.wrap(torchmf.Interactions, "compact", "compact")
    probe.wrap(ials_solver, "confidence", "confidence")
    probe.wrap(ials_solver, "ials_side_csr", "ials_side")
    probe.wrap(ials_solver, "csr_transpose", "transpose")
    probe.wrap(ials_solver.IALSSolver, "epoch", "sweep")
    probe.wrap(mf.MatrixFactorization, "_set_seen", "seen index")
    return probe


def read_one(reader: str, csv: str) -> dict:
    """The CSV read in this process by ``read_ratings``: streamed by pyarrow ("arrow") or by pandas ("pandas")."""
    import torchmf
    import torchmf.data.arrow

    if reader == "pandas":
        torchmf.data.arrow.STREAM_MIN_BYTES = 1 << 62
    before = rss_mb()
    t = time.perf_counter()
    data = torchmf.read_ratings(csv, implicit=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"library": f"read ({reader})", "seconds": seconds, "convert_s": 0.0, "after_load_mb": before,
            "peak_mb": peak, "threads": 1, "n": len(data)}


def write_csv(m: sp.csr_matrix, path: str) -> None:
    """The matrix's pairs as ``user,item`` lines (row and column numbers) under a header."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    users = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    table = pa.table({"user": pa.array(users), "item": pa.array(m.indices.astype(np.int64))})
    with open(path, "wb") as f:
        f.write(b"user,item\n")
        pcsv.write_csv(table, f, pcsv.WriteOptions(include_header=False, quoting_style="none"))


def run_one(library: str, cache: str, factors: int, epochs: int) -> dict:
    """Fit in this process; returns seconds and memory (MB)."""
    if library.startswith("read:"):
        _, reader, csv = library.split(":", 2)
        return read_one(reader, csv)
    m = load(cache)
    after_load = rss_mb()
    if library == "torchmf":
        import torch

        import torchmf

        probe = probe_torchmf() if os.environ.get("MEMORY_PHASES") else None
        t = time.perf_counter()
        data = torchmf.Interactions.from_csr(m, implicit=True)
        convert = time.perf_counter() - t
        torchmf.MatrixFactorization(loss="ials", factors=factors, epochs=epochs, device="cpu", verbose=False).fit(data)
        threads = torch.get_num_threads()
        if probe is not None:
            print(json.dumps(probe.stop()), file=sys.stderr)
    else:
        from implicit.cpu.als import AlternatingLeastSquares

        t = time.perf_counter()
        convert = 0.0
        model = AlternatingLeastSquares(factors=factors, iterations=epochs, calculate_training_loss=False,
                                        random_state=0)
        model.fit(m, show_progress=False)
        threads = os.cpu_count()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"library": library, "seconds": seconds, "convert_s": convert, "after_load_mb": after_load,
            "peak_mb": peak, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--interactions", type=int, default=50_000_000)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--libraries", default="torchmf,implicit")
    ap.add_argument("--cache", required=True, help="npz file holding the generated CSR matrix (made when missing)")
    ap.add_argument("--csv", help="also write the pairs to this CSV and time/measure reading it "
                    "(pyarrow path and the pandas reader)")
    ap.add_argument("--readers", default="arrow,pandas", help="with --csv: which read paths to measure")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one library in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.cache, args.factors, args.epochs)))
        return
    if not Path(args.cache).exists():
        t = time.perf_counter()
        m = generate(args.users, args.items, args.interactions, args.zipf)
        np.savez(args.cache, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.array(m.shape))
        print(f"generated {m.nnz:,} interactions in {time.perf_counter() - t:.1f} s -> {args.cache}")
    m = load(args.cache)
    print(f"{m.shape[0]:,} users x {m.shape[1]:,} items, {m.nnz:,} interactions; factors {args.factors}, "
          f"{args.epochs} sweeps; each library in a fresh process (peak = ru_maxrss)\n")
    del m
    print("| library | threads | fit (s) | of it: CSR -> data (s) | RSS after loading CSR (MB) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    runs = [x for x in args.libraries.split(",") if x]
    if args.csv:
        if not Path(args.csv).exists():
            write_csv(load(args.cache), args.csv)
        runs += [f"read:{r}:{args.csv}" for r in args.readers.split(",") if r]
    for lib in runs:
        out = subprocess.run([sys.executable, __file__, "--one", lib, "--cache", args.cache, "--factors",
                              str(args.factors), "--epochs", str(args.epochs)], capture_output=True, text=True)
        if os.environ.get("MEMORY_PHASES") and out.stderr:
            print(out.stderr.strip(), file=sys.stderr)
        if out.returncode:
            print(f"| {lib} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {lib} | {r['threads']} | {r['seconds']:.1f} | {r['convert_s']:.2f} | {r['after_load_mb']:.0f} "
              f"| {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
