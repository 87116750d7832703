"""The model manifest ``torchmf.json``: what it holds, its checksum, and its validation at load.

Format version 2 (written by this release)::

    {"format": "torchmf-model", "format_version": 2,
     "weights": {"file": "weights-<sha256[:16]>.safetensors", "sha256": ..., "bytes": ...},
     "files": {"<name>": {"file": "file-<sha256[:16]>-<name>", "sha256": ..., "bytes": ...}},
     "params": {...}, "effective_params": {...},
     "user_ids": {"type": "int" | "str" | "mixed", "values": [...]}, "item_ids": {...},
     "implicit": bool, "rating_range": [lo, hi], "history": [...], "best_epoch": int | null,
     "extras": {...}, "tensors": {name: {"shape": [...], "dtype": "float32" | "int64"}},
     "manifest_sha256": sha256 of the canonical JSON of everything else}

Version 1 (older releases) named the weights ``model.safetensors``, stored
the ids as plain lists and checksummed only the weights (``weights_sha256``);
it is still read. The checksum catches accidental damage; the field-by-field
validation below catches the rest (a hand-edited file with a recomputed
checksum still cannot make torchmf misbehave, only load a different model).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchmf import solvers
from torchmf.data.idmap import IdMap
from torchmf.errors import DataError, ModelFileError
from torchmf.estimator.params import Params, validate
from torchmf.estimator.state import ModelState

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "FileEntry", "Manifest", "build_manifest", "check_manifest", "check_tensors",
]

FORMAT_NAME = "torchmf-model"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META = "torchmf.json"
LEGACY_WEIGHTS = "model.safetensors"
WEIGHTS_RE = re.compile(r"weights-([0-9a-f]{16})\.safetensors\Z")
EXTRA_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
FILE_RE = re.compile(r"file-([0-9a-f]{16})-([A-Za-z0-9][A-Za-z0-9._-]{0,63})\Z")
_SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
_EMB = ("user_embs.weight", "item_embs.weight")
_BIAS = ("user_bias.weight", "item_bias.weight", "global_bias")
_SEEN = ("seen_indptr", "seen_indices")
_RANKER = ("ranker.user_embs.weight", "ranker.item_embs.weight")


@dataclass(frozen=True)
class FileEntry:
    """A file the manifest names: its name in the folder, SHA-256 and size (None in version 1)."""

    file: str
    sha256: str
    bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes}


@dataclass
class Manifest:
    """A validated manifest, before the weights are read."""

    version: int
    weights: FileEntry
    files: dict[str, FileEntry]
    meta: dict[str, Any]
    user_map: IdMap
    item_map: IdMap
    shapes: dict[str, tuple[int, ...]]


def canonical_sha256(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of ``meta`` minus ``manifest_sha256``."""
    body = {k: v for k, v in meta.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _ids_json(idmap: IdMap) -> dict[str, Any]:
    values = idmap.to_json()
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise DataError(f"{idmap.kind} id {v!r} cannot be saved; use str or int ids")
    kinds = {type(v) for v in values}
    kind = "int" if kinds <= {int} else "str" if kinds == {str} else "mixed"
    return {"type": kind, "values": values}


def _finite_or_none(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


def build_manifest(state: ModelState, tensors: dict[str, torch.Tensor], weights: FileEntry,
                   files: dict[str, FileEntry], index: dict[str, Any] | None = None) -> dict[str, Any]:
    """The version-2 manifest of ``state`` whose ``tensors`` were written to ``weights``.

    ``index`` is the approximate index's entry (:func:`torchmf.retrieval.ann_io.index_files`),
    whose files are among ``files``.
    """
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "weights": weights.to_json(),
        "files": {name: entry.to_json() for name, entry in sorted(files.items())},
        "params": state.params,
        "effective_params": state.effective_params,
        "user_ids": _ids_json(state.user_map),
        "item_ids": _ids_json(state.item_map),
        "implicit": bool(state.implicit),
        "rating_range": [float(state.rating_range[0]), float(state.rating_range[1])],
        "history": [{k: _finite_or_none(v) for k, v in row.items()} for row in state.history],
        "best_epoch": state.best_epoch,
        "extras": state.extras,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                    for k, v in tensors.items()},
    }
    if index is not None:
        meta["index"] = index
    meta["manifest_sha256"] = canonical_sha256(meta)
    return meta


