"""Sharded input: part files read by their rank, global id maps, rows sent to their blocks.

Input is one ratings file or a folder of part files (CSV/TSV/Parquet, as Spark
and data lakes write them: ``part-00000-....csv``; names starting with ``_`` or
``.`` and ``.crc`` files are skipped). Parts are dealt to ranks in name order,
contiguous runs of about equal bytes, so no rank reads what it does not own
(one file: rank 0 reads it; split big inputs into at least ``world_size``
parts). Ids are numbered globally in order of first appearance across the
parts in name order, exactly as reading their concatenation in one process
would number them, and every rank holds the same maps. Each rank then keeps
the interactions of its user block (for the user half-sweeps) and of its item
block (for the item half-sweeps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchmf.data.idmap import IdMap
from torchmf.data.interactions import Interactions
from torchmf.data.readers import _find, _parse_ids, read_table
from torchmf.distributed import comm
from torchmf.errors import DataError

__all__ = ["ReadOptions", "Shard", "block_bounds", "load_shard", "part_files"]

_SUFFIXES = {".csv", ".tsv", ".txt", ".dat", ".data", ".parquet", ".pq", ""}


@dataclass
class ReadOptions:
    """How to read each part (the options of :func:`torchmf.read_ratings`)."""

    sep: str | None = None
    columns: list[str] | None = None
    header: Any = "infer"
    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    timestamp_col: str | None = None
    implicit: bool = False
    duplicates: str = "error"


@dataclass
class Shard:
    """One rank's part of the data, indexed by the global id maps.

    Attributes
    ----------
    user_map, item_map : IdMap
        Global maps, the same on every rank.
    user_bounds, item_bounds : numpy.ndarray of int64, shape (world + 1,)
        Rank ``r`` owns users ``user_bounds[r]:user_bounds[r + 1]`` (items likewise).
    by_user : tuple of numpy.ndarray (users, items, values)
        Every interaction of this rank's users (global indices).
    by_item : tuple of numpy.ndarray (users, items, values)
        Every interaction of this rank's items.
    n_total : int
        Interactions over all ranks.
    value_sum : float
    rating_range : (float, float)
    implicit : bool
    """

    user_map: IdMap
    item_map: IdMap
    user_bounds: np.ndarray
    item_bounds: np.ndarray
    by_user: tuple[np.ndarray, np.ndarray, np.ndarray]
    by_item: tuple[np.ndarray, np.ndarray, np.ndarray]
    n_total: int
    value_sum: float
    rating_range: tuple[float, float]
    implicit: bool

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    def users_of(self, r: int) -> tuple[int, int]:
        return int(self.user_bounds[r]), int(self.user_bounds[r + 1])

    def items_of(self, r: int) -> tuple[int, int]:
        return int(self.item_bounds[r]), int(self.item_bounds[r + 1])


def part_files(path: str | os.PathLike) -> list[Path]:
    """The ratings files at ``path``: itself, or a folder's part files in name order."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_file():
        return [p]
    parts = sorted(
        f for f in p.iterdir()
        if f.is_file() and not f.name.startswith(("_", ".")) and f.suffix.lower() in _SUFFIXES
        and not f.name.endswith(".crc")
    )
    if not parts:
        raise DataError(f"{p}: no part files (expected .csv, .tsv or .parquet files)")
    return parts


def assign_parts(sizes: list[int], world: int) -> list[list[int]]:
    """Deal parts (in order) to ranks as contiguous runs of about equal total size."""
    total = max(1, sum(sizes))
    out: list[list[int]] = [[] for _ in range(world)]
    before = 0
    for j, s in enumerate(sizes):
        # the rank whose share holds the middle of this part
        r = min(world - 1, int(world * (before + s / 2) / total))
        out[r].append(j)
        before += s
    return out


def block_bounds(degrees: np.ndarray, world: int) -> np.ndarray:
    """Contiguous blocks of ids holding about equal numbers of interactions.

    Parameters
    ----------
    degrees : numpy.ndarray of int, shape (n,)
        Interactions of each id (over all ranks).
    world : int

    Returns
    -------
    numpy.ndarray of int64, shape (world + 1,)
        Rank ``r`` owns ids ``bounds[r]:bounds[r + 1]``.
    """
    cum = np.cumsum(degrees, dtype=np.int64)
    total = int(cum[-1]) if len(cum) else 0
    targets = total * np.arange(1, world, dtype=np.float64) / world
    inner = np.searchsorted(cum, targets, side="left") + 1
    return np.concatenate([[0], np.minimum(inner, len(degrees)), [len(degrees)]]).astype(np.int64)


def _read_part(path: Path, opts: ReadOptions) -> pd.DataFrame | None:
    """One part as columns user, item, value[, timestamp] of raw ids (None when it has no rows)."""
    df = read_table(path, sep=opts.sep, columns=opts.columns, header=opts.header) if path.stat().st_size else None
    if df is None or len(df) == 0:
        return None
    names = [str(c) for c in df.columns]
    user_col = opts.user_col or _find(names, "user", required=True, path=path)
    item_col = opts.item_col or _find(names, "item", required=True, path=path)
    rating_col = None if opts.implicit else opts.rating_col or _find(names, "rating", required=False, path=path)
    ts_col = opts.timestamp_col or _find(names, "timestamp", required=False, path=path)
    for col in (user_col, item_col):
        if col in df.columns:
            df[col] = _parse_ids(df[col])
    # the single-process reader's validation and within-part duplicates policy
    part = Interactions.from_pandas(df, user_col=user_col, item_col=item_col, rating_col=rating_col,
                                    timestamp_col=ts_col, duplicates=opts.duplicates, source=str(path))
    out = pd.DataFrame({"user": part.user_map.raw(part.users), "item": part.item_map.raw(part.items),
                        "value": part.values})
    out.attrs["implicit"] = part.implicit
    if part.timestamps is not None:
        out["timestamp"] = part.timestamps
    return out


