"""HNSW graphs built with hnswlib for maximum-inner-product search: the Möbius graph and the union graph.

An HNSW graph built by the inner product itself (faiss' default,
:mod:`torchmf.retrieval.hnsw`) leaves some items without in-edges, so no beam
reaches them and its recall levels off (benchmarks/RESULTS.md §11.1). Two
graphs built by a *distance* over transformed vectors, then searched by inner
product over the raw ones, do not:

- ``"mobius"`` (the default): Zhou et al.'s Möbius transformation (NeurIPS
  2019), ``y_i = x_i / |x_i|^2``, and a Euclidean graph over the ``y_i``. The
  transform maps each item's direction to itself and its norm to the inverse,
  so the items that win inner products (long vectors) sit near the origin, on
  the inside of the point cloud, where a Euclidean graph connects them densely
  and a beam started anywhere reaches them in a few hops. One graph of degree
  ``2 m`` at layer 0; on the synthetic catalogues of ``benchmarks/ann.py`` it
  reaches a given recall with about a fifth of the union graph's query time
  (§11.5).
- ``"union"``: an inner-product and an angular graph (Euclidean over the
  normalised vectors) built separately, each node's layer-0 neighbours the union
  of its neighbours in both (up to ``4 m``); the inner-product graph's upper
  layers (§11.3).

Either way one hnswlib beam searches the graph by inner product over the raw
vectors ``[q_i, b_i]`` and its best ``k`` are re-scored exactly. The graph is
stored as validated arrays (:mod:`torchmf.retrieval.hnswlib_graph`) beside the
vectors, index file format 3.

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

__all__ = ["HnswlibIndex", "build_hnswlib", "mobius"]

log = logging.getLogger(__name__)


class HnswlibIndex(HNSWIndex):
    """An hnswlib HNSW graph searched by inner product (Möbius or union graph); top-``k`` re-scored exactly.

    Build one with :func:`build_hnswlib` (``build_hnsw(..., graphs="mobius"|"union")``); read one back
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
        ``graphs`` (``"mobius"`` or ``"ip+angular"``), ``library``, ``m`` (of each graph built), ``ef_construction``,
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
            raise ValueError(f"hnswlib index vectors must be float32 (n_items, {width}), got {vectors.dtype} "
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
        return (f"HnswlibIndex(n_items={self.n_items}, dim={self.dim}, m={self.info.get('m')}, "
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
        raise ValueError("rerank applies to projected graphs only; an hnswlib index re-scores its best k exactly")


# rows shorter than this share of the longest are transformed as if they were this long: their images
# stay finite in float32 (1 / |x| of a 1e-20 row would overflow), and rows that short never win anyway
_MIN_NORM_SHARE = 1e-6


def mobius(x: np.ndarray) -> np.ndarray:
    """Zhou et al.'s Möbius transformation ``x / |x|^2`` of each row (zero rows stay zero), float32.

    Rows shorter than ``1e-6`` of the longest row are scaled as if they had that length
    (direction kept), so that no image overflows float32.

    Parameters
    ----------
    x : numpy.ndarray of float32, shape (n, width)

    Returns
    -------
    numpy.ndarray of float32, shape (n, width)
    """
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    floor = float(norm.max(initial=0.0)) * _MIN_NORM_SHARE
    # x / |x|^2 = direction / |x|; a row shorter than the floor gets direction / floor
    scale = np.divide(1.0, norm * np.maximum(norm, floor), out=np.zeros_like(norm), where=norm > 0)
    return (x * scale[:, None]).astype(np.float32)


def build_hnswlib(
    item_vectors: torch.Tensor | np.ndarray,
    item_bias: torch.Tensor | np.ndarray | None = None,
    *,
    graphs: str = "mobius",
    m: int = 16,
    ef_construction: int = 100,
    ef_search: int = 100,
    recall_queries: torch.Tensor | np.ndarray | None = None,
    n_recall: int = 1000,
    seed: int = 0,
) -> HnswlibIndex:
    """Build a Möbius graph or a union graph with hnswlib and measure recall@10 (module docstring).

    Parameters
    ----------
    item_vectors : torch.Tensor or numpy.ndarray, shape (n_items, d)
    item_bias : torch.Tensor or numpy.ndarray, shape (n_items,), optional
    graphs : {"mobius", "union"}
    m : int
        Degree of each graph built (hnswlib ``M``, 2 to 512): up to ``2 m`` layer-0 neighbours per
        item in a Möbius graph, ``4 m`` in a union graph.
    ef_construction : int
        Beam width while building.
    ef_search : int
        Default beam width while searching (raised to the fetch size when that is larger).
    recall_queries, n_recall, seed
        As for :func:`~torchmf.retrieval.hnsw.build_hnsw`.

    Returns
    -------
    HnswlibIndex
        With ``info["recall_at_10"]`` measured against exact search.
    """
    if graphs not in ("mobius", "union"):
        raise ValueError(f"graphs must be 'mobius' or 'union' for an hnswlib index, got {graphs!r}")
    check_int("m", m, low=2, high=512)
    check_int("ef_construction", ef_construction)
    check_int("ef_search", ef_search)
    check_int("n_recall", n_recall, low=0)
    import_hnswlib()
    vec, x = item_matrix(item_vectors, item_bias)
    t0 = time.perf_counter()
    if graphs == "mobius":
        graph = graph_arrays(build_graph(mobius(x), "l2", m, ef_construction, seed))
    else:
        ip = graph_arrays(build_graph(x, "ip", m, ef_construction, seed))
        graph = merge_graphs(ip, graph_arrays(build_graph(x, "cosine", m, ef_construction, seed)))  # angular
    build_s = time.perf_counter() - t0
    info: dict[str, Any] = {
        "library": "hnswlib",
        "library_version": _version("hnswlib"),
        "metric": "inner_product",
        "graphs": "mobius" if graphs == "mobius" else "ip+angular",
        "m": int(m),
        "ef_construction": int(ef_construction),
        "ef_search": int(ef_search),
        "dims": x.shape[1],
        "build_seconds": round(build_s, 3),
    }
    out = HnswlibIndex(x, graph, vec.shape[1], item_bias is not None, info)
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
