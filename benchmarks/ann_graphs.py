"""Which HNSW graph finds the inner-product top-10: an inner-product graph, an angular graph, or both together.

    python benchmarks/ann_graphs.py --items 200000            # the comparison in RESULTS §11

An experiment for the next step of issue 14 (not what ``build_hnsw`` does).
Same synthetic catalogue as benchmarks/ann.py (``synthetic_factors``).
Three searches, all scored by the inner product ``[p, 1] · [q_i, b_i]``:

- ``ip``: faiss ``IndexHNSWFlat`` built with the inner-product metric (what
  ``build_hnsw`` builds);
- ``angular``: a graph built by Euclidean distance over the *normalised*
  vectors, then searched by inner product over the raw vectors (the stored
  vectors are swapped after building);
- ``union``: both searches, candidates merged and re-scored exactly.

Times are CPU seconds of single-query faiss calls on one thread (plus numpy
for the union), not wall time: the machine is shared.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import synthetic_factors
from common import machine
from torchmf.retrieval.ann_common import import_faiss, recall_at


def as_inner_product(faiss, index):
    """A copy of a Euclidean ``IndexHNSWFlat`` whose searches use the inner product (same graph)."""
    raw = bytearray(faiss.serialize_index(index).tobytes())
    header = 4 + 4 + 8 + 8 + 8 + 1  # fourcc, d, ntotal, 2 dummies, is_trained; then metric_type
    struct.pack_into("<i", raw, header, faiss.METRIC_INNER_PRODUCT)
    flat = raw.find(b"IxF2", 4)  # the storage: IndexFlatL2 -> IndexFlatIP
    raw[flat : flat + 4] = b"IxFI"
    struct.pack_into("<i", raw, flat + header, faiss.METRIC_INNER_PRODUCT)
    return faiss.deserialize_index(np.frombuffer(bytes(raw), dtype=np.uint8))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", nargs="*", default=[], metavar="IP:ANGULAR",
                    help="only the union, with these ef_search pairs (e.g. 300:150), plus exact search's wall time")
    args = ap.parse_args(argv)
    faiss = import_faiss()
    items, bias, users = synthetic_factors(args.items, args.queries, 64, 0.3, args.seed)
    x = np.ascontiguousarray(np.concatenate([items, bias[:, None]], 1))
    y = np.ascontiguousarray(np.concatenate([users, np.ones((len(users), 1), np.float32)], 1))
    best = np.concatenate([np.argsort(-(y[s : s + 100] @ x.T), 1)[:, :10] for s in range(0, len(y), 100)])
    print(f"machine: {machine()}; {args.items:,} items, m={args.m}, ef_construction={args.ef_construction}")

    graphs = {}
    for kind in ("ip", "angular"):
        start = time.perf_counter()
        if kind == "ip":
            g = faiss.IndexHNSWFlat(x.shape[1], args.m, faiss.METRIC_INNER_PRODUCT)
            g.hnsw.efConstruction = args.ef_construction
            g.add(x)
        else:
            g = faiss.IndexHNSWFlat(x.shape[1], args.m, faiss.METRIC_L2)
            g.hnsw.efConstruction = args.ef_construction
            g.add(x / np.linalg.norm(x, axis=1, keepdims=True))
            g = as_inner_product(faiss, g)
            storage = faiss.downcast_index(g.storage)
            faiss.rev_swig_ptr(storage.get_xb(), x.size).reshape(x.shape)[:] = x  # search the raw vectors
        graphs[kind] = g
        print(f"{kind} graph built in {time.perf_counter() - start:.0f} s (wall, 2 threads)", flush=True)

    exact_ms = 0.0
    if args.pairs:  # timed first: faiss' omp_set_num_threads below also sets torch's threads (one OpenMP)
        import torch

        from torchmf.retrieval import ExactIndex

        exact = ExactIndex(torch.from_numpy(items), torch.from_numpy(bias))
        start = time.perf_counter()
        for i in range(100):
            exact.search(torch.from_numpy(users[i : i + 1]), 10)
        exact_ms = (time.perf_counter() - start) / 100 * 1e3
        print(f"exact (ExactIndex.search, torch {torch.get_num_threads()} threads): {exact_ms:.2f} ms/query wall")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)

    def search(g, q, ef):
        return g.search(q, ef, params=faiss.SearchParametersHNSW(efSearch=ef))[1]

    def union(q, ef, ef_angular=None):
        ids = np.concatenate([search(graphs["ip"], q, ef), search(graphs["angular"], q, ef_angular or ef)], 1)
        s = np.einsum("bcd,bd->bc", x[np.maximum(ids, 0)], q)
        s[ids < 0] = -np.inf
        order = np.argsort(-s, 1)
        ids, s = np.take_along_axis(ids, order, 1), np.take_along_axis(s, order, 1)
        s[:, 1:][ids[:, 1:] == ids[:, :-1]] = -np.inf  # an item both graphs found: keep one
        return np.take_along_axis(ids, np.argsort(-s, 1, kind="stable")[:, :10], 1)

    if args.pairs:
        print("| union ef_search ip:angular | recall@10 | ms/query wall | CPU ms/query | × exact (wall) |\n"
              "|---|---:|---:|---:|---:|")
        for pair in args.pairs:
            a, b = (int(v) for v in pair.split(":"))
            got = np.concatenate([union(y[i : i + 1], a, b) for i in range(len(y))])
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(len(y)):
                union(y[i : i + 1], a, b)
            wall, cpu = (time.perf_counter() - start) / len(y), (time.process_time() - cpu) / len(y)
            print(f"| {a}:{b} | {recall_at(got, best).mean():.4f} | {wall * 1e3:.3f} | {cpu * 1e3:.3f} |"
                  f" {exact_ms / (wall * 1e3):.1f} |", flush=True)
        faiss.omp_set_num_threads(threads)
        return 0
    print("| search | ef_search | recall@10 | CPU ms/query |\n|---|---:|---:|---:|")
    for name, ef_list in (("ip", (100, 200, 400, 800, 1600)), ("angular", (100, 200, 400, 800, 1600)),
                          ("union", (50, 100, 200, 400))):
        for ef in ef_list:
            run = (lambda q, ef=ef: union(q, ef)) if name == "union" else \
                (lambda q, ef=ef, g=graphs[name]: search(g, q, ef)[:, :10])
            got = np.concatenate([run(y[i : i + 1]) for i in range(len(y))])
            start = time.process_time()
            for i in range(len(y)):
                run(y[i : i + 1])
            cpu = (time.process_time() - start) / len(y)
            print(f"| {name} | {ef} (each) | {recall_at(got, best).mean():.4f} | {cpu * 1e3:.3f} |"
                  if name == "union" else f"| {name} | {ef} | {recall_at(got, best).mean():.4f} | {cpu * 1e3:.3f} |",
                  flush=True)
    faiss.omp_set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
