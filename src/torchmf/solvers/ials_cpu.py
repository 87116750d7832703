"""iALS half-sweeps on a fused CPU kernel (numba): one compiled pass per half-sweep, no gathered layout.

The torch path (:mod:`torchmf.solvers.ials`, :mod:`torchmf.solvers.cg`) runs
CG as ~75 tensor operations per chunk of rows, over factors first gathered
into padded blocks; its Python threads share the GIL between those calls and
the layouts cost ~6 bytes per pair and side (issue 12: ~610 MB at 50 M pairs).
Here each row runs the same CG recurrence on its own inside one compiled
numba function, reading the other side's factors through the CSR pattern:

- the pattern is the data's own CSR arrays for the user side (shared with
  :meth:`~torchmf.data.interactions.Interactions.row_major`) and one int32
  transpose for the item side;
- confidences are one number when every pair has the same value (binary
  data: no pair-sized array at all), else one float32 per pair and side;
- the kernel releases the GIL and the chunks of rows are shared out to Python
  threads (as many as torch's intra-op threads), pulled one group at a time;
- results do not depend on the thread count (rows are independent; the loss
  is summed per fixed chunk, then over the chunks in order) and equal the torch
  path's up to float reassociation (``tests/test_ials_cpu.py``).

Used for float32 factors on the CPU with CG solves (``cg_steps > 0``) from
:data:`MIN_KERNEL_PAIRS` pairs on (below that, importing numba and loading its
cached code costs more than it saves); the torch path covers the rest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchmf.data.csr import csr_transpose
from torchmf.solvers.compiled import compiled_available, run_on_threads
from torchmf.solvers.ials_layout import IALSSettings, ials_penalty

__all__ = ["MIN_KERNEL_PAIRS", "FusedSide", "fused_half_sweep", "fused_sides", "kernel_applies", "start_warm_up"]

log = logging.getLogger(__name__)

# Private switch: "auto" (kernel when it pays), "numba" (always, where supported), "torch" (never).
_MODE = "auto"
MIN_KERNEL_PAIRS = 500_000
# fixed chunks of about this many pairs (plus rows), at least _MIN_CHUNKS: work units and loss partial sums
_CHUNK_PAIRS = 1 << 16
_MIN_CHUNKS = 64
_GROUPS_PER_THREAD = 8  # chunk groups per thread and half-sweep: late, short groups even out the threads
_KERNEL: dict[str, Any] = {}


def kernel_applies(device: torch.device, dtype: torch.dtype, cg_steps: int, n_pairs: int,
                   warm_up: threading.Thread | None = None) -> bool:
    """Whether a fit of ``n_pairs`` pairs should sweep on the fused kernel (``warm_up``: see :func:`start_warm_up`)."""
    if not _may_apply(device, dtype, cg_steps, n_pairs):
        return False
    if warm_up is not None:
        warm_up.join()
    return compiled_available(_kernel, "iALS", "sweeps stay on the torch path")


def _may_apply(device: torch.device, dtype: torch.dtype, cg_steps: int, n_pairs: int) -> bool:
    if _MODE == "torch" or device.type != "cpu" or dtype != torch.float32 or cg_steps <= 0:
        return False
    return _MODE == "numba" or n_pairs >= MIN_KERNEL_PAIRS


def start_warm_up(device: torch.device, dtype: torch.dtype, cg_steps: int, n_pairs: int) -> threading.Thread | None:
    """Import numba and load the kernels' machine code on a background thread, when the kernel will run.

    Loading takes ~0.5 s of mostly Python work; started before the set-up's sorts (numpy
    releases the GIL while it sorts) it overlaps them instead of adding to them.
    """
    if not _may_apply(device, dtype, cg_steps, n_pairs):
        return None
    thread = threading.Thread(target=_load, name="torchmf-ials-kernel", daemon=True)
    thread.start()
    return thread


def _kernel() -> dict[str, Any]:
    if not _KERNEL:
        from torchmf.solvers import _ials_numba as k

        _KERNEL.update(sweep=k.cg_chunks, transpose=k.pattern_transpose)
    return _KERNEL


def _load() -> None:
    """Load both kernels for the argument types the sweeps pass (a call on a one-row side each)."""
    try:
        k = _kernel()
        indptr, cols = np.array([0, 1], np.int32), np.zeros(1, np.int32)
        k["transpose"](indptr, cols, 1, np.empty(2, np.int32), np.empty(1, np.int32))
        x = np.zeros((1, 1), np.float32)
        k["sweep"](indptr, cols, np.zeros(0, np.float32), np.float32(1), np.float32(0), np.ones(1, np.float32),
                   x, x.copy(), x, 1, np.array([0, 1], np.int64), np.zeros(1), False, 0, 1)
    except Exception:  # reported by kernel_applies, which loads again in the caller's thread
        log.debug("warming up the iALS kernel failed", exc_info=True)


@dataclass(frozen=True)
class FusedSide:
    """One side's pairs for :func:`fused_half_sweep`.

    Attributes
    ----------
    indptr : numpy.ndarray of int, shape (n + 1,)
    cols : numpy.ndarray of int, shape (nnz,)
        Columns index the other side; shared with the caller's arrays where possible.
    conf : numpy.ndarray of float32, shape (nnz,) or (0,)
        Confidences in CSR order; empty when every pair has confidence ``c0``.
    c0 : float
        The common confidence, or 0 when ``conf`` holds them.
    lam : torch.Tensor, shape (n, 1)
        Ridge penalty of each row (the shape :func:`~torchmf.solvers.ials.ials_loss` reads).
    bounds : numpy.ndarray of int64, shape (C + 1,)
        Row bounds of the kernel's fixed chunks.
    """

    indptr: np.ndarray
    cols: np.ndarray
    conf: np.ndarray
    c0: float
    lam: torch.Tensor
    bounds: np.ndarray


def _bounds(indptr: np.ndarray, k: int) -> np.ndarray:
    """Chunk bounds of about equal work (pairs plus ``k`` per row for the Gramian products)."""
    n = len(indptr) - 1
    work = np.asarray(indptr, dtype=np.int64) + k * np.arange(n + 1, dtype=np.int64)
    chunks = max(_MIN_CHUNKS, int(work[-1] // _CHUNK_PAIRS))
    cuts = np.searchsorted(work, np.linspace(0, work[-1], chunks + 1)[1:-1])
    return np.unique(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def _side(indptr: np.ndarray, cols: np.ndarray, conf: np.ndarray | None, c0: float, n_other: int, k: int,
          s: IALSSettings) -> FusedSide:
    counts = torch.as_tensor(np.diff(indptr)).to(torch.float32)
    lam = ials_penalty(counts, n_other, s).unsqueeze(1)
    empty = np.zeros(0, np.float32)
    conf = empty if conf is None else np.asarray(conf).astype(np.float32, copy=False)
    return FusedSide(indptr, cols, conf, c0, lam, _bounds(indptr, k))


def fused_sides(indptr: np.ndarray, items: np.ndarray, values: np.ndarray, n_items: int, k: int,
                s: IALSSettings, conf_map: Any) -> tuple[FusedSide, FusedSide]:
    """Both sides from the data's CSR arrays (sorted by user, then item).

    Parameters
    ----------
    indptr : numpy.ndarray of int, shape (n_users + 1,)
    items : numpy.ndarray of int, shape (nnz,)
    values : numpy.ndarray, shape (nnz,)
    n_items, k : int
    s : IALSSettings
    conf_map : callable
        Values to confidences (:func:`~torchmf.solvers.ials.confidence` with the fit's settings).

    Returns
    -------
    user_side, item_side : FusedSide
    """
    n_users = len(indptr) - 1
    # one set of argument types for every call (numba loads, or compiles, each kernel once): int32
    # wherever the counts fit, so a from_csr matrix's int32 arrays are shared, not copied
    index = _index_dtype(len(items), n_users, n_items)
    indptr, items = np.asarray(indptr).astype(index, copy=False), np.asarray(items).astype(index, copy=False)
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (1.0, 1.0)
    c0 = float(conf_map(np.array([lo]))[0])
    if lo == hi and c0 > 0:  # one confidence for every pair (binary data): no per-pair array on either side
        t_indptr, t_users = np.empty(n_items + 1, index), np.empty(len(items), index)
        _kernel()["transpose"](indptr, items, n_items, t_indptr, t_users)
        return _side(indptr, items, None, c0, n_items, k, s), _side(t_indptr, t_users, None, c0, n_users, k, s)
    conf = conf_map(values)
    t_indptr, t_users, order = csr_transpose(indptr, items, n_items)
    t_conf = conf[order]
    del order
    t_indptr, t_users = t_indptr.astype(index, copy=False), t_users.astype(index, copy=False)
    return _side(indptr, items, conf, 0.0, n_items, k, s), _side(t_indptr, t_users, t_conf, 0.0, n_users, k, s)


def _index_dtype(nnz: int, n_users: int, n_items: int) -> type:
    return np.int32 if max(nnz, n_users, n_items) < 2**31 else np.int64


def fused_half_sweep(side: FusedSide, factors: torch.Tensor, other: torch.Tensor, s: IALSSettings,
                     with_loss: bool = False) -> float:
    """Re-solve every non-empty row of ``factors`` in place (``s.cg_steps`` CG steps), the other side fixed.

    Returns the observed part of the loss at the new factors, ``sum c (1 - y)^2 - a0 y^2``
    (as :func:`~torchmf.solvers.ials.ials_half_sweep`), with ``with_loss``; else 0.0.
    """
    sweep = _kernel()["sweep"]
    gram = (other.T @ other).mul_(s.unobserved_weight)
    n_chunks = len(side.bounds) - 1
    partial = np.zeros(n_chunks, np.float64)
    args = (side.indptr, side.cols, side.conf, np.float32(side.c0), np.float32(s.unobserved_weight),
            side.lam.numpy().reshape(-1), gram.numpy(), other.detach().numpy(), factors.detach().numpy(),
            int(s.cg_steps), side.bounds, partial, bool(with_loss))
    threads = max(1, min(torch.get_num_threads(), n_chunks))
    if threads == 1:
        sweep(*args, 0, n_chunks)
    else:
        step = max(1, n_chunks // (threads * _GROUPS_PER_THREAD))
        starts = iter(range(0, n_chunks, step))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    first = next(starts, None)
                if first is None:
                    return
                sweep(*args, first, min(n_chunks, first + step))

        run_on_threads([work] * threads, "torchmf-ials")
    return float(partial.sum()) if with_loss else 0.0
