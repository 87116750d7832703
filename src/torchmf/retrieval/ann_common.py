"""Pieces the approximate indexes share: the optional import, exclusion filtering, recall, projections."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "as_f32", "check_int", "filter_excluded", "import_faiss", "import_hnswlib", "item_matrix", "measure_recall",
    "recall_at",
    "sample_rows", "score_axes",
    "unpack_hnsw",
]


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        want = f"an integer in [{low}, {high}]" if high is not None else \
            "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {want}, got {value!r}")


def import_faiss() -> Any:
    """The ``faiss`` module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("approximate retrieval needs faiss: pip install 'torchmf[ann]' (or faiss-cpu)") from exc
    return faiss


def import_hnswlib() -> Any:
    """The ``hnswlib`` module, or an ImportError that says how to install it."""
    try:
        import hnswlib
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the union HNSW index needs hnswlib: pip install 'torchmf[ann]' (or hnswlib)") from exc
    return hnswlib


def _row_keys(csr: tuple[np.ndarray, np.ndarray], n_cols: int) -> np.ndarray:
    """``row * n_cols + item`` for every entry of a CSR, sorted."""
    indptr, indices = csr
    rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    return np.sort(rows * n_cols + np.asarray(indices[indptr[0] : indptr[-1]], dtype=np.int64))


def filter_excluded(ids: np.ndarray, exclude: tuple[np.ndarray, np.ndarray], n_items: int) -> np.ndarray:
    """``ids`` (R, n) with every id listed in its row of ``exclude`` (R rows) replaced by -1.

    Ids and excluded items must lie in ``[0, n_items)`` (ids may be -1).
    """
    keys = _row_keys(exclude, n_items)
    if len(keys) == 0:
        return ids
    query = np.arange(len(ids), dtype=np.int64)[:, None] * n_items + ids
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where((keys[pos] == query) & (ids >= 0), -1, ids)


def recall_at(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per row: share of the exact list's valid ids (>= 0) that the approximate list contains.

    Parameters
    ----------
    approx, exact : numpy.ndarray of int64, shape (B, k)

    Returns
    -------
    numpy.ndarray of float64, shape (B,)
        1.0 for rows whose exact list is empty.
    """
    hit = ((approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).any(1).sum(1)
    valid = (exact >= 0).sum(1)
    return np.where(valid > 0, hit / np.maximum(valid, 1), 1.0)


def score_axes(x: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal axes of the item vectors, ordered by their share of the scores ``queries · x``.

    Rotating items and queries by the same orthonormal matrix keeps every inner
    product, so a prefix of the rotated coordinates gives approximate scores.
    The axes are the eigenvectors of the items' uncentred second moment
    ``E[x xᵀ]`` (eigenvalue ``λ_j``); axis ``j`` carries the score energy
    ``λ_j · E[(y · v_j)²]`` over the queries ``y``.

    Parameters
    ----------
    x : numpy.ndarray, shape (n_items, width)
    queries : numpy.ndarray, shape (n_queries, width)

    Returns
    -------
    axes : numpy.ndarray of float32, shape (width, width)
        Column ``j`` is the axis of the ``j``-th largest energy.
    energy : numpy.ndarray of float64, shape (width,)
        Each axis' share of the total score energy (sums to 1), decreasing.
    """
    second = np.zeros((x.shape[1], x.shape[1]))
    for s in range(0, len(x), 1 << 17):  # float64 accumulation in blocks
        block = x[s : s + (1 << 17)].astype(np.float64)
        second += block.T @ block
    lam, vec = np.linalg.eigh(second / max(len(x), 1))
    q_energy = ((queries.astype(np.float64) @ vec) ** 2).mean(0) if len(queries) else np.ones(len(lam))
    energy = np.maximum(lam, 0.0) * q_energy
    order = np.argsort(-energy, kind="stable")
    total = energy.sum()
    share = energy[order] / total if total > 0 else np.full(len(lam), 1.0 / len(lam))
    return np.ascontiguousarray(vec[:, order], dtype=np.float32), share


def unpack_hnsw(index: Any) -> tuple[Any, np.ndarray | None, np.ndarray]:
    """The parts of a faiss index that :func:`~torchmf.retrieval.hnsw.build_hnsw` made.

    Returns
    -------
    graph : faiss.IndexHNSWFlat
    projection : numpy.ndarray of float32, shape (width, dims), or None
        ``None`` when the graph holds the full vectors.
    full : numpy.ndarray of float32, shape (n_items, width)
        A view of the stored full vectors, valid while ``index`` lives.

    Raises
    ------
    ValueError
        Any other structure or metric.
    """
    faiss = import_faiss()
    ip = faiss.METRIC_INNER_PRODUCT
    if isinstance(index, faiss.IndexHNSWFlat) and index.metric_type == ip:
        graph, proj, flat = index, None, faiss.downcast_index(index.storage)
    elif isinstance(index, faiss.IndexRefineFlat) and index.metric_type == ip:
        base, flat = faiss.downcast_index(index.base_index), faiss.downcast_index(index.refine_index)
        graph = faiss.downcast_index(base.index) if isinstance(base, faiss.IndexPreTransform) else None
        lt = faiss.downcast_VectorTransform(base.chain.at(0)) if graph is not None and base.chain.size() == 1 else None
        ok = isinstance(graph, faiss.IndexHNSWFlat) and graph.metric_type == ip and type(lt) is faiss.LinearTransform
        if not ok or lt.have_bias or lt.d_in != index.d or lt.d_out != graph.d or graph.ntotal != index.ntotal:
            raise ValueError("not a projected inner-product HNSW index")
        proj = np.ascontiguousarray(faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in).T)
    else:
        raise ValueError("not an inner-product HNSW index")
    if not isinstance(flat, faiss.IndexFlat) or flat.metric_type != ip or flat.ntotal != index.ntotal:
        raise ValueError("not an inner-product HNSW index (vector storage)")
    full = faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    return graph, proj, full