# ---------------------------------------------------------------------- validation
def _need(cond: bool, where: Any, what: str) -> None:
    if not cond:
        raise ModelFileError(f"{where}: {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _file_entry(raw: Any, pattern: re.Pattern[str], where: Any, field: str) -> FileEntry:
    _need(isinstance(raw, dict) and set(raw) == {"file", "sha256", "bytes"}, where,
          f"{field} must be an object with file, sha256 and bytes")
    name, sha, size = raw["file"], raw["sha256"], raw["bytes"]
    _need(isinstance(sha, str) and _SHA_RE.match(sha) is not None, where, f"{field}.sha256 is not a SHA-256 digest")
    m = pattern.match(name) if isinstance(name, str) else None
    _need(m is not None and m.group(1) == sha[:16], where,
          f"{field}.file {name!r} is not a torchmf file name for that digest")
    _need(_is_int(size) and size >= 0, where, f"{field}.bytes must be a non-negative integer")
    return FileEntry(name, sha, size)


def _ids(raw: Any, version: int, kind: str, where: Any) -> IdMap:
    declared = "any"
    if version >= 2:
        _need(isinstance(raw, dict) and set(raw) == {"type", "values"}, where, f"{kind}_ids must hold type and values")
        declared, raw = raw["type"], raw["values"]
        _need(declared in ("int", "str", "mixed"), where, f"{kind}_ids.type must be 'int', 'str' or 'mixed'")
    _need(isinstance(raw, list), where, f"{kind}_ids must be a list")
    allowed = {"int": {int}, "str": {str}}.get(declared, {int, str, float})
    want = {"int": "64-bit integers", "str": "strings"}.get(declared, "strings, 64-bit integers or finite floats")
    types = set(map(type, raw))  # fast path first; the slow loop below only runs to name a bad id
    ints = [v for v in raw if type(v) is int] if types - {int} else raw
    floats = [v for v in raw if type(v) is float] if float in types else []
    if not (types <= allowed and (not ints or (-(2**63) <= min(ints) and max(ints) < 2**63))
            and all(math.isfinite(v) for v in floats)):
        for j, v in enumerate(raw):
            ok = type(v) in allowed and (type(v) is not int or -(2**63) <= v < 2**63)
            ok = ok and (type(v) is not float or math.isfinite(v))
            _need(ok, where, f"{kind} id #{j} is {v!r}; {kind} ids (type {declared!r}) must be {want}")
    try:
        return IdMap.from_json(raw, kind)
    except (DataError, TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}: {kind} ids: {exc}") from None


def _params(meta: dict[str, Any], where: Any) -> None:
    names = set(Params.names())
    params, eff = meta["params"], meta["effective_params"]
    _need(isinstance(params, dict) and set(params) <= names, where, "params must be an object of torchmf parameters")
    try:
        validate(Params(**params))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: params: {exc}") from None
    # parameters added by later releases are missing from older files (loaded as None); solvers may add
    # values they resolve from the data (e.g. the Gibbs sampler's noise_precision)
    _need(isinstance(eff, dict) and {"factors", "biases", "loss", "solver"} <= set(eff)
          and all(v is None or isinstance(v, (bool, int, float, str)) for v in eff.values()),
          where, "effective_params must be an object of plain values with factors, biases, loss and solver")
    _need(_is_int(eff["factors"]) and eff["factors"] > 0, where, "effective_params.factors must be a positive integer")
    _need(isinstance(eff["biases"], bool), where, "effective_params.biases must be true or false")
    try:
        solvers.get_solver(eff["loss"], eff["solver"])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{where}: effective_params name an unknown loss/solver "
                             f"{eff['loss']!r}/{eff['solver']!r}") from None


