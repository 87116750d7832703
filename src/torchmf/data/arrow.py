"""Large ratings files read column-wise with pyarrow, never as Python objects per row.

:func:`torchmf.read_ratings` parses small files with pandas, which keeps every
field as a Python string until the ids are typed: fine for ML-100k, tens of
GB for 50 M rows. Here a delimited file is streamed block by block
(``pyarrow.csv.open_csv``) into Arrow string columns (a few bytes per field),
a Parquet file is read as its typed columns, and ids are typed and encoded by
Arrow's vectorised kernels; only the distinct ids become Python objects (for
the id maps). The result is the very :class:`Interactions` the pandas path
builds: same id typing (canonical integers become ``int64``, anything else
stays a string), same first-appearance index order, same values.

:func:`torchmf.read_ratings` reads every uncompressed text or Parquet file of
:data:`STREAM_MIN_BYTES` or more this way when pyarrow is installed: it
decides separator, header and columns from the file's head
(:func:`torchmf.data.layout.text_layout`, the pandas reader's own rules and
errors) and passes them to :func:`read_ratings_arrow`.

Anything unusual (a byte-order mark, control characters (binary data), a ``::`` separator, a field with blanks in a
space-separated file, a blank id, a value the pandas path's checks refuse, a
missing field, a value that is not a number, a repeated pair under
``duplicates="error"``) makes these functions return None, and the caller
falls back to the pandas path, which reports the problem with its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchmf.data.checks import check_values
from torchmf.data.csr import count_repeats
from torchmf.data.dedupe import dedupe
from torchmf.data.idmap import INT_PATTERN, IdMap
from torchmf.data.interactions import Interactions
from torchmf.errors import DataError

__all__ = ["STREAM_MIN_BYTES", "arrow_columns", "interactions_from_arrow", "read_ratings_arrow", "wants_arrow"]

# Files at least this large are read with pyarrow when it is installed; below
# it the pandas reader is as fast and its per-row objects are affordable.
STREAM_MIN_BYTES = 4 << 20
# bytes of text parsed per block: bounds the parser's working memory
_BLOCK_BYTES = 16 << 20
_PARQUET = (".parquet", ".pq")
# C0 control characters other than tab, newline, vertical tab, form feed and carriage return (textfile's rule)
_CONTROL = "[\\x00-\\x08\\x0e-\\x1f\\x7f]"


def _pyarrow() -> Any | None:
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        return None
    return pyarrow


def wants_arrow(path: Path, min_bytes: int | None = None) -> bool:
    """Whether ``path`` is large enough to read with pyarrow (and pyarrow is installed)."""
    limit = STREAM_MIN_BYTES if min_bytes is None else min_bytes
    try:
        big = path.is_file() and path.stat().st_size >= limit
    except OSError:
        return False
    return big and _pyarrow() is not None


def arrow_columns(path: Path, sep: str | None, names: list[str] | None, header: bool) -> dict[str, Any] | None:
    """The file's columns as pyarrow ChunkedArrays (strings for text files), or None to fall back.

    Parameters
    ----------
    path : Path
    sep : str or None
        A single-character separator (text files); ignored for Parquet. ``" "``
        stands for runs of blanks, as in the pandas reader; a tab is a plain separator.
    names : list of str, optional
        Column names, in file order (required for text; Parquet files name
        their own unless these replace them).
    header : bool
        Whether the text file's first line is a header (skipped).
    """
    pa = _pyarrow()
    if pa is None:
        return None
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if path.suffix.lower() in _PARQUET:
        try:
            table = pq.read_table(path)
        except Exception:  # pyarrow raises many types for a bad file; pandas will say what is wrong
            return None
        names = table.column_names if names is None else list(names)
        if len(names) != table.num_columns or len(set(names)) != len(names):
            return None
        return dict(zip(names, table.columns, strict=True))
    if sep is None or names is None or len(set(names)) != len(names) or len(sep) != 1 or sep == '"':
        return None
    with open(path, "rb") as f:
        start = f.read(4)
    if start.startswith(b"\xef\xbb\xbf") or start[:1] in (b"\n", b"\r"):
        return None  # a byte-order mark or a leading blank line: the pandas path copes
    read = pcsv.ReadOptions(column_names=names, skip_rows=1 if header else 0, block_size=_BLOCK_BYTES)
    parse = pcsv.ParseOptions(delimiter=sep)
    convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                  null_values=[""], quoted_strings_can_be_null=True)
    chunks: dict[str, list[Any]] = {n: [] for n in names}
    try:
        with pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as reader:
            for batch in reader:
                for n in names:
                    chunks[n].append(batch.column(n))
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError):
        return None  # a malformed line: the pandas path names it
    out = {n: pa.chunked_array(c, type=pa.string()) for n, c in chunks.items()}
    import pyarrow.compute as pc

    # control characters mean binary data, which the pandas path refuses by name
    if any(pc.any(pc.match_substring_regex(col, _CONTROL)).as_py() for col in out.values()):
        return None
    if sep == " ":
        # pandas splits these files on runs of blanks: the same fields
        # exactly when no field is empty (a run) or holds other whitespace
        for col in out.values():
            if col.null_count or pc.any(pc.match_substring_regex(col, r"\s")).as_py():
                return None
    return out


def _ids(col: Any, kind: str) -> tuple[IdMap, np.ndarray] | None:
    """Id map and codes of an id column, typed as :func:`torchmf.data.readers._parse_ids` types them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.null_count:
        return None
    if pa.types.is_integer(col.type):
        return IdMap.encode(col.to_numpy(), kind)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None
    # trimmed as pandas' str.strip does; a copy only where some id has blanks around it
    stripped = pc.utf8_trim_whitespace(col) if pc.any(pc.match_substring_regex(col, r"^\s|\s$")).as_py() else col
    del col
    if pc.any(pc.equal(pc.utf8_length(stripped), 0)).as_py():
        return None  # a blank id: the pandas path's checks name its line
    if len(stripped) and pc.all(pc.match_substring_regex(stripped, f"^(?:{INT_PATTERN})$")).as_py():
        try:
            return IdMap.encode(pc.cast(stripped, pa.int64()).to_numpy(), kind)
        except pa.ArrowInvalid:  # beyond int64: stays a string, as pandas leaves it
            pass
    uniques = pc.unique(stripped)  # first-appearance order, as pandas.factorize
    codes = pc.index_in(stripped, value_set=uniques).to_numpy().astype(np.int64)
    return IdMap(pd.Index(np.array(uniques.to_pylist(), dtype=object)), kind), codes


