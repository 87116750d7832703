"""Save and load models as safetensors + JSON: nothing in a model file can run code.

A model folder holds two files:

- ``model.safetensors``: the weights and the seen-items index (CSR arrays);
- ``torchmf.json``: format version, hyperparameters, id maps, rating range,
  training history, tensor shapes and dtypes, and the SHA-256 of the weights
  file, so a truncated or edited file is caught before it is used.

Saving writes a temporary folder beside the target and renames it into place,
so a crash never leaves a half-written model where the last good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchmf.data.idmap import IdMap
from torchmf.device import resolve_device
from torchmf.errors import ModelFileError, TorchMFError
from torchmf.estimator.params import Params, validate
from torchmf.estimator.state import ModelState

__all__ = ["FORMAT_VERSION", "load_state", "save_state"]

FORMAT_VERSION = 1
FORMAT_NAME = "torchmf-model"
WEIGHTS = "model.safetensors"
META = "torchmf.json"


def save_state(state: ModelState, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write ``state`` to the folder ``path``."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.tensors.items()}
    tensors["seen_indptr"] = torch.from_numpy(np.ascontiguousarray(state.seen_indptr, dtype=np.int64))
    tensors["seen_indices"] = torch.from_numpy(np.ascontiguousarray(state.seen_indices, dtype=np.int64))
    blob = st_save(tensors, metadata={"format": FORMAT_NAME})
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "params": state.params,
        "effective_params": state.effective_params,
        "user_ids": state.user_map.to_json(),
        "item_ids": state.item_map.to_json(),
        "implicit": state.implicit,
        "rating_range": list(state.rating_range),
        "history": state.history,
        "best_epoch": state.best_epoch,
        "extras": state.extras,
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()
        },
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ModelFileError(f"{target}: exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (tmp / WEIGHTS).write_bytes(blob)
        (tmp / META).write_text(json.dumps(meta, indent=1, allow_nan=False))
        if target.exists():
            # two renames: old aside, new in; the old copy is deleted only after
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "m")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(path: str | os.PathLike, device: str = "auto", mmap: bool = False) -> ModelState:
    """Read a model folder written by :func:`save_state`.

    Parameters
    ----------
    path : path-like
        The model folder.
    device : str
        Where to put the weights ("auto", "cpu", "cuda", "cuda:N").
    mmap : bool
        Map the weights file instead of reading it (several processes share one copy).

    Raises
    ------
    ModelFileError
        Missing files, unknown format or version, checksum mismatch, or
        tensors whose names, shapes or dtypes do not match the metadata.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: not a torchmf model folder (no such folder)")
    meta_path, weights_path = folder / META, folder / WEIGHTS
    if not meta_path.exists() or not weights_path.exists():
        raise ModelFileError(f"{folder}: not a torchmf model folder (expected {META} and {WEIGHTS})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{meta_path}: not a torchmf model (format field missing or wrong)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path}: format version {meta.get('format_version')!r}; this torchmf reads version {FORMAT_VERSION}"
        )
    blob = weights_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise ModelFileError(f"{weights_path}: checksum mismatch (file truncated or modified)")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(f"{weights_path}: unreadable ({exc})") from None
    try:
        return _build(meta, tensors, device)
    except ModelFileError:
        raise
    except (TorchMFError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{folder}: inconsistent model files ({type(exc).__name__}: {exc})") from None


def _build(meta: dict[str, Any], tensors: dict[str, torch.Tensor], device: str) -> ModelState:
    declared = meta["tensors"]
    if set(declared) != set(tensors):
        raise ModelFileError(f"tensor names {sorted(tensors)} differ from the metadata's {sorted(declared)}")
    for name, t in tensors.items():
        spec = declared[name]
        if list(t.shape) != spec["shape"] or str(t.dtype).removeprefix("torch.") != spec["dtype"]:
            raise ModelFileError(f"tensor {name!r} is {tuple(t.shape)} {t.dtype}, metadata says {spec}")
    user_map = IdMap.from_json(meta["user_ids"], "user")
    item_map = IdMap.from_json(meta["item_ids"], "item")
    indptr, indices = tensors.pop("seen_indptr").numpy(), tensors.pop("seen_indices").numpy()
    if (
        len(indptr) != len(user_map) + 1
        or indptr[-1] != len(indices)
        or (len(indices) and indices.max() >= len(item_map))
    ):
        raise ModelFileError("seen-items index does not match the id maps")
    params = dict(meta["params"])
    validate(Params(**{k: v for k, v in params.items() if k in Params.names()}))
    effective = dict(meta["effective_params"])
    width = tensors["user_embs.weight"].shape[1]
    declared_width = meta.get("extras", {}).get("embedding_dim", effective["factors"])
    if width != declared_width:
        raise ModelFileError(f"factors are {width} wide, the metadata says {declared_width}")
    dev = resolve_device(device)
    state = ModelState(
        params=params,
        effective_params=effective,
        tensors={k: v.to(dev) for k, v in tensors.items()},
        user_map=user_map,
        item_map=item_map,
        seen_indptr=indptr.copy(),
        seen_indices=indices.copy(),
        rating_range=tuple(meta["rating_range"]),
        implicit=bool(meta["implicit"]),
        history=meta.get("history", []),
        best_epoch=meta.get("best_epoch"),
        extras=meta.get("extras", {}),
    )
    state.build_model()  # raises when the tensors do not fit the id maps
    return state
