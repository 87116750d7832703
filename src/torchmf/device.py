"""One device policy: where tensors live and which memory layout each device prefers.

Every choice that depends on the device is made here, so fit, load, the
solvers and retrieval agree: ``"auto"`` means CUDA when present, else CPU, for
fitting *and* loading; the CPU prefers cache-sized CSR kernels where they win
and the GPU large gathered blocks (``benchmarks/ials_layouts.py`` measured the
thresholds below on the CPU).

It also holds the CPU thread policy (:func:`thread_policy`): how many of
torch's intra-op threads a fit uses, chosen from the cores this process may
run on, how many of them other processes keep busy, and how much work each
kernel call does.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from types import TracebackType

import torch

__all__ = [
    "EXACT_BLOCK_BYTES",
    "MIN_CHUNK_ENTRIES",
    "MIN_WORK_PER_THREAD",
    "ThreadPolicy",
    "available_cores",
    "busy_cores",
    "check_memory",
    "chunk_bytes",
    "cpu_has_bf16_dot",
    "fit_threads",
    "prefer_csr",
    "resolve_device",
    "thread_policy",
]

log = logging.getLogger(__name__)

# The CSR layout reads the other side's factors at random and pays a little
# per row: it wins while those factors stay in cache and rows are not too
# short (benchmarks/ials_layouts.py measures both layouts). At 5 M pairs (100k x 20k,
# 64 factors: a 5 MB item table) the user half took 0.54-0.60 CPU s gathered in 4 MB
# chunks against 0.85-1.07 on CSR (1 thread, shared machine): 4 MB, not 8.
_CSR_MAX_OTHER_BYTES = 4 << 20
_CSR_MIN_MEAN_DEGREE = 32
# Where the CSR layout loses, gathered chunks of about chunk_bytes() are
# streamed through instead: on the CPU a few MB keep a chunk in cache (5 M pairs, item side, 1 thread:
# 2-8 MB chunks took 30-40 % less CPU than 16 MB), on a GPU large chunks mean few kernel launches.
_CHUNK_BYTES_CPU = 4 << 20
_CHUNK_BYTES_CUDA = 512 << 20
MIN_CHUNK_ENTRIES = 4096
# exact (Cholesky) solves materialise a k x k matrix per row: bound that block
EXACT_BLOCK_BYTES = 64 << 20


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for a user's device string.

    Parameters
    ----------
    name : str or torch.device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    ValueError
        For a string torch does not know, or CUDA asked for where none is available.
    """
    if isinstance(name, torch.device):
        dev = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device='auto' or 'cpu'")
    return dev


def prefer_csr(nnz: int, n_nonempty_rows: int, n_other: int, width: int, itemsize: int, device: torch.device) -> bool:
    """Whether the CSR layout should beat gathered buckets for one side.

    True on the CPU when the other side's ``(n_other, width)`` factor table
    fits in 4 MB and rows hold 32 pairs or more on average; GPUs always gather.
    """
    small = n_other * width * itemsize <= _CSR_MAX_OTHER_BYTES
    long_rows = nnz >= _CSR_MIN_MEAN_DEGREE * max(1, n_nonempty_rows)
    return device.type == "cpu" and small and long_rows


def chunk_bytes(device: torch.device) -> int:
    """Bytes of gathered factors per chunk on the gathered layout."""
    return _CHUNK_BYTES_CUDA if device.type == "cuda" else _CHUNK_BYTES_CPU


def check_memory(nbytes: int, device: torch.device, what: str) -> None:
    """Refuse an allocation of ``nbytes`` that cannot fit, before trying it.

    Compares with the device's total memory (CUDA) or the machine's physical
    memory (CPU), so a typo such as ``factors=10**9`` is a clear error instead
    of an out-of-memory crash minutes later.

    Raises
    ------
    ValueError
        Naming ``what`` and the sizes.
    """
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
            return
    if nbytes > total:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.1f} GiB, more than the {total / 2**30:.1f} GiB of memory on {device}"
        )


# ---------------------------------------------------------------------- threads
# Elements one kernel call must touch before a second thread pays for the
# fork/join of a parallel region (ML-100k measured in benchmarks/busy_cpu.py:
# SGD's 60k-element batch ops gain 5-8% from two idle cores, ALS's 4M-element
# CSR products 1.6x). Below this a fit runs serial kernels.
MIN_WORK_PER_THREAD = 1 << 18
# how often (seconds) a running fit re-reads the machine's load
_REFRESH_S = 0.25