def sample_rows(pool: torch.Tensor | np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Up to ``n`` rows of ``pool`` drawn with ``rng``, float32, in their order."""
    rows = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    return as_f32(pool[torch.from_numpy(rows)] if isinstance(pool, torch.Tensor) else pool[rows])


def as_f32(v: torch.Tensor | np.ndarray) -> np.ndarray:
    """``v`` as a float32 numpy array (a CPU copy of a tensor)."""
    if isinstance(v, torch.Tensor):
        return v.detach().to("cpu", torch.float32).numpy()
    return np.asarray(v, dtype=np.float32)


def item_matrix(
    item_vectors: torch.Tensor | np.ndarray, item_bias: torch.Tensor | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, x)``: the item factors as float32 (n, d) and the stored rows ``[q_i, b_i]``, (n, d + 1).

    Without biases ``x`` is the factors, (n, d). ValueError for an empty or non-2-d
    matrix, a bias of the wrong length, NaN or infinity.
    """
    vec = as_f32(item_vectors)
    if vec.ndim != 2 or len(vec) == 0:
        raise ValueError(f"item_vectors must have shape (n_items, d) with n_items > 0, got {tuple(vec.shape)}")
    n = len(vec)
    parts = [vec]
    if item_bias is not None:
        bias = as_f32(item_bias).reshape(-1)
        if len(bias) != n:
            raise ValueError(f"item_bias has {len(bias)} entries for {n} items")
        parts.append(bias[:, None])
    if not all(np.isfinite(p).all() for p in parts):
        raise ValueError("item vectors or biases contain NaN or infinity")
    return vec, np.ascontiguousarray(np.concatenate(parts, axis=1))


def measure_recall(index: Any, queries: np.ndarray, k: int = 10, block: int = 256) -> float:
    """Mean recall@``k`` of ``index`` against exact search over all items, nothing excluded.

    Parameters
    ----------
    queries : numpy.ndarray, shape (B, dim)
    """
    exact = index.exact()
    hits = []
    for s in range(0, len(queries), block):
        q = torch.from_numpy(np.ascontiguousarray(queries[s : s + block]))
        approx, _ = index.search(q, k)
        best, _ = exact.search(torch.from_numpy(index._queries(q)), k)
        hits.append(recall_at(approx, best))
    return float(np.concatenate(hits).mean()) if hits else float("nan")
