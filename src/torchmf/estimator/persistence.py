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
from torchmf.estimator import params as hparams
from torchmf.nn.mf import MFModel

__all__ = ["FORMAT_VERSION", "load_model", "save_model"]

FORMAT_VERSION = 1
FORMAT_NAME = "torchmf-model"
WEIGHTS = "model.safetensors"
META = "torchmf.json"


def save_model(est: Any, path: str | os.PathLike) -> None:
    """Write ``est`` (a fitted MatrixFactorization) to the folder ``path``."""
    model = est.model
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    tensors["seen_indptr"] = torch.from_numpy(np.ascontiguousarray(est.seen_indptr_, dtype=np.int64))
    tensors["seen_indices"] = torch.from_numpy(np.ascontiguousarray(est.seen_indices_, dtype=np.int64))
    blob = st_save(tensors, metadata={"format": FORMAT_NAME})
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "params": est.get_params(),
        "effective_params": est._hp,
        "user_ids": est.user_map.to_json(),
        "item_ids": est.item_map.to_json(),
        "implicit": est.implicit_,
        "rating_range": list(est.rating_range_),
        "history": est.history_,
        "best_epoch": est.best_epoch_,
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


def load_model(path: str | os.PathLike, device: str = "cpu") -> Any:
    """Read a model folder written by :func:`save_model`.

    Parameters
    ----------
    path : path-like
        The model folder.
    device : str
        Where to put the weights ("cpu", "cuda", "auto").

    Raises
    ------
    ModelFileError
        Missing files, unknown format or version, checksum mismatch, or
        tensors whose names, shapes or dtypes do not match the metadata.
    """
    from torchmf.estimator.mf import MatrixFactorization

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
        return _build(MatrixFactorization, meta, tensors, device)
    except ModelFileError:
        raise
    except (TorchMFError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{folder}: inconsistent model files ({type(exc).__name__}: {exc})") from None


def _build(cls: type, meta: dict[str, Any], tensors: dict[str, torch.Tensor], device: str) -> Any:
    declared = meta["tensors"]
    if set(declared) != set(tensors):
        raise ModelFileError(f"tensor names {sorted(tensors)} differ from the metadata's {sorted(declared)}")
    for name, t in tensors.items():
        spec = declared[name]
        if list(t.shape) != spec["shape"] or str(t.dtype).removeprefix("torch.") != spec["dtype"]:
            raise ModelFileError(f"tensor {name!r} is {tuple(t.shape)} {t.dtype}, metadata says {spec}")
    user_map = IdMap.from_json(meta["user_ids"], "user")
    item_map = IdMap.from_json(meta["item_ids"], "item")
    hp = meta["effective_params"]
    model = MFModel(len(user_map), len(item_map), hp["factors"], biases=hp["biases"])
    state = {k: v for k, v in tensors.items() if not k.startswith("seen_")}
    model.load_state_dict(state, strict=True)  # shape mismatches raise RuntimeError
    indptr, indices = tensors["seen_indptr"].numpy(), tensors["seen_indices"].numpy()
    if (
        len(indptr) != len(user_map) + 1
        or indptr[-1] != len(indices)
        or (len(indices) and indices.max() >= len(item_map))
    ):
        raise ModelFileError("seen-items index does not match the id maps")
    est = cls(**{k: v for k, v in meta["params"].items() if k in hparams.Params.names()})
    dev = resolve_device(device)
    model.requires_grad_(False)
    est._model = model.to(dev)
    est._hp = hp
    est.user_map, est.item_map = user_map, item_map
    est.implicit_ = bool(meta["implicit"])
    est.rating_range_ = tuple(meta["rating_range"])
    est.history_ = meta.get("history", [])
    est.best_epoch_ = meta.get("best_epoch")
    est.seen_indptr_, est.seen_indices_ = indptr.copy(), indices.copy()
    return est
