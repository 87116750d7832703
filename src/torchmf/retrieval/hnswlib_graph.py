"""hnswlib graphs as plain, validated arrays: build, take apart, put back together.

hnswlib (``pip install hnswlib``) searches an HNSW graph about twice as fast as
faiss' ``IndexHNSWFlat`` at equal recall on our catalogues (benchmarks/RESULTS.md
§11.3), but its own file format is a raw memory image. Here a graph is four
arrays instead, in *label order* (node ``i`` is item ``i``):

- ``level0``: int32, shape (n, 2m + 1): the neighbour count, then the neighbours;
- ``levels``: int32, shape (n,): each node's top layer (0 for most);
- ``upper``: int32, shape (levels.sum(), m + 1): for each node with ``levels > 0``,
  in node order, one row per layer 1..levels[i]: count, then neighbours;
- ``header``: int64 ``[m, ef_construction, max_level, entry_point]``.

:func:`graph_from_arrays` checks every count, id and layer before handing
them to hnswlib (an out-of-range id would make hnswlib read outside its
memory), then assembles hnswlib's state (links, vectors, labels) and
restores it through the binding's own constructor from that state. The graph
may be searched over other vectors than it was built on: the angular graph
of :mod:`torchmf.retrieval.hnswlib_index` is built over normalised vectors and
searched by inner product over the raw ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from torchmf.device import available_cores
from torchmf.retrieval.ann_common import import_hnswlib

__all__ = ["build_graph", "graph_arrays", "graph_from_arrays", "merge_graphs"]

_MAX_M = 1024  # hnswlib itself caps M at 10000; nothing sensible is near either
_MAX_LEVEL = 64  # levels are drawn with P(level >= l) = m^-l: 64 is unreachable for m >= 2


def build_graph(x: np.ndarray, space: str, m: int, ef_construction: int, seed: int, threads: int | None = None) -> Any:
    """An hnswlib graph over the rows of ``x`` (labels 0..n-1).

    Parameters
    ----------
    x : numpy.ndarray of float32, shape (n, width)
    space : {"ip", "cosine", "l2"}
        ``"cosine"`` builds the angular graph (hnswlib normalises the rows it stores); ``"l2"`` a
        Euclidean one (the Möbius graph, over transformed rows).
    threads : int, optional
        Threads adding items; default the cores this process may use. (hnswlib's own "-1 = all
        cores" builds on one thread in hnswlib 0.8: 8.6 s against 4.1 s on 2 cores, 60k items.)
    """
    hnswlib = import_hnswlib()
    index = hnswlib.Index(space=space, dim=x.shape[1])
    index.init_index(max_elements=len(x), M=int(m), ef_construction=int(ef_construction), random_seed=int(seed))
    index.set_num_threads(available_cores() if threads is None else int(threads))
    index.add_items(x, np.arange(len(x)))
    return index


def graph_arrays(index: Any) -> dict[str, np.ndarray]:
    """The graph of an hnswlib index as the arrays of the module docstring (label order).

    The index must hold the labels 0..n-1 (as :func:`build_graph` adds them), none deleted.
    """
    st = index.__getstate__()[0]
    n, size = int(st["cur_element_count"]), int(st["size_data_per_element"])
    m, m0, lab = int(st["M"]), int(st["max_M0"]), int(st["label_offset"])
    raw = np.asarray(st["data_level0"]).view(np.uint8).reshape(n, size)
    labels = np.ascontiguousarray(raw[:, lab : lab + 8]).view(np.uint64).ravel().astype(np.int64)
    if st["has_deletions"] or not np.array_equal(np.sort(labels), np.arange(n)):
        raise ValueError("the hnswlib index must hold labels 0..n-1, none deleted")
    words = np.ascontiguousarray(raw[:, : 4 * (m0 + 1)]).view(np.uint32).reshape(n, m0 + 1)
    level0 = np.zeros((n, m0 + 1), dtype=np.int32)
    level0[labels] = _relabel(words, labels)
    levels_int = np.asarray(st["element_levels"], dtype=np.int32)[:n]
    levels = np.empty(n, dtype=np.int32)
    levels[labels] = levels_int
    rows = np.asarray(st["link_lists"]).view(np.uint32).reshape(-1, m + 1)
    owner = np.repeat(labels, levels_int)  # rows are grouped by internal id, layers in order
    upper = _relabel(rows, labels)[np.argsort(owner, kind="stable")] if len(rows) else np.zeros((0, m + 1), np.int32)
    header = np.array([m, int(st["ef_construction"]), int(st["max_level"]), labels[int(st["enterpoint_node"])]],
                      dtype=np.int64)
    return {"level0": level0, "levels": levels, "upper": np.ascontiguousarray(upper, dtype=np.int32),
            "header": header}


def _relabel(words: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Link rows (count word, then internal ids) with the ids replaced by labels, unused slots 0; int32."""
    count = (words[:, 0] & 0xFFFF).astype(np.int64)  # the upper bytes hold hnswlib's deletion mark
    ids = words[:, 1:].astype(np.int64)
    used = np.arange(ids.shape[1]) < count[:, None]
    out = np.zeros(words.shape, dtype=np.int32)
    out[:, 0] = count
    out[:, 1:] = np.where(used, labels[np.where(used, ids, 0)], 0)
    return out


def _check(arrays: dict[str, np.ndarray], n: int) -> tuple[int, int, int, int]:
    """``(m, ef_construction, max_level, entry)`` after checking the arrays; ValueError naming the fault."""
    header, level0, levels, upper = (arrays.get(k) for k in ("header", "level0", "levels", "upper"))
    for name, a, dtype, ndim in (("header", header, np.int64, 1), ("level0", level0, np.int32, 2),
                                 ("levels", levels, np.int32, 1), ("upper", upper, np.int32, 2)):
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
            raise ValueError(f"graph array {name!r} must be a {ndim}-d {np.dtype(dtype).name} array")
    if header.shape != (4,):
        raise ValueError("graph header must hold 4 numbers")
    m, efc, max_level, entry = (int(v) for v in header)
    if not (2 <= m <= _MAX_M and efc >= 1 and 0 <= max_level <= _MAX_LEVEL and 0 <= entry < n):
        raise ValueError(f"graph header {header.tolist()} out of range for {n} items")
    if level0.shape != (n, 2 * m + 1) or levels.shape != (n,):
        raise ValueError(f"graph layer 0 has shape {level0.shape}, levels {levels.shape}; {n} items with m={m} need "
                         f"({n}, {2 * m + 1}) and ({n},)")
    if levels.min(initial=0) < 0 or levels.max(initial=0) > max_level or levels[entry] != max_level:
        raise ValueError("graph node layers out of range or entry point not on the top layer")
    if upper.shape != (int(levels.sum(dtype=np.int64)), m + 1):
        raise ValueError(f"graph upper layers have shape {upper.shape}, the node layers need "
                         f"({int(levels.sum(dtype=np.int64))}, {m + 1})")
    layer = np.concatenate([np.zeros(n, np.int64), _layer_numbers(levels)])  # layer of each link row
    for rows, lo in ((level0, 0), (upper, n)):
        count = rows[:, 0].astype(np.int64)
        if count.min(initial=0) < 0 or count.max(initial=0) > rows.shape[1] - 1:
            raise ValueError("graph neighbour count out of range")
        ids = rows[:, 1:].astype(np.int64)
        used = np.arange(ids.shape[1]) < count[:, None]
        if ((ids < 0) | (ids >= n))[used].any():
            raise ValueError(f"graph neighbour id out of range [0, {n})")
        # a neighbour on layer l must itself reach layer l (hnswlib reads its list there)
        if lo and (levels[np.where(used, ids, 0)] < layer[lo : lo + len(rows), None])[used].any():
            raise ValueError("graph neighbour on an upper layer the node does not reach")
    return m, efc, max_level, entry


def _layer_numbers(levels: np.ndarray) -> np.ndarray:
    """For the upper-layer rows of nodes with ``levels``: each row's layer (1..levels[i])."""
    lv = levels.astype(np.int64)
    total = int(lv.sum())
    starts = np.repeat(np.cumsum(lv) - lv, lv)
    return np.arange(total, dtype=np.int64) - starts + 1


def graph_from_arrays(arrays: dict[str, np.ndarray], vectors: np.ndarray, ef: int) -> Any:
    """An hnswlib inner-product index with the graph ``arrays`` over ``vectors``, searched with beam ``ef``.

    Parameters
    ----------
    arrays : dict
        As :func:`graph_arrays` returns them.
    vectors : numpy.ndarray of float32, shape (n, width)
        Node ``i``'s vector (scores are ``query · vectors[i]``).

    Raises
    ------
    ValueError
        Any array of the wrong type or shape, a count, id, layer or entry point out of range.
    """
    hnswlib = import_hnswlib()
    n, width = vectors.shape
    m, efc, max_level, entry = _check(arrays, n)
    template = hnswlib.Index(space="ip", dim=width)
    template.init_index(max_elements=1, M=m, ef_construction=efc)
    st = dict(template.__getstate__()[0])  # this build's layout: offsets, sizes, level multiplier
    size, off, lab = int(st["size_data_per_element"]), int(st["offset_data"]), int(st["label_offset"])
    if int(st["max_M0"]) != 2 * m or off != 4 * (2 * m + 1) or lab != off + 4 * width or size < lab + 8:
        raise RuntimeError(f"unexpected hnswlib memory layout (hnswlib {getattr(hnswlib, '__version__', '?')})")
    data = np.zeros((n, size), dtype=np.uint8)
    data[:, :off] = np.ascontiguousarray(arrays["level0"]).view(np.uint8).reshape(n, off)
    data[:, off:lab] = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint8).reshape(n, 4 * width)
    data[:, lab : lab + 8] = np.arange(n, dtype=np.uint64).view(np.uint8).reshape(n, 8)
    st.update(
        max_elements=n, cur_element_count=n, max_level=max_level, enterpoint_node=entry, ef=int(ef),
        has_deletions=False, allow_replace_deleted=False, ep_added=True, normalize=False, index_inited=True,
        label_lookup_external=np.arange(n, dtype=np.uint64), label_lookup_internal=np.arange(n, dtype=np.uint32),
        element_levels=np.ascontiguousarray(arrays["levels"], dtype=np.int32),
        data_level0=data.reshape(-1).view(np.int8),
        link_lists=np.ascontiguousarray(arrays["upper"]).reshape(-1).view(np.int8),
    )
    index = hnswlib.Index.__new__(hnswlib.Index)
    index.__setstate__((st,))  # the binding's constructor from a state dict (no pickle involved)
    return index