@functools.cache
def cpu_has_bf16_dot() -> bool:
    """Whether this CPU multiplies bfloat16 natively (avx512_bf16 or AMX), read from /proc/cpuinfo.

    There a bfloat16 matrix product runs ~3.5x faster than a float32 one (2-core AMD EPYC VM:
    180 against 52 GFLOP/s, 8192 x 64 times 64 x 20,000); elsewhere oneDNN emulates it and it
    may be slower, so callers keep float32. False off Linux (no cpuinfo to read).
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def busy_cores() -> int:
    """Runnable threads of *other* processes right now, scaled to this process's cores.

    Reads the kernel's instantaneous count of runnable tasks
    (``/proc/loadavg``) and subtracts this process's own running threads
    (an OpenMP worker may still be spinning). Where the process may use only
    some of the machine's cores (affinity, containers) the count is scaled
    by that share. 0 where ``/proc`` is not available.
    """
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:  # the thread exited meanwhile
                continue
            own += stat[stat.rindex(")") + 2] == "R"
    except (OSError, ValueError, IndexError):
        return 0
    others = max(0, running - max(own, 1))
    online = os.cpu_count() or 1
    mine = available_cores()
    return others if online <= mine else round(others * mine / online)


def fit_threads(work: int, limit: int | None = None, busy: int | None = None) -> int:
    """Intra-op threads for kernels that each touch about ``work`` elements.

    ``min(limit, free cores, work / MIN_WORK_PER_THREAD)``, at least 1: a
    thread per core that no other process is running on, and none that the
    work is too small to keep busy. OpenMP's barrier makes every parallel
    region wait for its slowest thread, so one thread descheduled behind
    another process (or spinning against it) stalls the whole fit for a
    scheduler time slice per kernel call; fewer threads degrade gracefully.

    Parameters
    ----------
    work : int
        Elements (e.g. ``batch_size * factors`` or ``nnz * factors``) per kernel call.
    limit : int, optional
        Upper bound; default ``torch.get_num_threads()`` (so ``OMP_NUM_THREADS``
        and the caller's ``torch.set_num_threads`` are honoured, never raised).
    busy : int, optional
        Cores other processes hold; default :func:`busy_cores`.
    """
    limit = torch.get_num_threads() if limit is None else limit
    cap = min(limit, work // MIN_WORK_PER_THREAD)
    if cap <= 1:
        # one thread whatever the load: skip reading /proc (~0.3 ms), which the service's small
        # top-k batches and visitor fold-ins would otherwise pay on every call
        return 1
    busy = busy_cores() if busy is None else busy
    return max(1, min(cap, available_cores() - busy))


class ThreadPolicy:
    """Context manager: torch's intra-op threads set by :func:`fit_threads` for a fit, restored on exit.

    :meth:`refresh` (called once an epoch) re-reads the load at most every
    0.25 s, so a fit adapts when other processes start or stop. Only the
    thread count is changed, and it is set back when the block exits (also on
    error). Results do not depend on it: every kernel a fit runs gives the
    same numbers with one thread or several (``tests/test_threads.py``).
    torch's thread count is process-wide: fits running at once in several
    Python threads share it, and the last to exit restores its own start value.

    Parameters
    ----------
    work : int
        See :func:`fit_threads`.
    device : torch.device
        Only CPU fits are managed; on a GPU this does nothing, nor where the
        environment variable ``TORCHMF_THREAD_POLICY=off`` is set (then fits
        use ``torch.get_num_threads()`` threads throughout).
    """

    def __init__(self, work: int, device: torch.device) -> None:
        self.work = work
        self.active = device.type == "cpu" and os.environ.get("TORCHMF_THREAD_POLICY", "auto") != "off"
        self.limit = torch.get_num_threads()
        self.threads = self.limit
        self._checked = 0.0

    def __enter__(self) -> ThreadPolicy:
        self.limit = torch.get_num_threads()
        self.threads = self.limit
        self.refresh(force=True)
        return self

    def refresh(self, force: bool = False) -> int:
        """Re-apply :func:`fit_threads` (rate-limited unless ``force``); returns the thread count."""
        now = time.monotonic()
        if not self.active or (not force and now - self._checked < _REFRESH_S):
            return self.threads
        self._checked = now
        threads = fit_threads(self.work, self.limit)
        if threads != self.threads:
            log.debug("intra-op threads %d -> %d (work %d per call)", self.threads, threads, self.work)
            torch.set_num_threads(threads)
            self.threads = threads
        return threads

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.active and torch.get_num_threads() != self.limit:
            torch.set_num_threads(self.limit)
        self.threads = self.limit


def thread_policy(work: int, device: torch.device) -> ThreadPolicy:
    """The :class:`ThreadPolicy` for a fit whose kernels each touch about ``work`` elements."""
    return ThreadPolicy(work, device)
