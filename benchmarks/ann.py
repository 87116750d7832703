"""Approximate (HNSW) against exact top-10 retrieval on a synthetic catalogue: recall@10 and single-query speed.

    python benchmarks/ann.py                          # 1 M items, factors 64 (issue 14 target), Möbius graph
    python benchmarks/ann.py --items 100000 --ef-search 50 100   # a quicker check
    python benchmarks/ann.py --graphs ip --ef-search 200 400 800   # the single faiss inner-product graph
    python benchmarks/ann.py --graphs union            # inner-product + angular graph edges (round 2, session 4)

The factors are random, not trained: item vectors are Gaussian with a decaying
spectrum (dimension j scaled by 1/sqrt(j), as trained factors concentrate their
variance in few directions), times a log-normal per-item norm (sigma
``--norm-spread``: popular items have larger norms), plus a N(0, 0.3²) item
bias; user vectors share the spectrum. Queries are users, scored
``p_u · q_i + b_i``; nothing is excluded.

Exact search is ``ExactIndex.search`` (what ``recommend`` uses without an
index: one ``q @ items.T + bias`` and ``torch.topk`` over every item), also
timed as the bare matmul + topk; HNSW is ``HNSWIndex.search`` through its
full Python path, without exclusions and with ``--seen`` random items
excluded per query (over-fetching). All answer one query at a time
(single-query throughput) after a few warm-up queries; recall@10 (nothing
excluded) is measured against exact search on ``--recall-queries`` users, for
each ``--ef-search``. ``--dims N`` builds a projected graph instead (N leading
score axes, beam re-scored exactly; ``--rerank`` candidates, 0 = the whole
beam); process CPU time per query is reported beside wall time.

``--graphs mobius`` (the default, ``build_hnsw``'s default) builds an hnswlib
Euclidean graph over Möbius-transformed vectors; ``--graphs union`` the union
index (an inner-product and an angular hnswlib graph merged into one);
``--graphs ip`` the single faiss graph of earlier rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from torchmf.retrieval import ExactIndex
from torchmf.retrieval.ann_common import recall_at
from torchmf.retrieval.ann_io import load_index, save_index
from torchmf.retrieval.hnsw import build_hnsw


def synthetic_factors(n_items: int, n_users: int, dim: int, spread: float, seed: int):
    """Random item/user factors with a decaying spectrum and log-normal item norms (see module doc)."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    items = np.empty((n_items, dim), dtype=np.float32)
    for s in range(0, n_items, 1 << 18):  # in blocks: bounded float64 temporaries
        n = min(1 << 18, n_items - s)
        norm = np.exp(rng.normal(0.0, spread, (n, 1)))
        items[s : s + n] = rng.standard_normal((n, dim)) * scale * norm
    bias = rng.normal(0.0, 0.3, n_items).astype(np.float32)
    users = (rng.standard_normal((n_users, dim)) * scale).astype(np.float32)
    return items, bias, users


CPU_SECONDS: list[float] = []  # CPU time per query of each per_query_seconds call (a loaded machine inflates wall time)


def per_query_seconds(fn, queries: np.ndarray, warmup: int = 5) -> float:
    """Mean wall time of ``fn(one query row)`` over the rows, after ``warmup`` untimed calls."""
    for i in range(min(warmup, len(queries))):
        fn(queries[i : i + 1])
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(len(queries)):
        fn(queries[i : i + 1])
    CPU_SECONDS.append((time.process_time() - cpu) / len(queries))  # of this process, all threads
    return (time.perf_counter() - start) / len(queries)


def excluding(index, seen: list[np.ndarray]):
    """A one-query search that excludes the next list of ``seen`` items at each call (cycling)."""
    lists = itertools.cycle(seen)

    def run(q: np.ndarray) -> None:
        s = next(lists)
        index.search(q, 10, exclude=(np.array([0, len(s)]), s))

    return run