def merge_graphs(base: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One graph (arrays) with ``base``'s layers and, on layer 0, each node's neighbours in both graphs.

    Both graphs must be over the same ``n`` nodes with the same ``m``. The result has
    degree ``2 m`` (so up to ``4 m`` layer-0 neighbours, each once); its upper layers,
    levels and entry point are ``base``'s.
    """
    m = int(base["header"][0])
    if int(extra["header"][0]) != m or base["level0"].shape != extra["level0"].shape:
        raise ValueError("graphs to merge must have the same nodes and degree")
    lists = []
    for g in (base, extra):
        rows = g["level0"]
        ids = rows[:, 1:].astype(np.int64)
        lists.append(np.where(np.arange(ids.shape[1]) < rows[:, :1], ids, -1))
    ids = np.sort(np.concatenate(lists, axis=1), axis=1)  # unused slots (-1) first
    ids[:, 1:][ids[:, 1:] == ids[:, :-1]] = -1  # an edge of both graphs: once
    ids = np.take_along_axis(ids, np.argsort(ids < 0, axis=1, kind="stable"), 1)  # used slots first, in order
    level0 = np.zeros((len(ids), 4 * m + 1), dtype=np.int32)
    level0[:, 0] = (ids >= 0).sum(1)
    level0[:, 1:] = np.maximum(ids, 0)
    upper = np.zeros((len(base["upper"]), 2 * m + 1), dtype=np.int32)
    upper[:, : m + 1] = base["upper"]
    header = base["header"].copy()
    header[0] = 2 * m
    return {"level0": level0, "levels": base["levels"].copy(), "upper": upper, "header": header}