def _read_mine(path: str | os.PathLike, opts: ReadOptions) -> tuple[pd.DataFrame, list[str]]:
    parts = part_files(path)
    mine = assign_parts([f.stat().st_size for f in parts], comm.world())[comm.rank()]
    frames, kinds, names = [], set(), []
    for j in mine:
        df = _read_part(parts[j], opts)
        if df is None:
            continue
        df["seq"] = np.arange(len(df), dtype=np.int64) + (j << 40)  # global row order: part, then row
        frames.append(df)
        kinds.add(df.attrs["implicit"])
        names.append(str(parts[j]))
    if len(kinds) > 1:
        raise DataError(f"{path}: some part files have a rating column and others do not ({', '.join(names)})")
    if not frames:
        df = pd.DataFrame({"user": np.empty(0, np.int64), "item": np.empty(0, np.int64),
                           "value": np.empty(0, np.float32), "seq": np.empty(0, np.int64)})
        df.attrs["implicit"] = None
        return df, names
    df = pd.concat(frames, ignore_index=True)
    df.attrs["implicit"] = kinds.pop()
    return df, names


def _combine_repeats(cols: list[np.ndarray], n_items: int, policy: str, path: str,
                     user_map: IdMap, item_map: IdMap) -> list[np.ndarray]:
    """Repeated pairs from different part files, now on one rank: apply the duplicates policy."""
    users, items, values, seq = cols[:4]
    key = users * n_items + items
    order = np.lexsort((seq, key))
    sk = key[order]
    dup = sk[1:] == sk[:-1]
    if not dup.any():
        return cols
    if policy == "error":
        j = order[int(np.flatnonzero(dup)[0]) + 1]
        u, i = (m.raw([x])[0] for m, x in ((user_map, users[j]), (item_map, items[j])))
        u, i = (x.item() if isinstance(x, np.generic) else x for x in (u, i))
        raise DataError(
            f"{path}: repeated (user, item) pair ({u!r}, {i!r}) "
            "in two part files; pass duplicates='last' or 'sum' to combine repeats (CLI: --duplicates)"
        )
    if policy == "mean":
        raise DataError(f"{path}: repeated (user, item) pairs in different part files cannot be averaged "
                        "exactly; use duplicates='last' or 'sum', or deduplicate the input")
    starts = np.flatnonzero(np.r_[True, ~dup])
    if policy == "sum":
        keep = order[starts]
        values = values.copy()
        values[keep] = np.add.reduceat(values[order].astype(np.float64), starts).astype(np.float32)
    else:  # last: the latest row in part order (timestamps, when present, were used within parts)
        ends = np.r_[starts[1:], len(sk)]
        keep = order[ends - 1]
    keep = np.sort(keep)
    out = [c[keep] for c in cols]
    out[2] = values[keep]
    return out


def load_shard(path: str | os.PathLike, opts: ReadOptions) -> Shard:
    """Read this rank's parts, build the global id maps and exchange rows into blocks.

    Collective: every rank must call it. A read error on any rank raises on
    all of them with that rank's message (:func:`torchmf.distributed.comm.agree`).
    """
    df, _ = comm.agree(lambda: _read_mine(path, opts), "reading part files")
    flags = comm.all_sum([len(df) > 0, df.attrs["implicit"] is True, df.attrs["implicit"] is False])
    if flags[0] == 0:
        raise DataError(f"{path}: no interactions (every part file is empty)")
    if flags[1] and flags[2]:
        raise DataError(f"{path}: some part files have a rating column and others do not")
    implicit = bool(flags[1])
    user_map, users = _global_map(df["user"].to_numpy(), "user")
    item_map, items = _global_map(df["item"].to_numpy(), "item")
    values = df["value"].to_numpy(np.float32)
    seq = df["seq"].to_numpy(np.int64)
    del df
    world = comm.world()
    # one all-reduce of the degree histograms: blocks of equal work, not of equal id counts
    ub = block_bounds(comm.all_sum(np.bincount(users, minlength=len(user_map)), torch.int64), world)
    ib = block_bounds(comm.all_sum(np.bincount(items, minlength=len(item_map)), torch.int64), world)
    owner = np.searchsorted(ub, users, side="right") - 1
    cols = [users, items, values, seq]
    del users, items, values, seq  # exchange frees each column once it has been sent
    got = comm.exchange(cols, owner)
    kept = comm.agree(partial(_combine_repeats, got, len(item_map), opts.duplicates, str(path), user_map, item_map),
                      "combining repeated pairs")
    del got
    by_user = (kept[0], kept[1], kept[2])
    del kept
    owner = np.searchsorted(ib, by_user[1], side="right") - 1
    by_item = tuple(comm.exchange(by_user, owner))
    values = by_user[2]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (np.inf, -np.inf)
    n_total, value_sum = comm.all_sum([len(values), values.sum(dtype=np.float64)])
    lo, hi = float(comm.all_sum([lo], op="min")[0]), float(comm.all_sum([hi], op="max")[0])
    return Shard(user_map, item_map, ub, ib, by_user, by_item,  # type: ignore[arg-type]
                 int(n_total), float(value_sum), (lo, hi), implicit)


def _global_map(raw: np.ndarray, kind: str) -> tuple[IdMap, np.ndarray]:
    """The global map of one id column and this rank's rows' indices in it."""
    ids = comm.gather_ids(raw)
    if ids.dtype == object and raw.dtype.kind in "iu":  # some rank had text ids: all are text
        raw = raw.astype(str).astype(object)
    idmap = IdMap(pd.Index(ids), kind)
    return idmap, idmap.indices(raw)
