"""Resumable single-process training: atomic checkpoints every K epochs, and resuming from the last one.

The layout is the distributed fit's (:mod:`torchmf.distributed.checkpoint`) with
one rank: ``DIR/epoch-000004/rank-00000.safetensors`` holds the model's tables
(``P``, ``Q`` and, with biases, ``bu``, ``bi``, ``global_bias``), the solver's
state beyond the weights (``solver.*``: RNG and optimiser buffers of the SGD
solvers, iALS's carried scores) and, when validating, the best epoch's weights
(``best.*``); ``DIR/epoch-000004/manifest.json``, written last, marks the
checkpoint complete and records the epoch, the history, the early-stopping
state, the effective hyperparameters and a fingerprint of the settings and of
the training data. Every file is written to a temporary name, flushed to disk
and renamed, so a fit killed at any point leaves the previous checkpoint intact.
The last two complete checkpoints are kept.

Resuming loads the newest complete checkpoint into a freshly built model and
solver, so the remaining epochs run exactly as they would have: on the CPU the
final factors are bitwise those of an uninterrupted fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchmf.data.interactions import Interactions
from torchmf.errors import DataError, ModelFileError
from torchmf.nn.mf import MFModel
from torchmf.solvers import Solver, load_solver_state, solver_state
from torchmf.training.monitor import Monitor

__all__ = ["MANIFEST", "Checkpointer", "data_fingerprint", "latest"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_SHARD = "rank-00000.safetensors"
_KEEP = 2
_FORMAT = "torchmf-checkpoint"
# settings that must match for a checkpoint to be resumed (the distributed list plus batch_size,
# which changes what an SGD epoch does); epochs may differ: resuming may train longer
_SETTINGS = ("loss", "solver", "factors", "biases", "seed", "reg", "reg_bias", "reg_exponent", "lr", "optimizer",
             "alpha", "unobserved_weight", "cg_steps", "confidence", "confidence_eps", "negatives",
             "negative_sampling", "batch_size")
# model state_dict name <-> table name in the shard (the distributed checkpoint's names)
_TABLES = {"user_embs.weight": "P", "item_embs.weight": "Q", "user_bias.weight": "bu", "item_bias.weight": "bi",
           "global_bias": "global_bias"}


def data_fingerprint(data: Interactions) -> str:
    """SHA-256 of the compacted training data: pairs, values and both id maps' raw ids."""
    h = hashlib.sha256()
    for arr in (data.users, data.items, data.values):
        h.update(arr.tobytes())
    for m in (data.user_map, data.item_map):
        h.update(json.dumps(m.to_json(), default=str).encode())
    h.update(b"implicit" if data.implicit else b"explicit")
    return h.hexdigest()


