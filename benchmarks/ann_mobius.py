"""Which hnswlib graph finds the inner-product top-10 fastest: inner-product, Möbius, or merged graphs.

    python benchmarks/ann_mobius.py --items 200000                       # every graph and merge (RESULTS §11.5)
    python benchmarks/ann_mobius.py --items 1000000 --graphs mob --ef 10 20 30 50 80 100 150

Same synthetic catalogue as benchmarks/ann.py (``synthetic_factors``). Graphs,
each built with hnswlib (``torchmf.retrieval.hnswlib_graph.build_graph``), then
searched by inner product over the raw rows ``[q_i, b_i]``:

- ``ip``: built by the inner product itself;
- ``ang``: built by Euclidean distance over the normalised rows (angular);
- ``mob``: built by Euclidean distance over the Möbius-transformed rows
  ``x / |x|^2`` (Zhou et al. 2019; ``build_hnsw``'s default graph);
- ``ip+ang``, ``ip+mob``, ``mob+ang``: layer-0 edges of both merged
  (``merge_graphs``; ``ip+ang`` is ``graphs="union"``).

Reported: recall@10 against the exact top-10 (numpy) and CPU milliseconds per
single-query hnswlib call on one thread (``time.process_time``: steadier than
wall time on a shared machine). Build times are CPU seconds of the whole
build (all threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import synthetic_factors
from common import machine
from torchmf.retrieval.hnswlib_graph import build_graph, graph_arrays, graph_from_arrays, merge_graphs
from torchmf.retrieval.hnswlib_index import mobius

_SPACES = {"ip": "ip", "ang": "cosine", "mob": "l2"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graphs", nargs="+", default=["ip", "ang", "mob", "ip+ang", "ip+mob", "mob+ang"],
                    help="graphs to search (single graphs and a+b merges)")
    ap.add_argument("--ef", type=int, nargs="+", default=[50, 100, 150, 200, 300], help="beams to try")
    args = ap.parse_args(argv)
    items, bias, users = synthetic_factors(args.items, args.queries, 64, 0.3, args.seed)
    x = np.ascontiguousarray(np.concatenate([items, bias[:, None]], 1))
    y = np.ascontiguousarray(np.concatenate([users, np.ones((len(users), 1), np.float32)], 1))
    truth = np.stack([np.argpartition(-(x @ q), 10)[:10] for q in y])
    print(f"machine: {machine()}; {args.items:,} items, m={args.m}, ef_construction={args.ef_construction}")
    built: dict[str, dict[str, np.ndarray]] = {}
    for name in sorted({part for g in args.graphs for part in g.split("+")}):
        rows = mobius(x) if name == "mob" else x
        cpu = time.process_time()
        built[name] = graph_arrays(build_graph(rows, _SPACES[name], args.m, args.ef_construction, args.seed))
        print(f"{name} graph built: {time.process_time() - cpu:.1f} CPU s", flush=True)
    print("\n| graph | ef_search | recall@10 | CPU ms/query |\n|---|---:|---:|---:|")
    for g in args.graphs:
        parts = g.split("+")
        arrays = built[parts[0]] if len(parts) == 1 else merge_graphs(built[parts[0]], built[parts[1]])
        index = graph_from_arrays(arrays, x, max(args.ef))
        index.set_num_threads(1)
        for ef in args.ef:
            index.set_ef(ef)
            for q in y[:5]:  # warm-up
                index.knn_query(q[None], k=10)
            cpu = time.process_time()
            found = [index.knn_query(q[None], k=10)[0][0] for q in y]
            ms = (time.process_time() - cpu) / len(y) * 1e3
            recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
            print(f"| {g} | {ef} | {recall:.4f} | {ms:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
