"""One HNSW graph holding the edges of two: an inner-product graph and an angular one.

An inner-product HNSW graph leaves some items without in-edges (no beam reaches
them, so its recall plateaus); a graph built by distance over the normalised
vectors (*angular*) reaches every item but needs a wide beam to get near the
top scores (benchmarks/RESULTS.md §11.1). Here both are built (hnswlib) and
merged: node ``i``'s layer-0 neighbours are the union of its neighbours in the
two graphs (up to ``4 m``), the upper layers are the inner-product graph's. One
beam over the merged graph, by inner product over the raw vectors, then reaches
the items the inner-product graph alone cannot, without the angular graph's slow
start (§11.3: higher recall per query time than searching the two graphs
separately and merging their beams). The best ``k`` of the beam are re-scored
exactly. The graph is stored as validated arrays
(:mod:`torchmf.retrieval.hnswlib_graph`) beside the vectors.

The hnswlib library is an optional dependency: ``pip install torchmf[ann]``.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch

from torchmf.retrieval.ann_common import check_int, import_hnswlib, item_matrix, measure_recall, sample_rows
from torchmf.retrieval.hnsw import RECALL_K, HNSWIndex
from torchmf.retrieval.hnswlib_graph import build_graph, graph_arrays, graph_from_arrays, merge_graphs

__all__ = ["UnionHNSWIndex", "build_union"]

log = logging.getLogger(__name__)


class UnionHNSWIndex(HNSWIndex):
    """An HNSW graph with the edges of an inner-product and an angular graph; top-``k`` re-scored exactly.

    Build one with :func:`build_union` (``build_hnsw(..., graphs="union")``); read one back
    with :func:`torchmf.retrieval.ann_io.load_index`. Searches, exclusions, candidates and
    offsets behave as in :class:`~torchmf.retrieval.hnsw.HNSWIndex`.

    Attributes
    ----------
    kind : str
        ``"hnsw"``.
    n_items, dim, has_bias
        As for :class:`~torchmf.retrieval.hnsw.HNSWIndex`.
    ef_search : int
        Beam width (raised to the fetch size when that is larger).
    info : dict
        ``graphs`` (``"ip+angular"``), ``library``, ``m`` (of each graph built), ``ef_construction``,
        ``ef_search``, ``recall_at_10``, ``recall_queries``, ``build_seconds``.
    """

    _direct = True

    def __init__(self, vectors: np.ndarray, graph: dict[str, np.ndarray], dim: int, has_bias: bool,
                 info: dict[str, Any]) -> None:
        """``vectors`` (n, width) float32 rows ``[q_i, b_i]``; ``graph``: arrays as :func:`graph_arrays` makes them.

        Raises ValueError for arrays that do not describe a graph over ``vectors``.
        """
        width = dim + int(has_bias)
        if vectors.ndim != 2 or vectors.shape[1] != width or vectors.dtype != np.float32 or len(vectors) == 0:
            raise ValueError(f"union HNSW vectors must be float32 (n_items, {width}), got {vectors.dtype} "
                             f"{tuple(vectors.shape)}")
        self._full = np.ascontiguousarray(vectors)
        self._proj = None
        self.n_items = len(vectors)
        self.dim = int(dim)
        self.has_bias = bool(has_bias)
        self.info = dict(info)
        self.ef_search = self.info.get("ef_search", 100)
        check_int("ef_search", self.ef_search)
        self.rerank = 0
        self._param_cache: dict[int, Any] = {}
        self._graph = graph_from_arrays(graph, self._full, self.ef_search)

    def __repr__(self) -> str:
        return (f"UnionHNSWIndex(n_items={self.n_items}, dim={self.dim}, m={self.info.get('m')}, "
                f"recall_at_10={self.info.get('recall_at_10')})")

    @property
    def faiss_index(self) -> Any:
        """None: this index is not a faiss one (its graph is hnswlib's)."""
        return None

    def graph_arrays(self) -> dict[str, np.ndarray]:
        """The graph as the arrays of :func:`~torchmf.retrieval.hnswlib_graph.graph_arrays`."""
        return graph_arrays(self._graph)

    def _candidates(self, y: np.ndarray, kf: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``kf`` (scores, ids) per row of ``y`` (B, width), best first, re-scored exactly.

        hnswlib ranks by ``1 - score`` in float32; the exact scores re-order its best ``kf``.
        """
        try:  # the beam is max(ef_search, kf)
            ids, _ = self._graph.knn_query(y, k=min(kf, self.n_items))
        except RuntimeError:  # hnswlib found fewer than k items (tiny or disconnected graph): scan instead
            ids, s = self.exact().search(torch.from_numpy(y), kf)
            return s, ids
        ids = ids.astype(np.int64)
        s = np.matmul(self._full[ids], y[:, :, None])[:, :, 0]
        order = np.argsort(-s, axis=1, kind="stable")
        return np.take_along_axis(s, order, 1), np.take_along_axis(ids, order, 1)

    def set_ef_search(self, ef_search: int) -> None:
        """Beam width at query time: larger = better recall, slower queries."""
        check_int("ef_search", ef_search)
        self.ef_search = int(ef_search)
        self.info["ef_search"] = int(ef_search)
        self._graph.set_ef(int(ef_search))

    def set_rerank(self, rerank: int) -> None:
        """Not applicable: the beam's best ``k`` are always re-scored exactly."""
        raise ValueError("rerank applies to projected graphs only; a union index re-scores its best k exactly")


def build_union(
    item_vectors: torch.Tensor | np.ndarray,
    item_bias: torch.Tensor | np.ndarray | None = None,
    *,
    m: int = 24,
    ef_construction: int = 128,
    ef_search: int = 300,
    recall_queries: torch.Tensor | np.ndarray | None = None,
    n_recall: int = 1000,
    seed: int = 0,
) -> UnionHNSWIndex:
    """Build an inner-product and an angular HNSW graph (hnswlib), merge them, and measure recall@10.

    Parameters
    ----------
    item_vectors : torch.Tensor or numpy.ndarray, shape (n_items, d)
    item_bias : torch.Tensor or numpy.ndarray, shape (n_items,), optional
    m : int
        Degree of each graph built (hnswlib ``M``, 2 to 512); the merged graph has up to
        ``4 m`` layer-0 neighbours per item.
    ef_construction : int
        Beam width while building.
    ef_search : int
        Default beam width while searching (raised to the fetch size when that is larger).
    recall_queries, n_recall, seed
        As for :func:`~torchmf.retrieval.hnsw.build_hnsw`.

    Returns
    -------
    UnionHNSWIndex
        With ``info["recall_at_10"]`` measured against exact search.
    """
    check_int("m", m, low=2, high=512)
    check_int("ef_construction", ef_construction)
    check_int("ef_search", ef_search)
    check_int("n_recall", n_recall, low=0)
    import_hnswlib()
    vec, x = item_matrix(item_vectors, item_bias)
    t0 = time.perf_counter()
    ip = graph_arrays(build_graph(x, "ip", m, ef_construction, seed))
    graph = merge_graphs(ip, graph_arrays(build_graph(x, "cosine", m, ef_construction, seed)))  # cosine: angular
    build_s = time.perf_counter() - t0
    info: dict[str, Any] = {
        "library": "hnswlib",
        "library_version": _version("hnswlib"),
        "metric": "inner_product",
        "graphs": "ip+angular",
        "m": int(m),
        "ef_construction": int(ef_construction),
        "ef_search": int(ef_search),
        "dims": x.shape[1],
        "build_seconds": round(build_s, 3),
    }
    out = UnionHNSWIndex(x, graph, vec.shape[1], item_bias is not None, info)
    pool = vec if recall_queries is None else recall_queries
    if n_recall and len(pool):
        sample = sample_rows(pool, np.random.default_rng(seed), n_recall)
        out.info["recall_at_10"] = round(measure_recall(out, sample, RECALL_K), 4)
        out.info["recall_queries"] = len(sample)
        out.info["recall_source"] = "items" if recall_queries is None else "users"
    log.info("built %r in %.1f s", out, build_s)
    return out


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - an unpackaged build
        return "unknown"
