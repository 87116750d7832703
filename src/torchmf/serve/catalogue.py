"""Item titles for the explorer page and responses (``--items ITEMS.csv``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from torchmf.errors import DataError, UnknownIdError

__all__ = ["Catalogue", "ItemSearch", "read_catalogue"]

log = logging.getLogger(__name__)


class Catalogue:
    """Titles of items, keyed by the model's raw item ids.

    Parameters
    ----------
    titles : dict
        Raw item id -> title.
    """

    def __init__(self, titles: dict[Any, str]) -> None:
        self.titles = titles

    def __len__(self) -> int:
        return len(self.titles)

    def title(self, item: Any) -> str | None:
        return self.titles.get(item)


def read_catalogue(
    path: str | os.PathLike, item_map: Any, item_col: str | None = None, title_col: str | None = None
) -> Catalogue:
    """Read item titles (:func:`torchmf.data.catalog.read_titles`) and match them to the model's item ids.

    Parameters
    ----------
    path : path-like
        Delimited file with a header line (e.g. MovieLens ``movies.csv``).
    item_map : IdMap
        The model's item ids; ids are matched like the CLI matches them
        (``"1"`` finds the int id 1). Rows for items the model does not know
        are skipped (and counted in the log).
    item_col, title_col : str, optional
        Column names; recognised by name when omitted.

    Raises
    ------
    DataError
        Missing file or column, or no row naming an item of the model.
    """
    from torchmf.data.catalog import read_titles

    series = read_titles(path, item_col, title_col)
    titles: dict[Any, str] = {}
    unknown = 0
    for key, title in series.items():
        try:
            item = item_map.resolve(key if isinstance(key, str) else str(key))
        except UnknownIdError:
            unknown += 1
            continue
        titles[item] = "" if title is None or (isinstance(title, float) and np.isnan(title)) else str(title)
    if unknown:
        log.warning("%s: %d of %d rows name items the model does not know; skipped", path, unknown, len(series))
    if not titles:
        raise DataError(f"{path}: no row names an item of the model")
    return Catalogue(titles)


class ItemSearch:
    """Case-insensitive search of items by id or title, built once per served model.

    Parameters
    ----------
    item_map : IdMap
        The model's item ids.
    catalogue : Catalogue, optional
        Titles to search and return.
    """

    def __init__(self, item_map: Any, catalogue: Catalogue | None) -> None:
        self.ids = item_map.ids
        self.titles = [None if catalogue is None else catalogue.titles.get(i) for i in self.ids]
        self._id_text = [str(i).lower() for i in self.ids]
        self._haystack = [f"{a} {t.lower()}" if t else a for a, t in zip(self._id_text, self.titles, strict=True)]
        self.has_titles = catalogue is not None

    def find(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` items whose id or title contains ``query``; an exact id match comes first."""
        q = query.strip().lower()
        if not q:
            hits = list(range(min(limit, len(self.ids))))
        else:
            exact = [j for j, t in enumerate(self._id_text) if t == q]
            hits = exact + [j for j, h in enumerate(self._haystack) if q in h and j not in exact][: max(0, limit)]
            hits = hits[:limit]
        out = []
        for j in hits:
            row: dict[str, Any] = {"item": self.ids[j]}
            if self.has_titles:
                row["title"] = self.titles[j]
            out.append(row)
        return out
