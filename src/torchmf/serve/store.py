"""The served model: loading, checking, versioning and safe hot reload.

A :class:`ModelStore` holds one :class:`LoadedModel` at a time. Requests take a
reference to the current one when they start (``store.current``) and use it to
the end, so a reload never changes the model under a request in flight. A
reload loads and checks the new model on a background thread and then swaps the
reference in one assignment; a model that fails to load or check leaves the old
one serving and is reported by :meth:`ModelStore.status`, the log and the
reload-failure counter.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchmf.errors import TorchMFError

__all__ = ["LoadedModel", "ModelStore", "model_checksum"]

log = logging.getLogger(__name__)

META = "torchmf.json"  # the model folder's metadata file; its bytes identify the model


def model_checksum(model_dir: str | os.PathLike) -> str:
    """SHA-256 (hex) of the model folder's ``torchmf.json``.

    The metadata file records the weights' own checksum, so its hash changes
    whenever the weights, id maps or hyperparameters do.
    """
    return hashlib.sha256((Path(model_dir) / META).read_bytes()).hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model and what the service says about it.

    Attributes
    ----------
    model : MatrixFactorization
        Fitted estimator, read-only from here on.
    checksum : str
        SHA-256 of ``torchmf.json``.
    version : str
        Short version string (the first 12 hex digits of ``checksum``).
    loaded_at : float
        Unix time the model was loaded.
    extras : dict
        What the store's ``prepare`` hook built for this model (titles, search index).
    """

    model: Any
    checksum: str
    loaded_at: float
    extras: dict[str, Any] = field(default_factory=dict)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", self.checksum[:12])

    @property
    def loaded_at_iso(self) -> str:
        return _dt.datetime.fromtimestamp(self.loaded_at, _dt.timezone.utc).isoformat(timespec="seconds")


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ModelStore:
    """Holds the served model and reloads it safely.

    Parameters
    ----------
    model_dir : path-like
        Folder written by ``MatrixFactorization.save``.
    device : str
        Where to load the weights ("cpu", "auto", "cuda", ...).
    mmap : bool
        Memory-map the weights (worker processes share one copy).
    on_event : callable, optional
        ``on_event(kind, loaded_or_error)`` after each load: kind is
        ``"loaded"`` or ``"failed"``; used for metrics.
    prepare : callable, optional
        ``prepare(model) -> dict`` run on each newly loaded model before the
        swap (its failure fails the reload); the dict becomes ``extras``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str = "cpu",
        mmap: bool = False,
        on_event: Callable[[str, Any], None] | None = None,
        prepare: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.mmap = mmap
        self._on_event = on_event
        self._prepare = prepare
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()  # one load at a time
        self.loading = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self._watch_stop = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._failed_checksum: str | None = None

    # ------------------------------------------------------------------ state
    @property
    def current(self) -> LoadedModel | None:
        """The model serving now (None until the first load succeeds)."""
        return self._current

    def status(self) -> dict[str, Any]:
        """Readiness detail: the version serving and the last reload failure, if any."""
        cur = self._current
        out: dict[str, Any] = {
            "status": "ready" if cur is not None else ("loading" if self.loading else "not loaded"),
            "model_dir": str(self.model_dir),
            "version": None if cur is None else cur.version,
            "loaded_at": None if cur is None else cur.loaded_at_iso,
            "reloading": self.loading,
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
        }
        if self.last_error is not None:
            out["last_reload_error"] = self.last_error
            out["last_reload_error_at"] = _dt.datetime.fromtimestamp(
                self.last_error_at or 0, _dt.timezone.utc
            ).isoformat(timespec="seconds")
        return out

    # ------------------------------------------------------------------ loading
    def _read(self, attempts: int = 3) -> LoadedModel:
        """Load and check the model in ``model_dir`` (raises on any problem).

        A save that lands while the files are read (seen as a changed
        ``torchmf.json``) may mix two models' files: the read starts over.
        """
        from torchmf.estimator.mf import MatrixFactorization

        for _ in range(attempts):
            try:
                before: str | None = model_checksum(self.model_dir)
            except OSError:  # let the loader say what is missing
                before = None
            try:
                model = MatrixFactorization.load(self.model_dir, device=self.device, mmap=self.mmap)
            except Exception:
                if before is not None and _checksum_or_none(self.model_dir) != before:
                    continue  # the files changed under the loader: read the new ones
                raise
            after = model_checksum(self.model_dir)
            if before == after:
                _check(model)
                extras = {} if self._prepare is None else self._prepare(model)
                return LoadedModel(model=model, checksum=after, loaded_at=time.time(), extras=extras)
        raise TorchMFError(f"{self.model_dir}: the model files kept changing while being read ({attempts} tries)")

    def load(self, log_failure: bool = True) -> LoadedModel:
        """Load the model now, swap it in and return it.

        Parameters
        ----------
        log_failure : bool
            Log a failure as an error (off when the caller reports the raised error itself).

        Raises
        ------
        ModelFileError, TorchMFError, OSError
            The model could not be loaded or failed its check; the model
            serving before (if any) keeps serving.
        """
        with self._lock:
            self.loading = True
            stat_before = _stat_key(self.model_dir / META)
            try:
                new = self._read()
            except Exception as exc:
                self._failed(exc, stat_before, log_failure)
                raise
            finally:
                self.loading = False
            old, self._current = self._current, new  # the swap: one reference assignment
            if old is not None:
                self.reloads += 1
            self.last_error = None
            self._failed_checksum = None
            log.info(
                "model %s loaded from %s (%d users, %d items)%s",
                new.version, self.model_dir, len(new.model.user_map), len(new.model.item_map),
                "" if old is None else f"; replaced {old.version}",
            )
            if self._on_event is not None:
                self._on_event("loaded", new)
            return new

    def _failed(self, exc: BaseException, stat_before: tuple[int, int, int] | None, log_failure: bool) -> None:
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        self.last_error, self.last_error_at = msg, time.time()
        if self._current is not None:
            self.failed_reloads += 1
            if log_failure:
                log.error("reload of %s failed; still serving %s: %s", self.model_dir, self._current.version, msg)
        elif log_failure:
            log.error("loading %s failed: %s", self.model_dir, msg)
        # remember which files failed so --watch does not retry them every poll,
        # unless the files changed under us (a save racing the load): then retry
        if stat_before is not None and _stat_key(self.model_dir / META) == stat_before:
            try:
                self._failed_checksum = model_checksum(self.model_dir)
            except OSError:
                self._failed_checksum = None
        if self._on_event is not None:
            self._on_event("failed", msg)

    def load_in_background(self) -> threading.Thread:
        """Start :meth:`load` on a daemon thread (errors are recorded, not raised)."""

        def run() -> None:
            try:
                self.load()
            except Exception:  # recorded by _failed
                pass

        self.loading = True
        t = threading.Thread(target=run, name="torchmf-load", daemon=True)
        t.start()
        return t

    # ------------------------------------------------------------------ watching
    def start_watching(self, interval: float = 1.0) -> None:
        """Poll ``model_dir`` every ``interval`` seconds and reload when a new model was saved there."""
        if self._watch_thread is not None:
            return
        self._watch_stop.clear()
        self._watch_thread = threading.Thread(
            target=self._watch, args=(interval,), name="torchmf-watch", daemon=True
        )
        self._watch_thread.start()

    def stop_watching(self) -> None:
        self._watch_stop.set()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        self._watch_thread = None

    def _watch(self, interval: float) -> None:
        last = _stat_key(self.model_dir / META)
        while not self._watch_stop.wait(interval):
            key = _stat_key(self.model_dir / META)
            if key is None or key == last:  # missing mid-rename, or unchanged
                continue
            last = key
            try:
                checksum = model_checksum(self.model_dir)
            except OSError:
                continue
            cur = self._current
            if (cur is not None and checksum == cur.checksum) or checksum == self._failed_checksum:
                continue
            log.info("new model files in %s; reloading", self.model_dir)
            try:
                self.load()
            except Exception:  # recorded by _failed
                if self._failed_checksum is None:
                    last = None  # the files changed during the load: look again at the next poll


def _checksum_or_none(model_dir: Path) -> str | None:
    try:
        return model_checksum(model_dir)
    except OSError:
        return None


def _check(model: Any) -> None:
    """Fail on a model that loads but cannot serve: empty maps or non-finite scores."""
    n_users, n_items = len(model.user_map), len(model.item_map)
    if n_users == 0 or n_items == 0:
        raise TorchMFError(f"model has {n_users} users and {n_items} items; nothing to serve")
    _, scores = model.top_k(np.array([0], dtype=np.int64), 1, exclude_seen=False)
    if not np.isfinite(scores).all():
        raise TorchMFError("model scores are not finite (NaN or infinite weights)")
