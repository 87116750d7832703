"""Approximate maximum-inner-product search with an HNSW graph (faiss).

The graph is built with faiss' inner-product metric directly: item ``i`` with
factors ``q_i`` and bias ``b_i`` is stored as ``x_i = [q_i, b_i]`` and a query
``p`` is searched as ``y = [p, 1]``, so ``y · x_i`` is the model's score minus
the per-row offset (user and global bias). The norm-augmentation transform
(``[x_i, sqrt(M² − ‖x_i‖²)]`` searched by Euclidean distance) gives the same
ranking in exact arithmetic but much worse graphs: on 50 000 synthetic items
(factors 64, M=32, efSearch=100) its recall@10 was 0.72 against 0.96 for the
inner-product graph, so it is not used.

Seen items are removed by over-fetching (``k`` plus the row's number of
excluded items, doubled while too few survive); a candidate subset is ranked
exactly. Recall@10 against exact search is measured at build, in ``info``.

Optionally (``dims``) the graph is built over the leading rotated coordinates
of :func:`~torchmf.retrieval.ann_common.score_axes` and its ``rerank`` best
candidates are re-scored exactly with the full vectors. Not the default: on
the 1 M synthetic catalogue a 16-coordinate graph had lower recall at every
beam width than the full one (benchmarks/RESULTS.md §11).

``build_hnsw(..., graphs="mobius")`` (the default) and ``graphs="union"`` build
:class:`~torchmf.retrieval.hnswlib_index.HnswlibIndex` instead (hnswlib): a
Euclidean graph over Möbius-transformed vectors, or one graph with the edges of
an inner-product and an angular graph, both searched by inner product. The
Möbius graph reaches a given recall in a fraction of this module's
inner-product graph's query time (benchmarks/RESULTS.md §11.5); ``graphs="ip"``
(this module) remains for installations with faiss but no hnswlib, and for
projected graphs.

The faiss and hnswlib libraries are optional dependencies: ``pip install torchmf[ann]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np
import torch

from torchmf.retrieval.ann_common import (
    check_int,
    filter_excluded,
    import_faiss,
    item_matrix,
    measure_recall,
    sample_rows,
    score_axes,
    unpack_hnsw,
)
from torchmf.retrieval.base import CSR, csr_rows
from torchmf.retrieval.exact import ExactIndex

__all__ = ["HNSWIndex", "build_hnsw"]

log = logging.getLogger(__name__)

RECALL_K = 10
# over-fetch never asks the graph for more than this share of the catalogue:
# past it an exact scan is cheaper than a huge beam
_MAX_FETCH_SHARE = 0.25
# (m, ef_construction, ef_search) by build_hnsw's ``graphs``
_DEFAULTS = {"mobius": (16, 100, 100), "ip": (32, 200, 100), "union": (24, 128, 300)}


class HNSWIndex:
    """An HNSW graph over item vectors, answering top-``k`` inner-product queries.

    Build one with :func:`build_hnsw` (or ``MatrixFactorization.build_index``);
    read one back with :func:`torchmf.retrieval.ann_io.load_index`.

    Attributes
    ----------
    kind : str
        ``"hnsw"``.
    n_items : int
    dim : int
        Width of the factor vectors (queries are ``(B, dim)``).
    has_bias : bool
        Whether item biases were folded into the index.
    info : dict
        JSON-able build parameters and measurements: ``m``, ``ef_construction``,
        ``ef_search``, ``dims`` (and for projected graphs ``rerank``, ``energy_left_out``),
        ``recall_at_10``, ``recall_queries``, ``build_seconds``.
    """

    kind: ClassVar[str] = "hnsw"
    _direct: ClassVar[bool] = False  # searches without exclusions call _candidates(y, k) directly

    def __init__(self, faiss_index: Any, dim: int, has_bias: bool, info: dict[str, Any]) -> None:
        width = dim + int(has_bias)
        if faiss_index.d != width:
            raise ValueError(f"HNSW index has width {faiss_index.d}; dim={dim}, has_bias={has_bias} need {width}")
        self._index = faiss_index
        self._graph, self._proj, self._full = unpack_hnsw(faiss_index)
        self.n_items = int(faiss_index.ntotal)
        self.dim = int(dim)
        self.has_bias = bool(has_bias)
        self.info = dict(info)
        self.ef_search = int(info.get("ef_search", 100))
        self.rerank = int(info.get("rerank") or 0)  # 0: the whole beam
        self._param_cache: dict[int, Any] = {}

    def __repr__(self) -> str:
        recall = self.info.get("recall_at_10")
        return f"HNSWIndex(n_items={self.n_items}, dim={self.dim}, m={self.info.get('m')}, recall_at_10={recall})"

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index (what the index file holds).

        A ``faiss.IndexHNSWFlat`` over the full vectors, or (projected graphs) an
        ``IndexRefineFlat`` holding the full vectors around an ``IndexPreTransform``
        (the rotation to ``dims`` coordinates) of an ``IndexHNSWFlat``.
        """
        return self._index

    # ------------------------------------------------------------------ vectors
    def exact(self) -> ExactIndex:
        """Exact search over the stored vectors (queries as :meth:`_queries` makes them), valid while this lives."""
        return ExactIndex(torch.from_numpy(self.all_item_vectors()))

    def _queries(self, queries: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(B, dim)`` user vectors -> ``(B, width)`` float32 ``[p, 1]`` rows (``p`` without biases)."""
        q = queries.detach().to("cpu", torch.float32).numpy() if isinstance(queries, torch.Tensor) else queries
        q = np.asarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (B, {self.dim}), got {tuple(q.shape)}")
        out = np.zeros((len(q), self._full.shape[1]), dtype=np.float32)
        out[:, : self.dim] = q
        if self.has_bias:
            out[:, self.dim] = 1.0
        return out

    def item_vectors(self, items: np.ndarray) -> np.ndarray:
        """Stored item rows ``[q_i, b_i]`` (``q_i`` without biases), shape ``(len(items), width)`` float32."""
        items = np.ascontiguousarray(items, dtype=np.int64)
        if len(items) == 0:
            return np.zeros((0, self._full.shape[1]), dtype=np.float32)
        return self._full[items]

    def all_item_vectors(self) -> np.ndarray:
        """Every stored item row, shape ``(n_items, width)`` float32.

        A view of the index's own storage (no copy; do not write to it), valid while this index lives.
        """
        return self._full

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        offsets: torch.Tensor | None = None,
        exclude: CSR | None = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` items per query row by ``queries[b] · q_i + b_i + offsets[b]``.

        Parameters
        ----------
        queries : torch.Tensor, shape (B, dim)
        k : int
        offsets : torch.Tensor, shape (B,), optional
            Added to every score of a row (user and global bias); does not change the ranking.
        exclude : (indptr, indices), optional
            CSR arrays, ``indptr`` of shape (B + 1,): item indices to drop per row.
        candidates : numpy.ndarray of int64, shape (M,), optional
            Rank only these items (exactly, over the subset).

        Returns
        -------
        items : numpy.ndarray of int64, shape (B, k)
            Best first, -1 padded.
        scores : numpy.ndarray of float32, shape (B, k)
            Exact scores of the items found, -inf padded.
        """
        check_int("k", k)
        y = self._queries(queries)
        B = len(y)
        if candidates is not None:
            cand = np.asarray(candidates, dtype=np.int64)
            if len(cand) and (cand.min() < 0 or cand.max() >= self.n_items):
                raise ValueError(f"candidates must be item indices in [0, {self.n_items})")
            items, scores = self.exact().search(torch.from_numpy(y), k, exclude=exclude, candidates=cand)
        else:
            items, scores = self._graph_search(y, int(k), exclude)
        if offsets is not None and B:
            off = offsets.detach().to("cpu", torch.float32).numpy().reshape(B, 1)
            scores = scores + off  # -inf stays -inf
        return items, scores.astype(np.float32, copy=False)

    def _params(self, fetch: int) -> Any:
        """faiss search parameters for a beam of at least ``fetch`` (cached: building one costs ~25 µs)."""
        ef = max(self.ef_search, fetch)
        params = self._param_cache.get(ef)
        if params is None:
            params = import_faiss().SearchParametersHNSW(efSearch=ef)
            self._param_cache[ef] = params
        return params

    def _candidates(self, y: np.ndarray, kf: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``kf`` (scores, ids) per row of ``y`` (B, width), like faiss' ``search``: best first, -1 padded.

        A projected graph returns ``max(kf, rerank)`` candidates (``rerank`` 0: the
        whole beam, ``ef_search``) by the projected scores; they are re-scored
        exactly over the full vectors.
        """
        if self._proj is None:
            return self._index.search(y, kf, params=self._params(kf))
        c = min(max(kf, self.rerank or self.ef_search), self.n_items)
        _, ids = self._graph.search(np.ascontiguousarray(y @ self._proj), c, params=self._params(c))
        s = np.einsum("bcd,bd->bc", self._full[np.maximum(ids, 0)], y)
        s[ids < 0] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")[:, :kf]
        return np.take_along_axis(s, order, 1), np.take_along_axis(ids, order, 1)

    def _graph_search(
        self, y: np.ndarray, k: int, exclude: CSR | None
    ) -> tuple[np.ndarray, np.ndarray]:
        B, n = len(y), self.n_items
        out_i = np.full((B, k), -1, dtype=np.int64)
        out_s = np.full((B, k), -np.inf, dtype=np.float32)
        if exclude is None:
            n_excl = np.zeros(B, dtype=np.int64)
        else:
            if len(exclude[0]) != B + 1:
                raise ValueError(f"exclude indptr must have {B + 1} entries (queries + 1), got {len(exclude[0])}")
            n_excl = np.diff(exclude[0]).astype(np.int64)
        if self._direct and exclude is None and k <= _MAX_FETCH_SHARE * n:  # no over-fetch: no bookkeeping
            s, ids = self._candidates(y, k)
            out_i[:, : ids.shape[1]], out_s[:, : ids.shape[1]] = ids, s
            return out_i, out_s
        want = np.minimum(k, np.maximum(n - n_excl, 0))  # results a row can have at most
        # fetch k + (number excluded), rounded up to a power of two so that few groups share a search
        fetch = np.minimum(2 ** np.ceil(np.log2(k + n_excl)).astype(np.int64), n)
        limit = max(k, int(_MAX_FETCH_SHARE * n))
        todo = np.flatnonzero(want > 0)
        while len(todo):
            big = fetch[todo] > limit
            if big.any():  # a beam this wide costs more than scanning everything
                rows = todo[big]
                excl = None if exclude is None else exclude if len(rows) == B else csr_rows(*exclude, rows)
                out_i[rows], out_s[rows] = self.exact().search(torch.from_numpy(y[rows]), k, exclude=excl)
                todo = todo[~big]
            groups = np.unique(fetch[todo])
            for kf in groups:
                rows = todo if len(groups) == 1 else todo[fetch[todo] == kf]
                s, ids = self._candidates(y[rows], int(kf))
                if exclude is not None and n_excl[rows].any():
                    ids = filter_excluded(ids, exclude if len(rows) == B else csr_rows(*exclude, rows), n)
                    s[ids < 0] = -np.inf
                    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
                    ids, s = np.take_along_axis(ids, order, 1), np.take_along_axis(s, order, 1)
                else:  # faiss returns each row best first, -1 padded
                    ids, s = ids[:, :k], s[:, :k]
                ids[~(s > -np.inf)] = -1
                s[ids < 0] = -np.inf
                out_i[rows, : ids.shape[1]], out_s[rows, : ids.shape[1]] = ids, s
            # rows that lost too many results to exclusions go round again, fetching twice as many
            short = (out_i[todo] >= 0).sum(1) < want[todo]
            todo = todo[short & (fetch[todo] < n)]
            fetch[todo] = np.minimum(2 * fetch[todo], n)
        return out_i, out_s

    def set_ef_search(self, ef_search: int) -> None:
        """Beam width at query time: larger = better recall, slower queries."""
        check_int("ef_search", ef_search)
        self.ef_search = int(ef_search)
        self.info["ef_search"] = int(ef_search)

    def set_rerank(self, rerank: int) -> None:
        """Candidates re-scored exactly per query (projected graphs; 0 = the whole beam): more = better recall."""
        check_int("rerank", rerank, low=0)
        self.rerank = int(rerank)
        self.info["rerank"] = int(rerank)


def build_hnsw(
    item_vectors: torch.Tensor | np.ndarray,
    item_bias: torch.Tensor | np.ndarray | None = None,
    *,
    m: int | None = None,
    ef_construction: int | None = None,
    ef_search: int | None = None,
    dims: int | None = None,
    rerank: int = 0,
    graphs: str = "mobius",
    recall_queries: torch.Tensor | np.ndarray | None = None,
    n_recall: int = 1000,
    seed: int = 0,
) -> HNSWIndex:
    """Build an HNSW index over item factors and measure its recall@10.

    Parameters
    ----------
    item_vectors : torch.Tensor or numpy.ndarray, shape (n_items, d)
    item_bias : torch.Tensor or numpy.ndarray, shape (n_items,), optional
    m : int, optional
        Graph degree (faiss ``M``): larger = better recall, more memory, slower build.
        Defaults by ``graphs``: mobius 16, ip 32, union 24.
    ef_construction : int, optional
        Beam width while building. Defaults: mobius 100, ip 200, union 128.
    ef_search : int, optional
        Default beam width while searching (raised to the fetch size when that is larger).
        Defaults: mobius 100, ip 100, union 300.
    dims : int, optional
        Build the graph over this many leading axes of
        :func:`~torchmf.retrieval.ann_common.score_axes` (energy measured with
        ``recall_queries``, else the items) and re-rank exactly. Default (or the
        full width, factors + 1 with biases): the graph holds the vectors themselves.
    rerank : int
        Candidates of a projected graph re-scored exactly per query (at least ``k``);
        0 (default): the whole search beam (``ef_search`` or the fetch size).
    graphs : {"mobius", "ip", "union"}
        ``"mobius"`` (default): an hnswlib Euclidean graph over Möbius-transformed vectors;
        ``"union"``: an inner-product and an angular hnswlib graph, edges merged (both
        :func:`torchmf.retrieval.hnswlib_index.build_hnswlib`; ``dims`` not available);
        ``"ip"``: a faiss inner-product graph (this module).
    recall_queries : torch.Tensor or numpy.ndarray, shape (n, d), optional
        Query vectors (typically user factors) to measure recall@10 on; ``n_recall`` of
        them are drawn with ``seed``. Without them recall is measured on ``n_recall``
        item vectors used as queries.
    n_recall : int
        Number of sampled queries for the recall measurement (0 skips it).
    seed : int
        Seed of the query sample.

    Returns
    -------
    HNSWIndex
        With ``info["recall_at_10"]``: mean share of the exact top-10 (over all items,
        nothing excluded) that the index returns.
    """
    if graphs not in _DEFAULTS:
        raise ValueError(f"graphs must be 'mobius', 'ip' or 'union', got {graphs!r}")
    m, ef_construction, ef_search = (d if v is None else v for v, d in zip(
        (m, ef_construction, ef_search), _DEFAULTS[graphs], strict=True))
    for name, v in (("m", m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
        check_int(name, v)
    check_int("rerank", rerank, low=0)
    check_int("n_recall", n_recall, low=0)
    if graphs != "ip":
        if dims is not None:
            raise ValueError(f"dims (a projected graph) needs graphs='ip', got graphs={graphs!r}")
        from torchmf.retrieval.hnswlib_index import build_hnswlib

        return build_hnswlib(item_vectors, item_bias, graphs=graphs, m=m, ef_construction=ef_construction,
                             ef_search=ef_search, recall_queries=recall_queries, n_recall=n_recall, seed=seed)
    faiss = import_faiss()
    vec, x = item_matrix(item_vectors, item_bias)
    d, width = vec.shape[1], x.shape[1]
    if dims is not None:
        check_int("dims", dims, high=width)
    rng = np.random.default_rng(seed)
    pool = vec if recall_queries is None else recall_queries
    t0 = time.perf_counter()
    dims = width if dims is None else int(dims)
    if dims < width:
        q = sample_rows(pool, rng, 10_000)
        axes, energy = score_axes(x, np.concatenate([q, np.ones((len(q), 1), np.float32)], 1)[:, :width])
        lt = faiss.LinearTransform(width, int(dims), False)
        faiss.copy_array_to_vector(np.ascontiguousarray(axes[:, :dims].T).ravel(), lt.A)
        lt.is_trained = True
        graph = faiss.IndexHNSWFlat(int(dims), int(m), faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = int(ef_construction)
        index = faiss.IndexRefineFlat(faiss.IndexPreTransform(lt, graph))
    else:
        index = faiss.IndexHNSWFlat(width, int(m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
    index.add(x)
    build_s = time.perf_counter() - t0
    info: dict[str, Any] = {
        "library": "faiss",
        "library_version": faiss.__version__,
        "metric": "inner_product",
        "m": int(m),
        "ef_construction": int(ef_construction),
        "ef_search": int(ef_search),
        "dims": int(dims),
        "build_seconds": round(build_s, 3),
    }
    if dims < width:
        info["rerank"] = int(rerank)
        info["energy_left_out"] = round(float(energy[dims:].sum()), 5)
    out = HNSWIndex(index, d, item_bias is not None, info)
    if n_recall and len(pool):
        sample = sample_rows(pool, rng, n_recall)
        out.info["recall_at_10"] = round(measure_recall(out, sample, RECALL_K), 4)
        out.info["recall_queries"] = len(sample)
        out.info["recall_source"] = "items" if recall_queries is None else "users"
    log.info("built %r in %.1f s", out, build_s)
    return out

