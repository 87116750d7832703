"""Low-level model-file I/O: safe reads, a strict safetensors parser, atomic writes.

Everything here treats the files as hostile until proven otherwise:

- only regular files are read (a FIFO, a device such as ``/dev/zero`` or a
  folder is refused before a byte is read; FIFOs are opened non-blocking so
  they cannot hang the reader), and a file's size is compared with the
  available memory before it is read;
- JSON is parsed only after a linear scan proved its nesting shallow, so a
  deeply nested document is an error, not a ``RecursionError``;
- the safetensors header is parsed here (no pickle, no third-party parser):
  dtypes from a fixed list, shapes of non-negative integers, data offsets
  that tile the data section exactly, sizes that match the shapes;
- writes go to a temporary file of ours (prefix :data:`TEMP_PREFIX`) that is
  fsync'd and then renamed, so a file name of ours never points at partial
  content.

:func:`checkpoint` marks each step of a save so tests can kill a save at
every step (``tests/test_atomic_save.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap as _mmap
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from torchmf.device import check_memory
from torchmf.errors import ModelFileError

try:  # advisory locks serialise concurrent saves into one folder (POSIX)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAX_JSON_DEPTH", "TEMP_PREFIX", "checkpoint", "fsync_dir", "locked", "open_regular", "parse_json",
    "read_regular", "safetensors_bytes", "safetensors_tensors", "sha256_hex", "write_file",
]

TEMP_PREFIX = ".torchmf-tmp-"
MAX_JSON_DEPTH = 64
# a save waits this long for another save into the same folder to finish
LOCK_TIMEOUT = 600.0
# safetensors' own limit on the header size
MAX_HEADER_BYTES = 100_000_000
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32,
}

# Tests set this to a callable taking the step name (e.g. to SIGKILL the process there).
_step_hook: Callable[[str], None] | None = None


def checkpoint(step: str) -> None:
    """Mark the end of one step of a save (a no-op unless a test installed a hook)."""
    if _step_hook is not None:
        _step_hook(step)


def sha256_hex(data: Any) -> str:
    """SHA-256 hex digest of a bytes-like object (bytes, bytearray, mmap)."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- reading
def open_regular(path: Path) -> int:
    """Open ``path`` for reading and return the descriptor, refusing anything but a regular file.

    Symbolic links are followed; what they point at must be a regular file.
    FIFOs are opened non-blocking, so they are refused instead of hanging.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist (callers word their own message).
    ModelFileError
        A folder, FIFO, device, socket, or unreadable file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot open ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        raise ModelFileError(f"{path}: is {kind}; a model file must be a regular file")
    return fd


def _read_fd(fd: int, size: int, path: Path) -> bytearray:
    buf = bytearray(size)
    view, pos = memoryview(buf), 0
    while pos < size:
        n = os.readv(fd, [view[pos:]])
        if n == 0:
            raise ModelFileError(f"{path}: file shrank while being read")
        pos += n
    if os.read(fd, 1):
        raise ModelFileError(f"{path}: file grew while being read")
    return buf


def read_regular(path: Path) -> bytearray:
    """The whole content of a regular file, after checking its size against the machine's memory."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        try:
            check_memory(size, torch.device("cpu"), f"reading {path}")
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
        return _read_fd(fd, size, path)
    finally:
        os.close(fd)


def read_weights(fd: int, path: Path, size: int, mmap: bool) -> bytearray | _mmap.mmap:
    """The bytes of an open weights file: read into memory, or mapped copy-on-write.

    A copy-on-write (``MAP_PRIVATE``) mapping shares its pages with every other
    process mapping the same file until a page is written (fold-in writes one
    user's row); writes never reach the file.
    """
    if size < 8:
        raise ModelFileError(f"{path}: {size} bytes, too short for a safetensors file")
    if mmap:
        return _mmap.mmap(fd, size, access=_mmap.ACCESS_COPY)
    try:
        check_memory(size, torch.device("cpu"), f"reading {path}")
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    return _read_fd(fd, size, path)


_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))


