"""One device policy: where tensors live and which memory layout each device prefers.

Every choice that depends on the device is made here, so fit, load, the
solvers and retrieval agree: ``"auto"`` means CUDA when present, else CPU, for
fitting *and* loading; the CPU prefers cache-sized CSR kernels where they win
and the GPU large gathered blocks (``benchmarks/ials_layouts.py`` measured the
thresholds below on the CPU).
"""

from __future__ import annotations

import os

import torch

__all__ = ["EXACT_BLOCK_BYTES", "MIN_CHUNK_ENTRIES", "check_memory", "chunk_bytes", "prefer_csr", "resolve_device"]

# The CSR layout reads the other side's factors at random and pays a little
# per row: it wins while those factors stay in cache and rows are not too
# short (benchmarks/ials_layouts.py measures both layouts).
_CSR_MAX_OTHER_BYTES = 8 << 20
_CSR_MIN_MEAN_DEGREE = 32
# Where the CSR layout loses, gathered chunks of about chunk_bytes() are
# streamed through instead: on the CPU a few MB keep a chunk in cache, on a
# GPU large chunks mean few kernel launches.
_CHUNK_BYTES_CPU = 16 << 20
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
    fits in 8 MB and rows hold 32 pairs or more on average; GPUs always gather.
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
