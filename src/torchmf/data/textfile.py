"""Opening ratings files safely: regular files only, transparent decompression,
binary input refused, and the one separator sniffer (used by the readers and the CLI)."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import logging
import lzma
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from torchmf.errors import DataError

__all__ = [
    "SEPARATORS",
    "check_regular_file",
    "compression",
    "head_lines",
    "is_number",
    "iter_lines",
    "peek_lines",
    "read_text",
    "separator_name",
    "sniff_separator",
    "split_fields",
]

log = logging.getLogger(__name__)

# separators the sniffer tries, in order of preference when several fit equally well
SEPARATORS = ("::", "\t", ",", ";", "|", " ")
SNIFF_LINES = 50  # lines looked at when sniffing
PEEK_BYTES = 1 << 16  # bytes looked at when sniffing

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"PAR1": "parquet",
    b"7z\xbc\xaf\x27\x1c": "7z",
}
# C0 control bytes other than tab, newline, vertical tab, form feed and carriage return
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
_CONTROL_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


def check_regular_file(path: Path) -> None:
    """Raise :class:`DataError` unless ``path`` is an existing regular file (symlinks followed).

    A named pipe or device would block or never end; a folder is not a ratings file.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a directory, not a ratings file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file (a pipe, socket or device); save the data to a file first")


def compression(path: Path) -> str | None:
    """The container format recognised from the first bytes: "gzip", "bz2", "xz", "zstd",
    "zip", "7z", "parquet", or None for anything else (text, we hope)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def _open(path: Path, kind: str | None) -> BinaryIO:
    if kind is None:
        return open(path, "rb")
    if kind == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise DataError(
                f"{path}: zstd-compressed; reading it needs the zstandard package "
                "(pip install 'torchmf[zstd]'), or decompress it first (zstd -d)"
            ) from None
        return zstandard.ZstdDecompressor().stream_reader(
            open(path, "rb"), read_across_frames=True, closefd=True
        )  # type: ignore[return-value]
    raise DataError(f"{path}: a {kind} archive, not a ratings file; extract the ratings file from it first")


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes, decompressed; at most ``limit`` of them when given."""
    kind = compression(path)
    try:
        with _open(path, kind) as fh:
            if limit is not None:
                return fh.read(limit)
            chunks = []
            while chunk := fh.read(1 << 24):
                chunks.append(chunk)
            return b"".join(chunks)
    except DataError:
        raise
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        if kind is None:
            raise DataError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
        raise DataError(f"{path}: corrupt or truncated {kind} data ({exc})") from None
    except Exception as exc:  # zstandard.ZstdError and friends
        if kind == "zstd":
            raise DataError(f"{path}: corrupt or truncated zstd data ({exc})") from None
        raise


def _decode(raw: bytes, path: Path, partial: bool = False) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = raw.decode("utf-16", errors="replace" if partial else "strict")
        except UnicodeDecodeError:
            raise DataError(f"{path}: starts like UTF-16 text but is not; binary data?") from None
        bad_char = _CONTROL_TEXT.search(text)
        if bad_char is not None:
            raise _binary(path, ord(bad_char.group()), bad_char.start(), "character")
        return text
    bad = _CONTROL.search(raw)
    if bad is not None:
        raise _binary(path, raw[bad.start()], bad.start(), "offset")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(raw) - 4:  # a character cut by the peek limit
            return raw[: exc.start].decode("utf-8-sig")
        log.info("%s: not UTF-8 (byte %d); reading it as Latin-1", path, exc.start)
        return raw.decode("latin-1")


def _binary(path: Path, code: int, pos: int, unit: str) -> DataError:
    return DataError(
        f"{path}: binary data, not a text ratings file (byte 0x{code:02x} at {unit} {pos}); "
        "torchmf reads delimited text (optionally .gz, .bz2, .xz or .zst compressed) and Parquet"
    )


def read_text(path: Path) -> str:
    """Whole text of a (possibly compressed) text file.

    Raises
    ------
    DataError
        The file holds binary data (control bytes such as NUL), is an archive,
        or its compressed data is corrupt.
    """
    return _decode(_read_bytes(path), path)


def peek_lines(path: str | os.PathLike, n_bytes: int = PEEK_BYTES) -> list[str]:
    """The first lines of a (possibly compressed) text file, read from its first ``n_bytes``."""
    path = Path(path)
    check_regular_file(path)
    return head_lines(_decode(_read_bytes(path, n_bytes), path, partial=True))


def iter_lines(text: str) -> Iterator[str]:
    """Lines of ``text`` split as pandas splits them (``\\n``, ``\\r\\n`` or ``\\r``), without ends."""
    for line in io.StringIO(text, newline=None):
        yield line.rstrip("\n")


def head_lines(text: str, n_bytes: int = PEEK_BYTES) -> list[str]:
    """The lines within the first ``n_bytes`` characters (a cut last line dropped unless it is the only one)."""
    head = text[:n_bytes]
    lines = list(iter_lines(head))
    if len(text) > n_bytes and len(lines) > 1:
        lines = lines[:-1]
    return lines


def split_fields(line: str, sep: str) -> list[str]:
    """Fields of one line as pandas would split them (double quotes respected)."""
    if sep == " ":
        return line.split()
    if len(sep) > 1:
        return line.split(sep)
    try:
        return next(csv.reader([line], delimiter=sep, quotechar='"'), [""])
    except csv.Error:  # e.g. a field beyond csv's size limit
        return line.split(sep)


def separator_name(sep: str) -> str:
    """How messages name a separator: ``','``, ``'\\t'`` or ``whitespace``."""
    return "whitespace" if sep == " " else repr(sep)


def is_number(text: str) -> bool:
    """Whether ``text`` parses as a real number."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def sniff_separator(lines: Sequence[str]) -> str:
    """The field separator of delimited text, judged from its first lines.

    Each candidate of :data:`SEPARATORS` splits the first :data:`SNIFF_LINES`
    non-blank lines; it fits when every data line (all but the first, which may
    be a header) gets the same number of fields, two or more. Among those that
    fit, the best gives the header the same count, then has a last column
    (rating, timestamp) of numbers (so ``a,1;b,2;5`` splits on ``;``), then the
    most columns of numbers, then the most columns, then comes first in
    :data:`SEPARATORS`. Runs of
    whitespace are tried only when no other candidate fits. When none fits, the
    first candidate found on the first line is returned (the reader then names
    the ragged line).

    Parameters
    ----------
    lines : sequence of str

    Returns
    -------
    str
        One of :data:`SEPARATORS` (``" "`` meaning runs of whitespace).
    """
    sample = [ln for ln in lines if ln.strip()][:SNIFF_LINES]
    if not sample:
        return ","
    best: tuple[tuple[int, ...], str] | None = None
    for prio, sep in enumerate(SEPARATORS):
        if (sep != " " and sep not in sample[-1]) or (sep == " " and best is not None):
            continue
        rows = [split_fields(ln, sep) for ln in sample]
        data = rows[1:] or rows
        width = len(data[0])
        if width < 2 or any(len(r) != width for r in data):
            continue
        numeric = [all(is_number(r[j].strip()) for r in data) for j in range(width)]
        score = (int(len(rows[0]) == width), int(numeric[-1]), sum(numeric), width, -prio)
        if best is None or score > best[0]:
            best = (score, sep)
    if best is not None:
        return best[1]
    first = sample[0]
    return next((s for s in SEPARATORS[:-1] if s in first), " ")
