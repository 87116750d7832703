"""Mapping between users' own ids (any hashable) and contiguous indices."""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from torchmf.errors import DataError, UnknownIdError

__all__ = ["INT_PATTERN", "IdMap"]

# how an integer id is written when read from text: no sign but "-", no leading zeros
INT_PATTERN = r"-?(?:0|[1-9][0-9]*)"


class IdMap:
    """Bijection between raw ids and the indices ``0 .. len(self) - 1``.

    Raw ids may be any hashable value (``str``, ``int``, ...). Index ``i`` is the
    position of the id in the order given at construction, so the mapping is
    deterministic. Vectorised look-ups go through a :class:`pandas.Index`, which
    keeps tens of millions of ids fast.

    Parameters
    ----------
    ids : sequence of hashable, shape (n,)
        Distinct raw ids, in index order.
    kind : str
        ``"user"`` or ``"item"``; used in error messages only.
    """

    def __init__(self, ids: Sequence[Hashable] | np.ndarray | pd.Index, kind: str = "id") -> None:
        index = ids if isinstance(ids, pd.Index) else pd.Index(_as_1d(ids))
        if not index.is_unique:
            dup = index[index.duplicated()][0]
            raise DataError(f"{kind} ids must be distinct; {dup!r} appears more than once")
        self._index = index
        self.kind = kind

    # ------------------------------------------------------------------ building
    @classmethod
    def encode(cls, raw: Iterable[Hashable] | np.ndarray, kind: str = "id") -> tuple[IdMap, np.ndarray]:
        """Build a map from raw ids in order of first appearance and encode them.

        Parameters
        ----------
        raw : array-like, shape (n,)
            Raw ids, possibly repeated.
        kind : str
            ``"user"`` or ``"item"``.

        Returns
        -------
        idmap : IdMap
        codes : numpy.ndarray of int64, shape (n,)
            ``idmap.ids[codes[j]] == raw[j]``.
        """
        arr = _as_1d(raw)
        if len(arr) and pd.isna(arr).any():
            row = int(np.flatnonzero(pd.isna(arr))[0])
            raise DataError(f"missing {kind} id at position {row}")
        codes, uniques = pd.factorize(arr, sort=False)
        return cls(pd.Index(uniques), kind), codes.astype(np.int64, copy=False)

    # ------------------------------------------------------------------ look-ups
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, raw: object) -> bool:
        try:
            return raw in self._index
        except TypeError:  # unhashable
            return False

    def __iter__(self):
        return iter(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._index.equals(other._index)

    def __repr__(self) -> str:
        return f"IdMap({self.kind}, n={len(self)})"

    @property
    def ids(self) -> list[Any]:
        """Raw ids in index order, as plain Python objects."""
        return self._index.tolist()

    def index(self, raw: Hashable) -> int:
        """Index of one raw id; raises :class:`UnknownIdError` when absent."""
        try:
            loc = self._index.get_loc(raw)
        except (KeyError, TypeError):
            raise self._unknown(raw) from None
        if not isinstance(loc, (int, np.integer)):  # pragma: no cover - unique index
            raise self._unknown(raw)
        return int(loc)

    def indices(self, raw: Iterable[Hashable] | np.ndarray, missing: str = "error") -> np.ndarray:
        """Indices of many raw ids.

        Parameters
        ----------
        raw : array-like, shape (n,)
        missing : {"error", "ignore"}
            ``"error"`` raises :class:`UnknownIdError` for the first unknown id;
            ``"ignore"`` returns -1 in its place.

        Returns
        -------
        numpy.ndarray of int64, shape (n,)
        """
        arr = _as_1d(raw)
        if len(arr) == 0:
            return np.empty(0, dtype=np.int64)
        try:
            codes = self._index.get_indexer(arr)
        except TypeError:  # mixed types pandas cannot compare
            codes = np.array([self._index.get_loc(r) if r in self._index else -1 for r in arr])
        codes = np.asarray(codes, dtype=np.int64)
        if missing == "error" and (codes < 0).any():
            raise self._unknown(arr[int(np.flatnonzero(codes < 0)[0])])
        return codes

    def raw(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Raw ids for an array of indices, shape preserved."""
        return self._index.to_numpy()[np.asarray(indices, dtype=np.int64)]

    def resolve(self, text: Hashable) -> Hashable:
        """Find the raw id meant by ``text``, tolerating str/number mismatches.

        A command line gives every id as a string, while a reader may have parsed
        the column as integers; ``resolve("7")`` returns ``7`` when the map holds
        the integer 7 (and not the string "7"). Unknown ids raise
        :class:`UnknownIdError`.
        """
        if text in self:
            return text
        candidates: list[Hashable] = []
        if isinstance(text, str):
            # only canonical integers, as the readers parse them: "007" is never 7
            if re.fullmatch(INT_PATTERN, text.strip()):
                candidates.append(int(text))
        else:
            candidates.append(str(text))
        for cand in candidates:
            if cand in self:
                return self.ids[self.index(cand)]
        raise UnknownIdError(self.kind, text)

    def _unknown(self, raw: Any) -> UnknownIdError:
        """UnknownIdError for ``raw``, hinting at the id meant when only its type is off:
        ``unknown user id '1' (ids are int; did you mean 1?)``."""
        if isinstance(raw, np.generic):
            raw = raw.item()
        err = UnknownIdError(self.kind, raw)
        try:
            meant = self.resolve(raw)
        except (UnknownIdError, TypeError, ValueError):
            return err
        kind = type(meant.item() if isinstance(meant, np.generic) else meant).__name__
        err.args = (f"{err.args[0]} (ids are {kind}; did you mean {meant!r}?)",)
        return err

    # ------------------------------------------------------------------ editing
    def extend(self, raw_ids: Iterable[Hashable]) -> IdMap:
        """A new map with ``raw_ids`` appended (those already present are skipped)."""
        new = [r for r in dict.fromkeys(_as_1d(raw_ids).tolist()) if r not in self]
        if not new:
            return self
        return IdMap(self._index.append(pd.Index(new, dtype=object)), self.kind)

    def subset(self, keep: np.ndarray) -> IdMap:
        """A new map of the ids at ``keep`` (indices), in that order."""
        return IdMap(self._index[np.asarray(keep, dtype=np.int64)], self.kind)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> list[Any]:
        """Ids as a JSON-serialisable list; only str, int and float ids qualify."""
        out = []
        for r in self.ids:
            if isinstance(r, (np.integer,)):
                r = int(r)
            elif isinstance(r, np.floating):
                r = float(r)
            if isinstance(r, bool) or not isinstance(r, (str, int, float)):
                raise DataError(
                    f"{self.kind} id {r!r} of type {type(r).__name__} cannot be saved; "
                    "use str or int ids"
                )
            out.append(r)
        return out

    @classmethod
    def from_json(cls, ids: list[Any], kind: str) -> IdMap:
        """Inverse of :meth:`to_json`."""
        return cls(pd.Index(ids, dtype=_index_dtype(ids)), kind)


def _index_dtype(ids: list[Any]) -> Any:
    if ids and all(isinstance(r, int) and not isinstance(r, bool) for r in ids):
        return np.int64
    return object


def _as_1d(raw: Iterable[Hashable] | np.ndarray) -> np.ndarray:
    if isinstance(raw, (pd.Series, pd.Index)):
        arr = raw.to_numpy()
    elif isinstance(raw, np.ndarray):
        arr = raw
    else:
        raw_list = list(raw)
        arr = np.empty(len(raw_list), dtype=object)
        arr[:] = raw_list
        if raw_list and all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in raw_list):
            arr = arr.astype(np.int64)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr
