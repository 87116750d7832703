"""Item metadata for display: titles keyed by the ids used in the ratings file."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from torchmf.errors import DataError

__all__ = ["read_titles"]

_ID_NAMES = ("item", "item_id", "itemid", "movieid", "movie_id", "id", "artist", "product", "product_id")
_TITLE_NAMES = ("title", "name", "item_name", "movie_title", "artist_name", "product_name")


def read_titles(path: str | os.PathLike, item_col: str | None = None, title_col: str | None = None) -> pd.Series:
    """Titles of items from a CSV/TSV file with a header line.

    Parameters
    ----------
    path : path-like
        Delimited text with a header (separator sniffed), e.g. MovieLens' ``movies.csv``.
    item_col, title_col : str, optional
        Column names; recognised by name when omitted (``movieId``/``item``/``id``...,
        ``title``/``name``...).

    Returns
    -------
    pandas.Series
        Title strings indexed by item id; ids that look like canonical integers become ints,
        as the ratings readers parse them.

    Raises
    ------
    DataError
        Missing file or column, naming the file and the columns found.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file (item titles)")
    try:
        df = pd.read_csv(p, sep=None, engine="python", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read item titles ({exc})") from None
    lower = {c.lower(): c for c in df.columns}

    def pick(given: str | None, names: tuple[str, ...], role: str) -> str:
        if given is not None:
            if given not in df.columns:
                raise DataError(f"{path}: no column {given!r} for the {role}; columns are {list(df.columns)}")
            return given
        for name in names:
            if name in lower:
                return lower[name]
        raise DataError(f"{path}: cannot tell which column holds the {role}; columns are {list(df.columns)} "
                        f"(name it with --{role.split()[-1]}-col)")

    ids = df[pick(item_col, _ID_NAMES, "item id")].str.strip()
    titles = df[pick(title_col, _TITLE_NAMES, "item title")]
    as_int = ids.str.fullmatch(r"-?(0|[1-9][0-9]*)")
    keys = [int(v) if ok else v for v, ok in zip(ids, as_int, strict=True)]
    return pd.Series(titles.to_numpy(), index=pd.Index(keys, dtype=object), name="title")
