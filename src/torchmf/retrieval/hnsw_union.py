"""Two HNSW graphs over the same items, searched together: an inner-product graph and an angular one.

An inner-product HNSW graph leaves some items without in-edges (no beam reaches
them, so its recall plateaus); a graph built by distance over the normalised
vectors (*angular*) reaches every item but needs a wide beam to get near the
top scores. Searching both by inner product over the raw vectors and ranking
the union of their beams exactly keeps the best of each (benchmarks/RESULTS.md
§11.1 and §11.3). Both graphs are hnswlib's (twice as fast per query as faiss'
HNSW on our catalogues); they are stored as validated arrays
(:mod:`torchmf.retrieval.hnswlib_graph`), the vectors once.

The hnswlib library is an optional dependency: ``pip install torchmf[ann]``.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch

from torchmf.retrieval.ann_common import check_int, import_hnswlib, item_matrix, sample_rows
from torchmf.retrieval.hnsw import RECALL_K, HNSWIndex, measure_recall
from torchmf.retrieval.hnswlib_graph import build_graph, graph_arrays, graph_from_arrays

__all__ = ["GRAPHS", "UnionHNSWIndex", "build_union"]

log = logging.getLogger(__name__)

GRAPHS = ("ip", "angular")  # the graphs' names, in the order their beams are merged


class UnionHNSWIndex(HNSWIndex):
    """An inner-product and an angular HNSW graph over the same item rows; top-``k`` by exact re-ranking.

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
        Beam of the inner-product graph.
    ef_search_angular : int
        Beam of the angular graph.
    info : dict
        ``graphs`` (``"ip+angular"``), ``library``, ``m``, ``ef_construction``, ``ef_search``,
        ``ef_search_angular``, ``recall_at_10``, ``recall_queries``, ``build_seconds``.
    """

    def __init__(self, vectors: np.ndarray, graphs: dict[str, dict[str, np.ndarray]], dim: int, has_bias: bool,
                 info: dict[str, Any]) -> None:
        """``vectors`` (n, width) float32 rows ``[q_i, b_i]``; ``graphs``: arrays of :func:`graph_arrays` by name.

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
        self.ef_search = self.info.get("ef_search", 200)
        self.ef_search_angular = self.info.get("ef_search_angular", self.ef_search)
        check_int("ef_search", self.ef_search)
        check_int("ef_search_angular", self.ef_search_angular)
        self.rerank = 0
        self._param_cache: dict[int, Any] = {}
        self._graphs = {g: graph_from_arrays(graphs[g], self._full, ef) for g, ef in
                        zip(GRAPHS, (self.ef_search, self.ef_search_angular), strict=True)}

    def __repr__(self) -> str:
        return (f"UnionHNSWIndex(n_items={self.n_items}, dim={self.dim}, m={self.info.get('m')}, "
                f"recall_at_10={self.info.get('recall_at_10')})")

    @property
    def faiss_index(self) -> Any:
        """None: this index is not a faiss one (its graphs are hnswlib's)."""
        return None

    def graph_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """Each graph as the arrays of :func:`~torchmf.retrieval.hnswlib_graph.graph_arrays`, by name."""
        return {g: graph_arrays(self._graphs[g]) for g in GRAPHS}

    def _candidates(self, y: np.ndarray, kf: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``kf`` (scores, ids) per row of ``y`` (B, width) over both beams, best first, -1 padded.

        The beams are merged by hnswlib's own distances (``1 - score``, float32, the same
        vectors in both graphs); the best ``kf`` are then scored exactly and sorted.
        """
        n = self.n_items
        try:
            (ip_ids, ip_d), (an_ids, an_d) = (  # whole beams: hnswlib's beam is max(ef, k)
                self._graphs[g].knn_query(y, k=min(max(ef, kf), n))
                for g, ef in zip(GRAPHS, (self.ef_search, self.ef_search_angular), strict=True))
        except RuntimeError:  # hnswlib found fewer than k items (tiny or disconnected graph): scan instead
            ids, s = self.exact().search(torch.from_numpy(y), kf)
            return s, ids
        ids = np.concatenate((ip_ids, an_ids), axis=1).astype(np.int64)
        dist = np.concatenate((ip_d, an_d), axis=1)
        top = np.empty((len(y), kf), dtype=np.int64)
        for b in range(len(y)):  # per row: a few small numpy calls (serving asks one row at a time)
            uniq, first = np.unique(ids[b], return_index=True)
            d = dist[b, first]
            best = np.argpartition(d, kf - 1)[:kf] if kf < len(uniq) else np.arange(len(uniq))
            top[b, : len(best)] = uniq[best]
            top[b, len(best) :] = -1
        s = np.matmul(self._full[np.maximum(top, 0)], y[:, :, None])[:, :, 0]
        s[top < 0] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")
        return np.take_along_axis(s, order, 1), np.take_along_axis(top, order, 1)

    def set_ef_search(self, ef_search: int, ef_search_angular: int | None = None) -> None:
        """Beam widths at query time (angular: the same unless given): larger = better recall, slower."""
        check_int("ef_search", ef_search)
        ang = ef_search if ef_search_angular is None else ef_search_angular
        check_int("ef_search_angular", ang)
        self.ef_search, self.ef_search_angular = int(ef_search), int(ang)
        self.info.update(ef_search=self.ef_search, ef_search_angular=self.ef_search_angular)

    def set_rerank(self, rerank: int) -> None:
        """Not applicable: the whole union of the beams is re-ranked."""
        raise ValueError("rerank applies to projected graphs only; a union index re-ranks both whole beams")


def build_union(
    item_vectors: torch.Tensor | np.ndarray,
    item_bias: torch.Tensor | np.ndarray | None = None,
    *,
    m: int = 24,
    ef_construction: int = 128,
    ef_search: int = 200,
    ef_search_angular: int | None = None,
    recall_queries: torch.Tensor | np.ndarray | None = None,
    n_recall: int = 1000,
    seed: int = 0,
) -> UnionHNSWIndex:
    """Build an inner-product and an angular HNSW graph (hnswlib) and measure recall@10 of their union.

    Parameters
    ----------
    item_vectors : torch.Tensor or numpy.ndarray, shape (n_items, d)
    item_bias : torch.Tensor or numpy.ndarray, shape (n_items,), optional
    m : int
        Degree of each graph (hnswlib ``M``, 2 to 1024).
    ef_construction : int
        Beam width while building.
    ef_search, ef_search_angular : int
        Default beams of the inner-product and the angular graph (angular: ``ef_search``
        unless given); raised to the fetch size when that is larger.
    recall_queries, n_recall, seed
        As for :func:`~torchmf.retrieval.hnsw.build_hnsw`.

    Returns
    -------
    UnionHNSWIndex
        With ``info["recall_at_10"]`` measured against exact search.
    """
    check_int("m", m, low=2, high=1024)
    check_int("ef_construction", ef_construction)
    check_int("ef_search", ef_search)
    ang = ef_search if ef_search_angular is None else ef_search_angular
    check_int("ef_search_angular", ang)
    check_int("n_recall", n_recall, low=0)
    import_hnswlib()
    vec, x = item_matrix(item_vectors, item_bias)
    t0 = time.perf_counter()
    graphs = {g: graph_arrays(build_graph(v, space, m, ef_construction, seed)) for g, v, space in
              (("ip", x, "ip"), ("angular", x, "cosine"))}  # hnswlib normalises for "cosine" (zero rows stay 0)
    build_s = time.perf_counter() - t0
    info: dict[str, Any] = {
        "library": "hnswlib",
        "library_version": _version("hnswlib"),
        "metric": "inner_product",
        "graphs": "ip+angular",
        "m": int(m),
        "ef_construction": int(ef_construction),
        "ef_search": int(ef_search),
        "ef_search_angular": int(ang),
        "dims": x.shape[1],
        "build_seconds": round(build_s, 3),
    }
    out = UnionHNSWIndex(x, graphs, vec.shape[1], item_bias is not None, info)
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
