"""Save and load models as safetensors + JSON: nothing in a model file can run code.

A model folder ``DIR`` holds (format version 2):

- ``weights-<sha256[:16]>.safetensors``: the weights and the seen-items index
  (CSR arrays), named after their content;
- ``file-<sha256[:16]>-<name>``: optional extra files, among them the two
  files of an approximate (HNSW) index (:mod:`torchmf.retrieval.ann_io`),
  whose entry the manifest keeps under ``"index"``;
- ``torchmf.json``: the manifest (see :mod:`torchmf.estimator.manifest`),
  naming those files with their SHA-256 and size, and checksummed itself.

**Atomic saves.** The content files are written under new names and fsync'd
first; then the manifest is written to a temporary file, fsync'd and renamed
over ``torchmf.json`` (one ``rename``, atomic on POSIX file systems) and the
folder fsync'd. Before that rename ``DIR`` loads as the old model, after it as
the new one, at every instant. Only then are files the new manifest does not
name removed: earlier weights and leftovers of killed saves, recognised by
torchmf's own names (``weights-*``, ``file-*``, ``.torchmf-tmp-*``, and a
version-1 ``model.safetensors`` named by the old manifest), and the
``.DIR.*`` temporary folders that killed version-1 saves left beside ``DIR``
(only when they hold nothing but version-1 model files). No other file in
``DIR`` is ever touched. Concurrent saves into one folder are serialised by an
advisory lock on it; loads racing a save retry once the manifest moved on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchmf.device import check_memory, resolve_device
from torchmf.errors import DataError, ModelFileError
from torchmf.estimator import manifest as mf
from torchmf.estimator import model_files as io
from torchmf.estimator.manifest import FORMAT_NAME, FORMAT_VERSION, META, FileEntry
from torchmf.estimator.params import Params
from torchmf.estimator.state import ModelState
from torchmf.retrieval import ann_io
from torchmf.retrieval.ann_io import index_files
from torchmf.retrieval.base import Index

__all__ = ["FORMAT_VERSION", "load_state", "save_state"]

_LOAD_ATTEMPTS = 5

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- save
@contextlib.contextmanager
def _errors_name(target: Path) -> Iterator[None]:
    """Turn OS errors (permission, disk full, a file where a folder should be) into ModelFileErrors naming DIR."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            reason = "a path component is a file, not a folder"
        raise ModelFileError(f"{target}: cannot save the model there ({reason})") from None


