"""Whether a compiled (numba) kernel can run here: one check for every kernel wrapper."""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["compiled_available"]

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
