"""``--items FILE --item-col ID --title-col TITLE``: show titles beside item ids in query output."""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

__all__ = ["add_title_options", "attach_titles"]


def add_title_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("item titles")
    g.add_argument("--items", metavar="ITEMS.csv", help="item metadata with a header (e.g. MovieLens movies.csv)")
    g.add_argument("--item-col", metavar="NAME", help="id column of --items (recognised by name by default)")
    g.add_argument("--title-col", metavar="NAME", help="title column of --items (recognised by name by default)")


def attach_titles(df: pd.DataFrame, args: argparse.Namespace, column: str = "item") -> pd.DataFrame:
    """``df`` with a ``title`` column after ``column`` when --items was given (blank for unknown ids)."""
    if getattr(args, "items", None) is None:
        return df
    from torchmf.data.catalog import read_titles

    titles = read_titles(args.items, args.item_col, args.title_col)
    out = df.copy()
    out.insert(out.columns.get_loc(column) + 1, "title", [_title(titles, v) for v in out[column]])
    return out


def _title(titles: pd.Series, key: Any) -> str:
    for k in (key, str(key)):
        if k in titles.index:
            value = titles[k]
            return str(value.iloc[0] if isinstance(value, pd.Series) else value)
    return ""