def _extra_bytes(name: str, value: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    if not isinstance(name, str) or mf.EXTRA_NAME_RE.match(name) is None:
        raise ValueError(f"extra file name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        return bytes(io.read_regular(Path(value)))
    raise TypeError(f"extra file {name!r} must be bytes or a path, got {type(value).__name__}")


def _owned(name: str) -> bool:
    return (name.startswith(io.TEMP_PREFIX) or mf.WEIGHTS_RE.match(name) is not None
            or mf.FILE_RE.match(name) is not None)


def _previous(target: Path, overwrite: bool) -> tuple[bool, set[str]]:
    """Whether ``target`` holds a torchmf model, and the legacy files its manifest names.

    Raises ModelFileError for a non-empty folder that holds no torchmf model, unless ``overwrite``.
    """
    entries = os.listdir(target)
    legacy: set[str] = set()
    is_model = False
    if META in entries:
        try:
            meta = io.parse_json(io.read_regular(target / META), str(target / META))
            is_model = isinstance(meta, dict) and meta.get("format") == FORMAT_NAME
            if is_model and meta.get("format_version") == 1:
                legacy.add(mf.LEGACY_WEIGHTS)
                with contextlib.suppress(ModelFileError):  # version 1 kept an ANN index beside the weights
                    legacy.update(ann_io.index_names(meta["index"]) if "index" in meta else ())
        except (ModelFileError, FileNotFoundError):
            is_model = False
    foreign = sorted(e for e in entries if not _owned(e) and (e != META or not is_model))
    if not is_model and foreign and not overwrite:
        shown = ", ".join(repr(e) for e in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ModelFileError(f"{target}: folder is not empty and holds no torchmf model ({shown}); "
                             "choose another folder, or pass overwrite=True to add the model files beside them")
    return is_model, legacy


def _cleanup(target: Path, keep: set[str], legacy: set[str]) -> None:
    for name in sorted(os.listdir(target)):
        if name in keep or not (_owned(name) or name in legacy):
            continue
        try:
            if stat.S_ISDIR(os.lstat(target / name).st_mode):
                continue
            os.unlink(target / name)
        except FileNotFoundError:
            continue
        io.checkpoint(f"removed-{name}")


def _v1_model_files(folder: Path) -> list[Path] | None:
    """The files of ``folder`` if it holds nothing but version-1 model files (regular files), else None."""
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        return None
    names = os.listdir(folder)
    if set(names) - {META, mf.LEGACY_WEIGHTS}:
        return None
    paths = [folder / n for n in names]
    return None if any(not stat.S_ISREG(os.lstat(p).st_mode) for p in paths) else paths


def _remove_v1_leftovers(target: Path) -> None:
    """Remove the temporary folders killed version-1 saves left beside ``target``.

    Version 1 saved through ``.<name>.<8 chars>`` and ``.<name>.old.<8 chars>/m``
    folders next to the model folder. Only folders of exactly that name holding
    nothing but version-1 model files are removed, file by file (never a tree).
    """
    folder = target.resolve()
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.(old\.)?[A-Za-z0-9_]{{8}}\Z")
    for entry in os.listdir(folder.parent):
        m = pattern.match(entry)
        path = folder.parent / entry
        if m is None or not stat.S_ISDIR(os.lstat(path).st_mode):
            continue
        inner: Path | None = path
        if m.group(1):  # the old model was moved to .<name>.old.*/m
            names = os.listdir(path)
            if names not in ([], ["m"]):
                continue
            inner = path / "m" if names else None
        files = _v1_model_files(inner) if inner is not None else []
        if files is None:
            continue
        for f in files:
            os.unlink(f)
        if inner is not None and inner != path:
            os.rmdir(inner)
        os.rmdir(path)
        log.info("removed %s, left by a killed save of an older torchmf", path)


def save_state(state: ModelState, path: str | os.PathLike, overwrite: bool = False,
               extra_files: Mapping[str, bytes | str | os.PathLike] | None = None) -> None:
    """Write ``state`` to the folder ``path``, atomically.

    At every instant ``path`` loads as either the model it held before or the
    new one, even if the process is killed or the machine loses power midway
    (the commit is one fsync'd rename of the manifest; see the module
    docstring). Files in ``path`` that torchmf did not write are never touched.

    Parameters
    ----------
    state : ModelState
    path : path-like
        The model folder; created (with its parents) when missing. ``.`` and
        relative paths work.
    overwrite : bool
        A folder that exists, is not empty and holds no torchmf model (no
        readable ``torchmf.json`` of ours) is refused unless ``overwrite`` is
        True. With True, the model files are written beside the folder's other
        files, which are left as they are; the only file that can be replaced
        is an unreadable ``torchmf.json`` (a damaged manifest). Saving over an
        existing torchmf model never needs ``overwrite``.
    extra_files : mapping of str to bytes or path, optional
        Extra files to store with the model (e.g. ``{"index.hnsw": data}``),
        added to ``state.files``; names are 1-64 characters of letters, digits,
        ``.``, ``_``, ``-``. They are checksummed and committed atomically with
        the weights, and come back in ``load_state(path).files``.

    Raises
    ------
    ModelFileError
        ``path`` is a file, or a non-model folder (without ``overwrite``), or the
        files cannot be written (permission, full disk, a parent that is a
        file): the message names ``path``. The folder then loads as its old model
        (or as the new one when only the final fsync or clean-up failed).
    DataError
        Ids that cannot be saved (neither str nor int).
    """
    target = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.tensors.items()}
    tensors["seen_indptr"] = torch.from_numpy(np.ascontiguousarray(state.seen_indptr, dtype=np.int64))
    tensors["seen_indices"] = torch.from_numpy(np.ascontiguousarray(state.seen_indices, dtype=np.int64))
    tensors["seen_values"] = torch.from_numpy(np.ascontiguousarray(state.seen_values, dtype=np.float32))
    blob = io.safetensors_bytes(tensors, metadata={"format": FORMAT_NAME})  # one copy of the data at the peak
    sha = io.sha256_hex(blob)
    weights = FileEntry(f"weights-{sha[:16]}.safetensors", sha, len(blob))
    extras = {name: _extra_bytes(name, v) for name, v in {**state.files, **(extra_files or {})}.items()}
    index_entry = None
    if state.index is not None:  # the approximate index: two more files, committed with the weights
        index_entry, index_blobs = index_files(state.index)
        extras.update(index_blobs)
    files = {}
    for name, data in extras.items():
        h = io.sha256_hex(data)
        files[name] = FileEntry(f"file-{h[:16]}-{name}", h, len(data))
    meta = mf.build_manifest(state, tensors, weights, files, index_entry)
    try:
        text = json.dumps(meta, indent=1, allow_nan=False).encode()
    except ValueError as exc:
        raise DataError(f"model metadata cannot be saved as JSON ({exc})") from None
    with _errors_name(target):
        if target.exists() and not target.is_dir():
            raise ModelFileError(f"{target}: exists and is not a folder")
        if not target.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            io.fsync_dir(target.parent)
        with io.locked(target):
            _, legacy = _previous(target, overwrite)
            io.write_file(target, weights.file, blob, "weights")
            for name, data in extras.items():
                io.write_file(target, files[name].file, data, f"file-{name}")
            io.fsync_dir(target)
            io.checkpoint("content-durable")
            io.write_file(target, META, text, "manifest")  # the commit
            io.fsync_dir(target)
            io.checkpoint("committed")
            _cleanup(target, {weights.file, META} | {e.file for e in files.values()}, legacy)
            with contextlib.suppress(OSError):  # best effort: the new model is committed already
                _remove_v1_leftovers(target)
            io.fsync_dir(target)
            io.checkpoint("cleaned")


# ---------------------------------------------------------------------- load
def load_state(path: str | os.PathLike, device: str = "auto", mmap: bool = False) -> ModelState:
    """Read a model folder written by :func:`save_state` (format version 1 or 2).

    Every field of the manifest is validated and every file checked against
    its SHA-256 and size before anything is built from it; only regular files
    are read, and their sizes are checked against memory first.

    Parameters
    ----------
    path : path-like
        The model folder.
    device : str
        Where to put the weights ("auto", "cpu", "cuda", "cuda:N").
    mmap : bool
        Map the weights file copy-on-write instead of reading it: processes
        that load the same file share one copy of its pages in memory. The
        weights are still checksummed (read once through the page cache).
        Fold-in still works: a written page is copied for that process only,
        and the file is never changed. The file must not be modified in place
        while mapped (torchmf's saves never do; they write new files). Only
        useful with ``device="cpu"``; on a GPU the weights are copied anyway.

    Raises
    ------
    ModelFileError
        Missing files, unknown format or version, checksum mismatch, invalid
        or inconsistent fields, files that are not regular files, or weights
        that would not fit in memory.
    """
    folder = Path(path)
    if not folder.is_dir():
        why = "not a folder" if folder.exists() else "no such folder"
        raise ModelFileError(f"{folder}: not a torchmf model folder ({why})")
    missing = ""
    for attempt in range(_LOAD_ATTEMPTS):
        try:
            raw = io.read_regular(folder / META)
        except FileNotFoundError:
            raise ModelFileError(f"{folder}: not a torchmf model folder (no {META})") from None
        man = mf.check_manifest(io.parse_json(raw, str(folder / META)), folder / META)
        try:
            return _load_files(folder, man, device, mmap)
        except FileNotFoundError as exc:
            # a save may have replaced the manifest and removed the files it named: read it again
            missing = Path(exc.filename).name
            time.sleep(0.05 * attempt)
    raise ModelFileError(f"{folder}: {missing}, named by {META}, is missing")


def _load_files(folder: Path, man: mf.Manifest, device: str, mmap: bool) -> ModelState:
    dev = resolve_device(device)
    path = folder / man.weights.file
    fd = io.open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if man.weights.bytes is not None and size != man.weights.bytes:
            raise ModelFileError(f"{path}: {size} bytes, the manifest says {man.weights.bytes} "
                                 "(file truncated or modified)")
        buf = io.read_weights(fd, path, size, mmap)
    finally:
        os.close(fd)
    if io.sha256_hex(buf) != man.weights.sha256:
        raise ModelFileError(f"{path}: checksum mismatch (file truncated or modified)")
    tensors = io.safetensors_tensors(buf, path)
    indptr, indices, values = mf.check_tensors(tensors, man, path)
    files = {}
    for name, entry in man.files.items():
        data = io.read_regular(folder / entry.file)
        if len(data) != entry.bytes or io.sha256_hex(data) != entry.sha256:
            raise ModelFileError(f"{folder / entry.file}: checksum mismatch (file truncated or modified)")
        files[name] = bytes(data)
    if dev.type != "cpu":
        try:
            check_memory(sum(t.nbytes for t in tensors.values()), dev, f"loading {folder}")
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
    meta = man.meta
    weights = {k: v.to(dev) for k, v in tensors.items() if not k.startswith("seen_")}
    state = ModelState(
        params=dict(meta["params"]),
        effective_params={**dict.fromkeys(Params.names()), **meta["effective_params"]},
        tensors=weights,
        user_map=man.user_map,
        item_map=man.item_map,
        seen_indptr=indptr,
        seen_indices=indices,
        seen_values=values,
        rating_range=(float(meta["rating_range"][0]), float(meta["rating_range"][1])),
        implicit=meta["implicit"],
        history=list(meta.get("history", [])),
        best_epoch=meta.get("best_epoch"),
        extras=dict(meta.get("extras", {})),
        files=files,
    )
    try:
        state.build_model()
    except ValueError as exc:  # pragma: no cover - the manifest checks cover this
        raise ModelFileError(f"{folder}: {exc}") from None
    if "index" in meta:
        state.index = _read_index(folder, meta["index"], state, man.version)
    return state


def _read_index(folder: Path, entry: Any, state: ModelState, version: int) -> Index | None:
    """The saved approximate index, checked against its checksums and the model; None without its library.

    Version 2 keeps its files among the manifest's ``files`` (taken out of
    ``state.files`` here); version 1 (releases with ANN support) beside the weights.
    """
    names = ann_io.index_names(entry) if version >= 2 else ()
    blobs = {n: state.files.pop(n) for n in names if n in state.files}
    try:
        if version >= 2:
            index = ann_io.index_from_files(entry, blobs, folder)
        else:
            index = ann_io.load_index(folder, entry)
    except ImportError as e:
        log.warning("%s: the model has an approximate index, but %s; using exact search", folder, e)
        return None
    width = state.query_width
    if index.n_items != state.n_items or getattr(index, "dim", width) != width:
        raise ModelFileError(f"{folder}: the approximate index covers {index.n_items} items of width "
                             f"{getattr(index, 'dim', '?')}, the model has {state.n_items} of width {width}")
    return index