def latest(folder: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (a folder with a manifest) in ``folder``, or None."""
    p = Path(folder)
    if not p.is_dir():
        return None
    done = sorted(c for c in p.glob("epoch-*") if (c / MANIFEST).is_file())
    return done[-1] if done else None


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """Writes a checkpoint every ``every`` epochs of one fit, and restores the latest on ``resume``.

    Parameters
    ----------
    folder : str or os.PathLike
        Where the ``epoch-NNNNNN`` folders go (created when missing).
    every : int
        Epochs between checkpoints (>= 1).
    resume : bool
        Start from the newest complete checkpoint in ``folder`` (a fresh fit
        when there is none).
    hp : dict
        The fit's effective hyperparameters.
    data : Interactions
        The compacted training data (fingerprinted).

    Raises
    ------
    ValueError
        For ``every`` < 1.
    """

    def __init__(self, folder: str | os.PathLike, every: int, resume: bool, hp: dict[str, Any],
                 data: Interactions) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {every!r}")
        self.folder = Path(folder)
        self.every = every
        self.resume = resume
        self.hp = hp
        self.data = data
        self.stopped = False  # the restored checkpoint was the early-stopping epoch
        self._data_hash: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        if self._data_hash is None:
            self._data_hash = data_fingerprint(self.data)
        return {"n_users": self.data.n_users, "n_items": self.data.n_items,
                **{k: self.hp.get(k) for k in _SETTINGS}, "data": self._data_hash}

    # ------------------------------------------------------------------ write
    def after_epoch(self, epoch: int, model: MFModel, solver: Solver, monitor: Monitor, stop: bool) -> None:
        """Write a checkpoint when ``epoch`` is a multiple of ``every`` (or training stops early here)."""
        if epoch % self.every and not stop:
            return
        target = self.folder / f"epoch-{epoch:06d}"
        target.mkdir(parents=True, exist_ok=True)
        (target / MANIFEST).unlink(missing_ok=True)  # a leftover from an earlier run is not complete any more
        meta, best = monitor.state()
        tensors = {_TABLES[k]: v for k, v in model.state_dict().items()}
        tensors.update({f"solver.{k}": v for k, v in solver_state(solver).items()})
        if best is not None:
            tensors.update({f"best.{k}": v for k, v in best.items()})
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        _write_atomic(target / _SHARD, st_save(tensors))
        value = meta["best_value"]
        manifest = {
            "format": _FORMAT, "version": 1, "epoch": epoch, "world_size": 1,
            "bounds": {"P": [0, model.num_users], "Q": [0, model.num_items]},
            "history": monitor.history, "stopped": bool(stop),
            "best_epoch": meta["best_epoch"], "best_value": value if math.isfinite(value) else None,
            "fingerprint": self.fingerprint(), "effective_params": self.hp,
        }
        _write_atomic(target / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())
        _fsync_dir(target)
        done = sorted(p for p in self.folder.glob("epoch-*") if (p / MANIFEST).is_file())
        for old in done[:-_KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint after epoch %d written to %s", epoch, target)

    # ------------------------------------------------------------------ read
    def restore(self, model: MFModel, solver: Solver, monitor: Monitor) -> int:
        """Load the newest complete checkpoint into ``model``, ``solver`` and ``monitor``.

        Returns
        -------
        int
            The epoch it was written after; 0 when not resuming or there is none.

        Raises
        ------
        ModelFileError
            For an unreadable checkpoint or one written with other settings or by a distributed fit.
        DataError
            When it was written for other training data.
        """
        if not self.resume:
            return 0
        ckpt = latest(self.folder)
        if ckpt is None:
            log.warning("resume: no complete checkpoint in %s; training from the start", self.folder)
            return 0
        try:
            manifest = json.loads((ckpt / MANIFEST).read_text())
            tensors = st_load((ckpt / _SHARD).read_bytes())
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelFileError(f"{ckpt}: cannot read the checkpoint: {exc}") from None
        if manifest.get("world_size", 1) != 1:
            raise ModelFileError(f"{ckpt}: written by a distributed fit with {manifest['world_size']} processes; "
                                 "resume it with the distributed launcher (torchmf train --nproc N --resume)")
        self._check(ckpt, manifest.get("fingerprint", {}))
        try:
            model.load_state_dict({k: tensors[t] for k, t in _TABLES.items() if k in model.state_dict()})
            load_solver_state(solver, {k[7:]: v for k, v in tensors.items() if k.startswith("solver.")})
        except (KeyError, RuntimeError) as exc:
            raise ModelFileError(f"{ckpt}: incomplete checkpoint: {exc}") from None
        best = {k[5:]: v.to(model.user_embs.weight.device) for k, v in tensors.items() if k.startswith("best.")}
        value = manifest["best_value"]
        if value is None:
            value = -math.inf if monitor.higher_is_better else math.inf
        monitor.resume(manifest["history"], {"best_epoch": manifest["best_epoch"], "best_value": value},
                       best or None)
        self.stopped = bool(manifest.get("stopped", False))
        log.info("resuming after epoch %d from %s", manifest["epoch"], ckpt)
        return int(manifest["epoch"])

    def _check(self, ckpt: Path, found: dict[str, Any]) -> None:
        want = self.fingerprint()
        for key in ("n_users", "n_items", "data"):
            if found.get(key) != want[key]:
                raise DataError(
                    f"{ckpt}: checkpoint was written for other training data ({key} differs: "
                    f"{found.get(key)!r}, now {want[key]!r}); resume with the same data, or start afresh "
                    "without resume (or with another checkpoint folder)"
                )
        for key in _SETTINGS:
            if found.get(key) != want[key]:
                raise ModelFileError(f"{ckpt}: checkpoint was written with other settings "
                                     f"({key}={found.get(key)!r}, now {want[key]!r})")