def _history(meta: dict[str, Any], where: Any) -> None:
    hist, best = meta.get("history", []), meta.get("best_epoch")
    _need(isinstance(hist, list) and all(
        isinstance(row, dict) and all(isinstance(k, str) and (v is None or _is_num(v)) for k, v in row.items())
        for row in hist), where, "history must be a list of objects of numbers")
    _need(best is None or (_is_int(best) and 1 <= best <= max(1, len(hist))), where,
          f"best_epoch {best!r} is not an epoch of the history")
    _need(isinstance(meta.get("extras", {}), dict), where, "extras must be an object")


def _shapes(meta: dict[str, Any], n_users: int, n_items: int, where: Any) -> dict[str, tuple[int, ...]]:
    spec = meta["tensors"]
    _need(isinstance(spec, dict), where, "tensors must be an object")
    biases = meta["effective_params"]["biases"]
    expected = set(_EMB + _SEEN + (_BIAS if biases else ()) + ("seen_values",))
    if meta["format_version"] == 1 and "seen_values" not in spec:  # version 1 files before the values were kept
        expected.discard("seen_values")
    if any(isinstance(k, str) and k.startswith("ranker.") for k in spec):  # the ranking component (estimator.ranker)
        expected |= set(_RANKER)
        _need(isinstance(meta.get("extras", {}).get("ranker"), dict), where,
              "ranker tensors without a 'ranker' entry in extras")
    _need(set(spec) == expected, where, f"tensors {sorted(spec)} differ from the expected {sorted(expected)}")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, s in spec.items():
        _need(isinstance(s, dict) and set(s) == {"shape", "dtype"} and isinstance(s["shape"], list)
              and all(_is_int(d) and d >= 0 for d in s["shape"]), where, f"tensor {name!r}: bad shape entry")
        want = "int64" if name in _SEEN else "float32"
        _need(s["dtype"] == want, where, f"tensor {name!r} is {s['dtype']!r}, expected {want}")
        shapes[name] = tuple(s["shape"])
    d = shapes["user_embs.weight"][1] if len(shapes["user_embs.weight"]) == 2 else -1
    _need(d >= 1, where, "user_embs.weight must be (n_users, factors) with factors >= 1")
    nnz = shapes["seen_indices"][0] if len(shapes["seen_indices"]) == 1 else -1
    r = shapes.get("ranker.user_embs.weight", (0, 0))
    r = r[1] if len(r) == 2 and r[1] >= 1 else -1
    want_shapes = {"user_embs.weight": (n_users, d), "item_embs.weight": (n_items, d),
                   "ranker.user_embs.weight": (n_users, r), "ranker.item_embs.weight": (n_items, r),
                   "user_bias.weight": (n_users, 1), "item_bias.weight": (n_items, 1), "global_bias": (),
                   "seen_indptr": (n_users + 1,), "seen_indices": (nnz,), "seen_values": (nnz,)}
    for name, shape in shapes.items():
        _need(shape == want_shapes[name] and nnz >= 0, where,
              f"tensor {name!r} has shape {list(shape)}, expected {list(want_shapes[name])} "
              f"for {n_users} users, {n_items} items")
    width = meta.get("extras", {}).get("embedding_dim", meta["effective_params"]["factors"])
    _need(width == d, where, f"factors are {d} wide, the metadata says {width!r}")
    return shapes


