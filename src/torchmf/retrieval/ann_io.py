"""Save and load approximate indexes beside a model, checksummed: no pickle anywhere.

An index is two files in the model folder:

- ``index.hnsw.faiss``: the graph and vectors in faiss' own binary format
  (``faiss.write_index``; plain arrays, nothing executable): an
  ``IndexHNSWFlat``, or (format version 2, projected graphs) an
  ``IndexRefineFlat`` over an ``IndexPreTransform`` of one;
- or (format version 3, the hnswlib indexes of :mod:`torchmf.retrieval.hnswlib_index`:
  Möbius and union graphs)
  ``index.hnsw.safetensors``: the item rows (``vectors``) and the hnswlib graph's
  arrays (``graph.level0``, ``graph.levels``, ``graph.upper``, ``graph.header``),
  every id and count checked on load
  (:func:`~torchmf.retrieval.hnswlib_graph.graph_from_arrays`);
- ``index.hnsw.json``: kind, sizes, build parameters and the recall measured at build time.

:func:`save_index` returns a small JSON-able entry holding the SHA-256 of both
files; the model's manifest stores it, and :func:`load_index` refuses an index
whose files no longer match it (truncated, edited, swapped).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from torchmf.errors import ModelFileError
from torchmf.retrieval.ann_common import import_faiss
from torchmf.retrieval.hnsw import HNSWIndex
from torchmf.retrieval.hnswlib_index import HnswlibIndex

__all__ = ["INDEX_FORMAT", "index_files", "index_from_files", "index_names", "load_index", "save_index"]

INDEX_FORMAT = "torchmf-ann-index"
INDEX_FORMAT_VERSION = 3  # the newest; faiss graphs are still written as version 1 or 2 (older readers load them)
# versions read back: 1 (plain IndexHNSWFlat), 2 (also projected graphs), 3 (hnswlib graphs: Möbius or union)
_READABLE_VERSIONS = (1, 2, 3)
_GRAPH_ARRAYS = ("level0", "levels", "upper", "header")


def _names(kind: str, version: int = 1) -> tuple[str, str]:
    return f"index.{kind}.{'safetensors' if version == 3 else 'faiss'}", f"index.{kind}.json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def index_files(index: HNSWIndex) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest entry of ``index`` and its files' content, by file name.

    The model's save stores the files (content-addressed, committed atomically
    with the weights); :func:`index_from_files` reads them back.

    Returns
    -------
    entry : dict
        JSON-able: ``kind``, ``format_version``, ``file``, ``sha256``, ``meta_file``,
        ``meta_sha256``, ``n_items``, ``dim``, ``has_bias``, ``info`` (parameters, recall).
    files : dict of str to bytes
        ``{entry["file"]: graph and vectors, entry["meta_file"]: description}``.
    """
    if not isinstance(index, HNSWIndex):
        raise TypeError(f"only HNSW indexes are saved, got {type(index).__name__}")
    if isinstance(index, HnswlibIndex):
        version = 3
        arrays = {"vectors": index.all_item_vectors()}
        arrays.update({f"graph.{k}": a for k, a in index.graph_arrays().items()})
        data = st_save(arrays, metadata={"format": INDEX_FORMAT})
    else:
        version = 1 if index.info.get("dims", index.dim + index.has_bias) == index.dim + index.has_bias else 2
        data = import_faiss().serialize_index(index.faiss_index).tobytes()
    data_name, meta_name = _names(index.kind, version)
    meta = {
        "format": INDEX_FORMAT,
        "format_version": version,
        "kind": index.kind,
        "n_items": index.n_items,
        "dim": index.dim,
        "has_bias": index.has_bias,
        "info": index.info,
    }
    meta_bytes = json.dumps(meta, indent=1, allow_nan=False).encode()
    entry = {
        "kind": index.kind,
        "format_version": version,
        "file": data_name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "meta_file": meta_name,
        "meta_sha256": hashlib.sha256(meta_bytes).hexdigest(),
        "n_items": index.n_items,
        "dim": index.dim,
        "has_bias": index.has_bias,
        "info": index.info,
    }
    return entry, {data_name: data, meta_name: meta_bytes}


def save_index(index: HNSWIndex, folder: str | os.PathLike) -> dict[str, Any]:
    """Write ``index`` into ``folder`` (which must exist) and return its manifest entry.

    Model saves go through :func:`index_files` instead (atomic with the weights);
    this writes the two files of :func:`index_files` under their own names.

    Parameters
    ----------
    index : HNSWIndex
    folder : path
        The index files are replaced atomically if present.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: not a folder")
    entry, files = index_files(index)
    for name, data in files.items():
        tmp = folder / f".{name}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)
    return entry


def _read(path: Path) -> bytes:
    """The file's bytes; its checksum is checked by :func:`index_from_files`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: index file is missing") from None


def index_names(entry: Any) -> tuple[str, str]:
    """The two file names a manifest entry must name (raises ModelFileError for anything else)."""
    if not isinstance(entry, dict) or entry.get("kind") != HNSWIndex.kind:
        kind = entry.get("kind") if isinstance(entry, dict) else entry
        raise ModelFileError(f"unsupported index kind {kind!r} in the manifest")
    data_name, meta_name = _names(HNSWIndex.kind, 3 if entry.get("format_version") == 3 else 1)
    if entry.get("file") != data_name or entry.get("meta_file") != meta_name:
        raise ModelFileError(f"manifest names index files {entry.get('file')!r}, {entry.get('meta_file')!r}")
    return data_name, meta_name


