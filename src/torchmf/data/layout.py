"""How a delimited ratings file is laid out: separator, column names and header, decided from its first lines.

Both readers (pandas, :func:`torchmf.data.readers.read_table`, and pyarrow,
:mod:`torchmf.data.arrow`) read a file the way :func:`text_layout` decides, so
they agree on every file and word layout errors the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchmf.data.columns import ROLE_NAMES
from torchmf.data.textfile import is_number, separator_name, sniff_separator, split_fields
from torchmf.errors import DataError

__all__ = ["MAX_COLUMNS", "Layout", "normalise_separator", "text_layout"]

_DEFAULT_COLUMNS = {
    2: ("user", "item"),
    3: ("user", "item", "rating"),
    4: ("user", "item", "rating", "timestamp"),
}
MAX_COLUMNS = 1000  # more fields than this on a line: not a ratings file, or the wrong separator
_SEP_NAMES = {
    r"\t": "\t",
    "tab": "\t",
    "space": " ",
    "whitespace": " ",
    r"\s+": " ",
    "comma": ",",
    "semicolon": ";",
    "pipe": "|",
}


def normalise_separator(sep: str | None) -> str | None:
    """``sep`` as the reader uses it: None (sniff), ``"::"``, ``" "`` (runs of blanks) or one character.

    Names are accepted too: ``tab`` or ``\\t``, ``space``/``whitespace``, ``comma``,
    ``semicolon``, ``pipe``. Anything else longer than one character raises
    :class:`DataError`.
    """
    if sep is None:
        return None
    if not isinstance(sep, str) or sep == "":
        raise DataError(f"separator must be a non-empty string, got {sep!r}")
    sep = _SEP_NAMES.get(sep.lower() if sep.isalpha() else sep, sep)
    if sep.isspace():
        return "\t" if sep == "\t" else " "
    if len(sep) > 1 and sep != "::":
        raise DataError(
            f"separator {sep!r} not supported: give one character, '::', 'tab' or 'space'"
        )
    return sep


@dataclass(frozen=True)
class Layout:
    """How a delimited text file is read, as decided from its first lines."""

    sep: str  # one character (``::`` already mapped to a tab); " " means runs of blanks
    columns: list[str]
    header: bool
    first_idx: int  # index of the first non-blank line
    skip: int  # lines before the first data line
    hint: str  # appended to messages when the given separator looks wrong
    double_colon: bool  # the file separates fields by ``::`` (read as tabs)


def text_layout(
    path: Path, head: list[str], sep: str | None, columns: Sequence[str] | None, header: bool | Literal["infer"]
) -> Layout:
    """Separator, column names and header of a text file from its first lines ``head``; raises DataError."""
    first_idx = next((i for i, ln in enumerate(head) if ln.strip()), None)
    if first_idx is None:
        raise DataError(f"{path}: the file is empty")
    given = normalise_separator(sep)
    sniffed = sniff_separator(head)
    sep = given or sniffed
    hint = ""
    if given is not None and given != sniffed:
        hint = f" (wrong separator? the file looks {separator_name(sniffed)}-separated)"
    double_colon = sep == "::"
    if double_colon:
        head = [ln.replace("::", "\t") for ln in head]
        sep = "\t"
    first = head[first_idx]
    line1 = first_idx + 1
    fields = split_fields(first, sep)
    if len(fields) > MAX_COLUMNS:
        raise DataError(
            f"{path}: line {line1} has more than {MAX_COLUMNS} fields ({len(fields):,} counted); a ratings "
            f"file has a few columns such as user, item, rating, timestamp{hint or '; wrong separator?'}"
        )
    if given is not None and len(fields) == 1:
        data_lines = [ln for ln in head[first_idx:] if ln.strip()][:50]
        if all(len(split_fields(ln, sep)) == 1 for ln in data_lines):
            looks = f"the file looks {separator_name(sniffed)}-separated" if hint else "no separator fits"
            raise DataError(
                f"{path}: wrong separator? with separator {separator_name(given)} found 1 field per line; {looks}"
            )
    if header == "infer":
        second = next((ln for ln in head[first_idx + 1 :] if ln.strip()), None)
        header = _looks_like_header(fields, None if second is None else split_fields(second, sep))
    if columns is None:
        if header:
            columns = _header_names(fields, path, line1)
        elif len(fields) in _DEFAULT_COLUMNS:
            columns = list(_DEFAULT_COLUMNS[len(fields)])
        else:
            raise DataError(
                f"{path}: line {line1} has {len(fields)} fields; give column names "
                f"(columns=['user', 'item', 'rating', ...]) to say which is which{hint}"
            )
    else:
        columns = [str(c) for c in columns]
        dup = next((c for c in columns if columns.count(c) > 1), None)
        if dup is not None:
            raise DataError(f"column name {dup!r} given twice in columns={columns}")
    n_cols = len(columns)
    if len(fields) != n_cols:
        raise DataError(
            f"{path}: line {line1} has {len(fields)} fields but {n_cols} column names were given "
            f"({list(columns)}){hint}"
        )
    skip = first_idx + 1 if header else first_idx
    return Layout(sep, list(columns), bool(header), first_idx, skip, hint, double_colon)


def _header_names(fields: list[str], path: Path, line: int) -> list[str]:
    """Column names from a header line: blanks named like pandas does, repeats refused."""
    names = [f.strip() or f"Unnamed: {j}" for j, f in enumerate(fields)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: line {line} (the header): column name {name!r} appears twice")
        seen.add(name)
    return names


def _looks_like_header(first: list[str], second: list[str] | None) -> bool:
    known = {n for names in ROLE_NAMES.values() for n in names}
    if any(f.strip().lower() in known for f in first):
        return True
    if any(is_number(f.strip()) for f in first):
        return False
    # all-text first line: a header if the next line has numbers where it had text
    return second is not None and any(is_number(f.strip()) for f in second)