def check_manifest(meta: Any, where: Any) -> Manifest:
    """Validate a parsed manifest (either version) field by field, before any weight is read.

    Raises
    ------
    ModelFileError
        Naming ``where`` and the first field that is missing, of the wrong
        type, out of range or inconsistent with the others.
    """
    _need(isinstance(meta, dict) and meta.get("format") == FORMAT_NAME, where,
          "not a torchmf model (format field missing or wrong)")
    version = meta.get("format_version")
    _need(_is_int(version) and version in READABLE_VERSIONS, where,
          f"format version {version!r}; this torchmf reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    required = {"params", "effective_params", "user_ids", "item_ids", "implicit", "rating_range", "tensors"}
    if version == 1:
        required |= {"weights_sha256"}
    else:
        required |= {"weights", "files", "manifest_sha256", "history", "best_epoch", "extras"}
    missing = sorted(required - set(meta))
    _need(not missing, where, f"missing field(s) {missing}")
    if version == 1:
        sha = meta["weights_sha256"]
        _need(isinstance(sha, str) and _SHA_RE.match(sha) is not None, where, "weights_sha256 is not a digest")
        weights, files = FileEntry(LEGACY_WEIGHTS, sha, None), {}
    else:
        _need(meta["manifest_sha256"] == canonical_sha256(meta), where,
              "manifest checksum mismatch (torchmf.json was modified or damaged)")
        weights = _file_entry(meta["weights"], WEIGHTS_RE, where, "weights")
        _need(isinstance(meta["files"], dict), where, "files must be an object")
        files = {}
        for name, raw in meta["files"].items():
            entry = _file_entry(raw, FILE_RE, where, f"files[{name!r}]")
            _need(FILE_RE.match(entry.file).group(2) == name, where, f"files[{name!r}] names another file")
            files[name] = entry
    _params(meta, where)
    _need(isinstance(meta["implicit"], bool), where, "implicit must be true or false")
    rr = meta["rating_range"]
    _need(isinstance(rr, list) and len(rr) == 2 and all(_is_num(v) and math.isfinite(v) for v in rr)
          and rr[0] <= rr[1], where, f"rating_range {rr!r} must be two finite numbers [low, high], low <= high")
    _history(meta, where)
    user_map = _ids(meta["user_ids"], version, "user", where)
    item_map = _ids(meta["item_ids"], version, "item", where)
    shapes = _shapes(meta, len(user_map), len(item_map), where)
    return Manifest(version, weights, files, meta, user_map, item_map, shapes)


def check_tensors(tensors: dict[str, torch.Tensor], man: Manifest,
                  where: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the weights file's tensors against the manifest; return the seen-items CSR arrays and values.

    Version-1 files without ``seen_values`` get NaN values ("not stored").

    Raises
    ------
    ModelFileError
        Names, shapes or dtypes that differ from the manifest, non-finite
        weights, or a seen-items index that is not a valid CSR of known items.
    """
    _need(set(tensors) == set(man.shapes), where,
          f"weights file holds tensors {sorted(tensors)}, the manifest {sorted(man.shapes)}")
    for name, t in tensors.items():
        want = torch.int64 if name in _SEEN else torch.float32
        _need(tuple(t.shape) == man.shapes[name] and t.dtype == want, where,
              f"tensor {name!r} is {list(t.shape)} {t.dtype}, the manifest says {list(man.shapes[name])} {want}")
        if name not in _SEEN and name != "seen_values" and t.numel():  # NaN values mean "not stored"
            lo, hi = torch.aminmax(t)  # NaN propagates; no tensor-sized temporary
            _need(math.isfinite(float(lo)) and math.isfinite(float(hi)), where,
                  f"tensor {name!r} holds NaN or infinite values")
    indptr, indices = tensors["seen_indptr"].numpy(), tensors["seen_indices"].numpy()
    values = (tensors["seen_values"].numpy() if "seen_values" in tensors
              else np.full(len(indices), np.nan, dtype=np.float32))
    _need(indptr[0] == 0 and indptr[-1] == len(indices) and bool((np.diff(indptr) >= 0).all()), where,
          "seen_indptr must start at 0, never decrease and end at the number of seen items")
    _need(len(indices) == 0 or (indices.min() >= 0 and indices.max() < len(man.item_map)), where,
          f"seen_indices must lie in [0, {len(man.item_map)})")
    return indptr, indices, values