def _numbers(col: Any) -> np.ndarray | None:
    """A numeric column as float64 (as ``pandas.to_numeric`` reads it), or None if any value is not a finite number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.null_count:
        return None
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            col = pc.cast(pc.utf8_trim_whitespace(col), pa.float64())
        except pa.ArrowInvalid:
            return None
    elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        return None
    out = col.to_numpy().astype(np.float64, copy=False)
    return out if np.isfinite(out).all() else None


def interactions_from_arrow(
    columns: dict[str, Any],
    user_col: str,
    item_col: str,
    rating_col: str | None,
    timestamp_col: str | None,
    duplicates: str,
    source: str,
) -> Interactions | None:
    """:class:`Interactions` from :func:`arrow_columns`' output, or None to fall back to pandas.

    Matches :meth:`Interactions.from_pandas` on the typed frame the pandas
    reader would build, for every file this accepts. Takes ``columns`` over:
    the id columns are removed from it as they are encoded.
    """
    if not len(columns[user_col]):
        return None
    # each text column is dropped as soon as it is typed, so the strings never all coexist with the arrays
    users = _ids(columns.pop(user_col), "user")
    items = _ids(columns.pop(item_col), "item")
    if users is None or items is None:
        return None
    (user_map, u), (item_map, i) = users, items
    if rating_col is None:
        values = np.ones(len(u), dtype=np.float32)
    else:
        ratings = _numbers(columns.pop(rating_col))
        if ratings is None:
            return None
        try:
            check_values(ratings, lambda pos: f"row {pos}")
        except DataError:
            return None  # out of range: the pandas path words it with the line
        values = ratings.astype(np.float32)
    ts = None
    if timestamp_col is not None:
        stamps = _numbers(columns.pop(timestamp_col))
        if stamps is None:
            return None
        ts = stamps.astype(np.int64)
    if duplicates == "error" and count_repeats(u, i, len(user_map), len(item_map)):
        return None  # the pandas path names the repeated pair's line
    # the frame is only read to word errors, which "error" (handled above) alone raises
    u, i, values, ts = dedupe(u, i, values, ts, len(item_map), duplicates, source, pd.DataFrame(), user_col, item_col)
    return Interactions(u, i, values, user_map, item_map, ts, implicit=rating_col is None)


def read_ratings_arrow(
    path: str | Path,
    sep: str | None,
    names: list[str] | None,
    header: bool,
    user_col: str,
    item_col: str,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    duplicates: str = "error",
) -> Interactions | None:
    """Read a ratings file with pyarrow, the layout decided by the caller; None means "use pandas".

    Parameters
    ----------
    path : path-like
        Uncompressed delimited text, or Parquet (``.parquet``/``.pq``).
    sep, names, header
        See :func:`arrow_columns`: the separator, column names and header
        flag the pandas reader settled on from the file's first lines.
    user_col, item_col, rating_col, timestamp_col : str
        Columns by role (``rating_col`` None: implicit data).
    duplicates : {"error", "last", "mean", "sum"}

    Returns
    -------
    Interactions or None
        Exactly what ``read_ratings`` returns for the same file and choices.
    """
    path = Path(path)
    columns = arrow_columns(path, sep, names, header)
    wanted = [c for c in (user_col, item_col, rating_col, timestamp_col) if c is not None]
    if columns is None or len(set(wanted)) != len(wanted) or not all(c in columns for c in wanted):
        return None
    return interactions_from_arrow(columns, user_col, item_col, rating_col, timestamp_col, duplicates, str(path))