def cached_index(args: argparse.Namespace, items: np.ndarray, bias: np.ndarray, users: np.ndarray):
    """The index these arguments describe: read from ``--index-cache`` when saved there with them, else built."""
    build_args = {k: getattr(args, k) for k in ("items", "dim", "graphs", "m", "ef_construction", "dims", "norm_spread",
                                                "seed", "recall_queries")}
    entry_file = Path(args.index_cache, "entry.json") if args.index_cache else None
    if entry_file is not None and entry_file.exists():
        saved = json.loads(entry_file.read_text())
        if saved["build_args"] == build_args:
            print(f"index read from {args.index_cache} (built earlier with the same arguments)", flush=True)
            return load_index(args.index_cache, saved["entry"])
    index = build_hnsw(items, bias, m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search[0],
                       dims=args.dims, rerank=args.rerank[0], recall_queries=users, n_recall=args.recall_queries,
                       seed=args.seed, graphs=args.graphs)
    if entry_file is not None:
        entry_file.parent.mkdir(parents=True, exist_ok=True)
        entry = save_index(index, args.index_cache)
        entry_file.write_text(json.dumps({"build_args": build_args, "entry": entry}))
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--graphs", choices=("mobius", "ip", "union"), default="mobius")
    ap.add_argument("--m", type=int, default=None, help="graph degree (default mobius 16, ip 32, union 24)")
    ap.add_argument("--ef-construction", type=int, default=None, help="default mobius 100, ip 200, union 128")
    ap.add_argument("--ef-search", type=int, nargs="+", default=None,
                    help="beams to try (default: mobius 25 50 100 200, union 100 200 300 400, ip 200 400 800)")
    ap.add_argument("--dims", type=int, default=None,
                    help="build a projected graph over this many coordinates (default: the full vectors)")
    ap.add_argument("--rerank", type=int, nargs="+", default=[0],
                    help="candidates re-scored exactly (projected graphs; 0 = the whole beam), each tried with every"
                         " --ef-search")
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--timed-queries", type=int, default=200, help="single queries timed per method")
    ap.add_argument("--seen", type=int, default=100, help="items excluded per query in the over-fetch timing")
    ap.add_argument("--norm-spread", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--index-cache", metavar="DIR",
                    help="load the index saved here by an earlier run with the same arguments, else build it and"
                         " save it here (so that a build on a busy machine can be timed later on a quiet one)")
    args = ap.parse_args(argv)
    if args.ef_search is None:
        beams = {"mobius": [25, 50, 100, 200], "union": [100, 200, 300, 400], "ip": [200, 400, 800]}
        args.ef_search = beams[args.graphs]

    n_users = max(args.recall_queries, args.timed_queries)
    items, bias, users = synthetic_factors(args.items, n_users, args.dim, args.norm_spread, args.seed)
    print(f"machine: {machine()}")
    print(f"catalogue: {args.items:,} items x {args.dim} factors (synthetic, norm spread {args.norm_spread})")

    items_t, bias_t = torch.from_numpy(items), torch.from_numpy(bias)

    exact_index = ExactIndex(items_t, bias_t)

    def matmul_topk(q: np.ndarray) -> None:
        with torch.no_grad():
            torch.topk(torch.from_numpy(q) @ items_t.T + bias_t, 10, dim=1)

    timed = users[: args.timed_queries]
    bare_s = per_query_seconds(matmul_topk, timed)
    exact_s = per_query_seconds(lambda q: exact_index.search(torch.from_numpy(q), 10), timed)
    print(f"exact top-10 (ExactIndex.search): {exact_s * 1e3:.2f} ms/query = {1 / exact_s:,.0f} queries/s;"
          f" bare matmul + topk {bare_s * 1e3:.2f} ms/query; CPU {CPU_SECONDS[-1] * 1e3:.2f} ms/query", flush=True)
    rng = np.random.default_rng(args.seed + 1)
    seen = [np.sort(rng.choice(args.items, min(args.seen, args.items - 1), replace=False)) for _ in timed]

    start = time.perf_counter()
    index = cached_index(args, items, bias, users)
    build_s = time.perf_counter() - start
    print(f"HNSW build ({args.graphs}, m={index.info['m']}, ef_construction={index.info['ef_construction']},"
          f" dims={index.info['dims']}):"
          f" graph {index.info['build_seconds']:.1f} s, with recall measurement {build_s:.1f} s;"
          f" recall@10 stored: {index.info['recall_at_10']:.4f}", flush=True)

    rec_q = torch.from_numpy(users[: args.recall_queries])
    best = exact_index.search(rec_q, 10)[0]  # the exact top-10, computed once
    projected = index.info["dims"] < args.dim + 1
    rows = []
    for rerank, ef in itertools.product(args.rerank if projected else [0], args.ef_search):
        index.set_ef_search(ef)
        if projected:
            index.set_rerank(rerank)
        recall = float(np.concatenate([recall_at(index.search(rec_q[s : s + 256], 10)[0], best[s : s + 256])
                                       for s in range(0, len(rec_q), 256)]).mean())
        sec = per_query_seconds(lambda q: index.search(q, 10), timed)
        cpu_s = CPU_SECONDS[-1]
        sec_seen = per_query_seconds(excluding(index, seen), timed)
        rows.append({"ef_search": ef, "rerank": rerank, "recall_at_10": round(recall, 4),
                     "ms_per_query": round(sec * 1e3, 3),
                     "cpu_ms_per_query": round(cpu_s * 1e3, 3),
                     "queries_per_s": round(1 / sec), "speedup_vs_exact": round(exact_s / sec, 1),
                     "ms_per_query_seen": round(sec_seen * 1e3, 3)})
        print(f"HNSW ef_search={ef} rerank={rerank}: recall@10 {recall:.4f}, {sec * 1e3:.3f} ms/query"
              f" = {1 / sec:,.0f} queries/s,"
              f" {exact_s / sec:.1f}x exact (CPU {cpu_s * 1e3:.3f} ms);"
              f" {sec_seen * 1e3:.3f} ms/query with {args.seen} seen items excluded",
              flush=True)

    print(f"\n| search | recall@10 | ms/query | queries/s | × exact | ms/query, {args.seen} seen excluded |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| exact (ExactIndex) | 1.0000 | {exact_s * 1e3:.2f} | {1 / exact_s:,.0f} | 1.0 | |")
    for r in rows:
        print(f"| HNSW ef_search={r['ef_search']} rerank={r['rerank']} | {r['recall_at_10']:.4f} |"
              f" {r['ms_per_query']:.3f} |"
              f" {r['queries_per_s']:,} | {r['speedup_vs_exact']} | {r['ms_per_query_seen']:.3f} |")
    if args.json:
        out = {"machine": machine(), "args": vars(args), "index_info": index.info, "exact_ms_per_query": exact_s * 1e3,
               "bare_matmul_topk_ms_per_query": bare_s * 1e3,
               "exact_cpu_ms_per_query": CPU_SECONDS[1] * 1e3, "build_seconds": index.info["build_seconds"],
               "hnsw": rows}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