def load_index(folder: str | os.PathLike, entry: dict[str, Any]) -> HNSWIndex:
    """Read the index that :func:`save_index` wrote, after checking both files' SHA-256.

    Parameters
    ----------
    folder : path
        The folder holding the files.
    entry : dict
        What :func:`save_index` returned (as stored in the model's manifest).

    Raises
    ------
    ModelFileError
        A file is missing, does not match its checksum, or disagrees with the entry.
    ImportError
        faiss is not installed.
    """
    folder = Path(folder)
    try:
        data_name, meta_name = index_names(entry)
    except ModelFileError as exc:
        raise ModelFileError(f"{folder}: {exc}") from None
    files = {meta_name: _read(folder / meta_name), data_name: _read(folder / data_name)}
    return index_from_files(entry, files, folder)


def index_from_files(entry: dict[str, Any], files: dict[str, bytes], where: Any) -> HNSWIndex:
    """The index described by manifest ``entry`` from its files' content (:func:`index_files`).

    Raises
    ------
    ModelFileError
        Naming ``where``: a file missing from ``files``, not matching its
        checksum, or disagreeing with the entry.
    ImportError
        faiss is not installed.
    """
    folder = Path(where)
    try:
        data_name, meta_name = index_names(entry)
    except ModelFileError as exc:
        raise ModelFileError(f"{folder}: {exc}") from None
    for name, key in ((data_name, "sha256"), (meta_name, "meta_sha256")):
        if name not in files:
            raise ModelFileError(f"{folder / name}: index file is missing")
        if not isinstance(entry.get(key), str) or hashlib.sha256(files[name]).hexdigest() != entry[key]:
            raise ModelFileError(f"{folder / name}: checksum does not match the model's manifest "
                                 "(file changed or truncated)")
    meta_raw, data = files[meta_name], files[data_name]
    try:
        meta = json.loads(meta_raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ModelFileError(f"{folder / meta_name}: not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise ModelFileError(f"{folder / meta_name}: not a torchmf index description")
    version = meta.get("format_version")
    if version not in _READABLE_VERSIONS or isinstance(version, bool):
        raise ModelFileError(f"{folder / meta_name}: index format version {meta.get('format_version')!r} not supported")
    if (version == 3) != data_name.endswith(".safetensors"):
        raise ModelFileError(f"{folder / meta_name}: format version {version} does not match the index file "
                             f"{data_name}")
    if version == 3:
        return _hnswlib_from_bytes(data, meta, folder / data_name, folder / meta_name, entry)
    faiss = import_faiss()
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))  # already the concrete type
    except RuntimeError as exc:
        raise ModelFileError(f"{folder / data_name}: not a faiss index ({str(exc).splitlines()[0]})") from None
    if version == 1 and not isinstance(index, faiss.IndexHNSWFlat):
        raise ModelFileError(f"{folder / data_name}: not an inner-product HNSW index")
    try:
        out = HNSWIndex(index, int(meta["dim"]), bool(meta["has_bias"]), dict(meta["info"]))
    except (KeyError, TypeError, ValueError) as exc:
        where = data_name if "HNSW index" in str(exc) else meta_name
        raise ModelFileError(f"{folder / where}: {exc}") from None
    if out.n_items != meta.get("n_items") or out.n_items != entry.get("n_items"):
        said = entry.get("n_items")
        raise ModelFileError(f"{folder / data_name}: holds {out.n_items} items, the manifest says {said}")
    return out


def _hnswlib_from_bytes(data: bytes, meta: dict[str, Any], data_path: Path, meta_path: Path,
                        entry: dict[str, Any]) -> HnswlibIndex:
    """The hnswlib index of a version-3 file (safetensors arrays), every array checked."""
    try:
        arrays = st_load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{data_path}: not a safetensors file ({exc})") from None
    want = {"vectors", *(f"graph.{k}" for k in _GRAPH_ARRAYS)}
    if set(arrays) != want:
        raise ModelFileError(f"{data_path}: holds arrays {sorted(arrays)}, an hnswlib index needs {sorted(want)}")
    vectors = arrays["vectors"]
    if vectors.dtype != np.float32 or not np.isfinite(vectors).all():
        raise ModelFileError(f"{data_path}: item vectors must be finite float32")
    graph = {k: arrays[f"graph.{k}"] for k in _GRAPH_ARRAYS}
    try:
        out = HnswlibIndex(vectors, graph, int(meta["dim"]), bool(meta["has_bias"]), dict(meta["info"]))
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{meta_path}: {exc}") from None
    except ValueError as exc:
        raise ModelFileError(f"{data_path}: {exc}") from None
    if out.n_items != meta.get("n_items") or out.n_items != entry.get("n_items"):
        raise ModelFileError(f"{data_path}: holds {out.n_items} items, the manifest says {entry.get('n_items')}")
    return out
