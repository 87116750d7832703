"""Collectives the distributed fit needs, over ``torch.distributed`` (gloo on CPU).

Variable-length gathers (gloo wants equal sizes: lengths first, then padded
blocks), the row exchange that sends every interaction to the rank owning its
user or item block (one ``all_to_all_single`` per column), sums, and
:func:`agree`, which turns one rank's exception into the same exception on
every rank so bad input on one rank stops them all with that rank's message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from torchmf.errors import DataError, ModelFileError, TorchMFError, TrainingError

__all__ = [
    "CommStats", "RankFailedError", "agree", "all_gather_rows", "all_sum", "exchange", "gather_ids", "rank", "stats",
    "world",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class CommStats:
    """Bytes this rank has sent through the helpers below (for the benchmark)."""

    def __init__(self) -> None:
        self.sent = 0

    def add(self, n: int) -> None:
        self.sent += int(n)


stats = CommStats()


class RankFailedError(TrainingError):
    """Another rank failed; carries that rank's number and message.

    Attributes
    ----------
    rank : int
        The rank that failed first.
    """

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank = rank


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_sum(values: Sequence[float] | np.ndarray, dtype: torch.dtype = torch.float64, op: str = "sum"
            ) -> np.ndarray:
    """Element-wise sum (or ``op`` "min", "max") over ranks of a small vector."""
    t = torch.as_tensor(np.asarray(values), dtype=dtype).reshape(-1).clone()
    if world() > 1:
        stats.add(t.numel() * t.element_size() * (world() - 1))
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t.numpy()


def all_gather_rows(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (same trailing shape, any number of rows), in rank order."""
    if world() == 1:
        return [t]
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.int64))
    longest = max(1, max(int(x) for x in sizes))  # gloo rejects empty tensors
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world())]
    stats.add(padded.numel() * padded.element_size() * (world() - 1))
    dist.all_gather(out, padded)
    return [out[r][: int(sizes[r])] for r in range(world())]


def exchange(columns: Sequence[np.ndarray], dest: np.ndarray) -> list[np.ndarray]:
    """Send row ``j`` of every column to rank ``dest[j]``; returns the rows this rank received.

    Parameters
    ----------
    columns : sequence of numpy.ndarray, each shape (n,)
        Numeric columns of the same rows. A list is emptied (entries set to
        None) as its columns are sent, so each can be freed as soon as it is.
    dest : numpy.ndarray of int, shape (n,)
        Owner rank of each row.

    Returns
    -------
    list of numpy.ndarray
        Received rows, grouped by sender rank (rank 0's first), each sender's
        rows in their original order.
    """
    if world() == 1:
        return [np.asarray(c) for c in columns]
    order = np.argsort(dest, kind="stable")
    send_counts = np.bincount(dest, minlength=world()).astype(np.int64)
    recv = torch.empty(world(), dtype=torch.int64)  # how many rows each rank sends this one
    dist.all_to_all_single(recv, torch.from_numpy(send_counts))
    recv_counts = recv.tolist()
    out = []
    for j, col in enumerate(columns):
        src = torch.from_numpy(np.ascontiguousarray(np.asarray(col)[order]))
        if isinstance(columns, list):  # drop our reference: a caller that gave up its own frees the column now
            columns[j] = None
        del col
        got = src.new_empty(sum(recv_counts))
        stats.add((src.numel() - int(send_counts[rank()])) * src.element_size())
        dist.all_to_all_single(got, src, recv_counts, send_counts.tolist())
        out.append(got.numpy())
    return out


def _encode(ids: np.ndarray) -> torch.Tensor:
    """Raw ids as one uint8 tensor: int64 bytes, or UTF-8 strings each ending in a NUL byte."""
    if len(ids) == 0:
        return torch.empty(0, dtype=torch.uint8)
    if ids.dtype.kind in "iu":
        return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64).view(np.uint8))
    text = "\0".join(str(x) for x in ids) + ("\0" if len(ids) else "")
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def _decode(blob: torch.Tensor, as_int: bool) -> np.ndarray:
    raw = blob.numpy().tobytes()
    if as_int:
        return np.frombuffer(raw, dtype=np.int64).copy()
    parts = raw.decode("utf-8").split("\0")[:-1]
    arr = np.empty(len(parts), dtype=object)
    arr[:] = parts
    return arr


def gather_ids(local: np.ndarray) -> np.ndarray:
    """Every rank's raw ids concatenated in rank order, repeats dropped (first appearance kept).

    Integer ids stay int64 while every rank holds integers; if any rank holds
    text ids, all become text (``str(7) == "7"``), as reading the
    concatenated file at once would have parsed that column.
    """
    local = pd.unique(local) if len(local) else local
    is_int = local.dtype.kind in "iu" or (len(local) == 0 and local.dtype == object)
    all_int = bool(all_sum([0.0 if is_int else 1.0])[0] == 0)
    if not all_int and local.dtype.kind in "iu":
        local = local.astype(str).astype(object)
    if all_int and local.dtype == object:  # an empty rank
        local = np.empty(0, dtype=np.int64)
    blobs = all_gather_rows(_encode(local))
    merged = np.concatenate([_decode(b, all_int) for b in blobs])
    return pd.unique(merged)


_TYPES: dict[str, type[TorchMFError]] = {"DataError": DataError, "ModelFileError": ModelFileError}


def agree(step: Callable[[], T], what: str) -> T:
    """Run ``step`` on every rank; if it fails anywhere, fail everywhere with the first failing rank's message.

    The failing rank re-raises its own exception; the others raise the same
    torchmf type (:class:`DataError`, :class:`ModelFileError`) or
    :class:`RankFailedError`, with ``"rank R: ..."`` in front of the message.

    Parameters
    ----------
    step : callable
        No arguments; its result is returned.
    what : str
        What the step does, for the log.
    """
    error: BaseException | None = None
    result = None
    try:
        result = step()
    except (TorchMFError, ValueError, OSError) as exc:
        error = exc
    if world() == 1:
        if error is not None:
            raise error
        return result  # type: ignore[return-value]
    note = b"" if error is None else f"{type(error).__name__}\0{error}".encode()
    notes = all_gather_rows(torch.frombuffer(bytearray(note), dtype=torch.uint8) if note
                            else torch.empty(0, dtype=torch.uint8))
    failed = [r for r, n in enumerate(notes) if n.numel()]
    if not failed:
        return result  # type: ignore[return-value]
    if error is not None:
        raise error
    first = failed[0]
    kind, message = notes[first].numpy().tobytes().decode(errors="replace").split("\0", 1)
    log.debug("%s failed on rank %d", what, first)
    exc_type = _TYPES.get(kind)
    if exc_type is not None:
        raise exc_type(f"rank {first}: {message}")
    raise RankFailedError(first, f"{kind}: {message}")
