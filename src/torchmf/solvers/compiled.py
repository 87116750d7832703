"""What every compiled (numba) kernel wrapper needs: whether the kernels can run here, and threads to run them on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

__all__ = ["compiled_available", "run_on_threads"]

log = logging.getLogger(__name__)


def compiled_available(load: Callable[[], object], what: str, fallback: str) -> bool:
    """Call ``load`` (import numba and the kernels); on failure warn once per call and return False.

    Parameters
    ----------
    load : callable
        Imports the kernel module (numba compiles or loads its cached machine code later).
    what : str
        The kernel, for the warning ("iALS", "pairwise").
    fallback : str
        What runs instead, for the warning.
    """
    try:
        load()
    except (ImportError, RuntimeError, OSError) as e:  # pragma: no cover - numba is a core dependency
        # RuntimeError: numba finds no writable cache folder (read-only install, no writable home)
        log.warning("the compiled %s kernel is unavailable (%s); %s", what, e, fallback)
        return False
    return True


def run_on_threads(work: Sequence[Callable[[], object]], name: str) -> None:
    """Run ``work[0]`` on this thread and the rest each on a new thread (GIL-releasing kernels), then join.

    Threads are made per call (~0.1 ms each) rather than kept in a pool: a process forked later
    (multiprocessing, data loaders) would inherit a pool without its threads.
    """
    helpers = [threading.Thread(target=w, name=name, daemon=True) for w in work[1:]]
    for h in helpers:
        h.start()
    if work:
        work[0]()
    for h in helpers:
        h.join()