def _json_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in UTF-8 JSON ``data``, skipping string literals; linear time.

    Escaped backslashes and quotes are dropped first, then every byte but
    ``"[]{}`` (UTF-8 continuation bytes are never ASCII); what lies between
    quote pairs was inside strings.
    """
    structure = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    depth = deepest = 0
    for outside in structure.split(b'"')[::2]:
        for c in outside:
            if c in b"[{":
                depth += 1
                deepest = max(deepest, depth)
            else:
                depth -= 1
    return deepest


def parse_json(data: bytes | bytearray | memoryview, where: str) -> Any:
    """Parse UTF-8 JSON, refusing nesting deeper than :data:`MAX_JSON_DEPTH`, NaN/Infinity and repeated keys."""
    data = bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    depth = _json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ModelFileError(f"{where}: JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH} allowed)")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            keys = [k for k, _ in pairs]
            dup = next(k for j, k in enumerate(keys) if k in keys[:j])
            raise ValueError(f"key {dup!r} appears twice in one object")
        return out

    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{where}: not valid JSON ({exc})") from None


# ---------------------------------------------------------------------- safetensors
def _shape(value: Any) -> list[int] | None:
    if not isinstance(value, list) or len(value) > 8:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in value):
        return None
    return value


def safetensors_tensors(buf: bytearray | _mmap.mmap, path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file held in ``buf``, sharing its memory (no copy).

    Checks everything the format promises before creating a tensor: the header
    length fits the file, the header is a flat JSON object, every dtype is
    known, every shape is a list of non-negative integers, each tensor's byte
    range has exactly the size its shape needs, is aligned to its item size,
    and the ranges tile the data section from its start to the end of the file.

    Raises
    ------
    ModelFileError
        Naming ``path`` and the first inconsistency.
    """
    size = len(buf)
    if size < 8:
        raise ModelFileError(f"{path}: {size} bytes, too short for a safetensors file")
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise ModelFileError(f"{path}: header length {n} does not fit the {size}-byte file")
    header = parse_json(buf[8 : 8 + n], f"{path} (safetensors header)")
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    start, data_size = 8 + n, size - 8 - n
    spans: list[tuple[int, int, str, torch.dtype, list[int]]] = []
    for name, spec in header.items():
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise ModelFileError(f"{path}: tensor {name!r}: entry must hold dtype, shape and data_offsets")
        dtype, shape, offsets = DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None, \
            _shape(spec["shape"]), spec["data_offsets"]
        if dtype is None:
            raise ModelFileError(f"{path}: tensor {name!r}: unsupported dtype {spec['dtype']!r}")
        if shape is None:
            raise ModelFileError(f"{path}: tensor {name!r}: shape {spec['shape']!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ModelFileError(f"{path}: tensor {name!r}: data_offsets {offsets!r} are not two integers")
        begin, end = offsets
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != math.prod(shape) * itemsize or begin % itemsize or (start + begin) % itemsize:
            raise ModelFileError(f"{path}: tensor {name!r}: bytes {begin}..{end} do not match "
                                 f"shape {shape} of {spec['dtype']}")
        spans.append((begin, end, name, dtype, shape))
    spans.sort()
    pos = 0
    for begin, end, name, _, _ in spans:
        if begin != pos:
            raise ModelFileError(f"{path}: tensor {name!r} starts at byte {begin}, expected {pos} "
                                 "(data offsets overlap or leave gaps)")
        pos = end
    if pos != data_size:
        raise ModelFileError(f"{path}: tensors cover {pos} bytes of a {data_size}-byte data section")
    out = {}
    for begin, end, name, dtype, shape in spans:
        if end == begin:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            count = math.prod(shape)
            out[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=start + begin).reshape(shape)
    return out


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytearray:
    """The safetensors file of ``tensors`` (CPU, contiguous), built in one buffer: one copy of the data.

    ``safetensors.torch.save`` holds the data twice at its peak (its own
    buffer, then the returned bytes), which is what a model with a large seen
    index pays at save time. Tensors are laid out by item size (largest
    first), then name, so every tensor is aligned to its item size.
    """
    names = {dtype: name for name, dtype in DTYPES.items()}
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    pos = 0
    for k in order:
        t = tensors[k]
        n = t.numel() * t.element_size()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + n]}
        pos += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    buf = bytearray(8 + len(text) + pos)
    buf[:8] = len(text).to_bytes(8, "little")
    buf[8 : 8 + len(text)] = text
    start = 8 + len(text)
    for k in order:
        t = tensors[k]
        if t.numel():
            begin = start + header[k]["data_offsets"][0]
            torch.frombuffer(buf, dtype=t.dtype, count=t.numel(), offset=begin).copy_(t.reshape(-1))
    return buf


# ---------------------------------------------------------------------- writing
def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (creations, renames, removals) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(folder: Path, name: str, data: bytes | bytearray | memoryview, step: str) -> None:
    """Write ``folder/name`` atomically: a temporary file of ours, fsync'd, then renamed over ``name``.

    Calls :func:`checkpoint` with ``{step}-written``, ``{step}-synced`` and
    ``{step}-renamed``. The folder itself is not fsync'd (the caller does it
    once for several files).
    """
    tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            view, pos = memoryview(data), 0
            while pos < len(view):
                pos += os.write(fd, view[pos:])
            checkpoint(f"{step}-written")
            os.fsync(fd)
        finally:
            os.close(fd)
        checkpoint(f"{step}-synced")
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    checkpoint(f"{step}-renamed")


@contextlib.contextmanager
def locked(folder: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (serialises concurrent saves into it).

    Raises
    ------
    ModelFileError
        When another process held the lock for ``timeout`` seconds.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        if fcntl is not None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ModelFileError(f"{folder}: another save into this folder has been running for "
                                             f"{timeout:g} s; try again when it is done") from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock
