"""Helpers shared by the benchmark scripts: timing, peak memory, machine info."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DATA_HOME = Path(os.environ.get("TORCHMF_DATA_HOME", Path(__file__).resolve().parents[2] / "shared" / "data"))


def machine() -> str:
    """One line naming the machine the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


@dataclass
class Measured:
    seconds: float
    peak_mb: float
    result: Any


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return 0


@contextmanager
def _peak_sampler(interval: float = 0.002):
    """Sample resident memory in a thread; yields a dict that gets 'peak' and 'base'."""
    out = {"base": _rss(), "peak": _rss()}
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], _rss())
            time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], _rss())


def measure(fn: Callable[[], Any]) -> Measured:
    """Run ``fn`` once; wall time and peak resident memory above the start (MB).

    On CUDA the peak is the device allocator's peak instead.
    """
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with _peak_sampler() as mem:
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = (mem["peak"] - mem["base"]) / 2**20
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    return Measured(seconds, peak, result)
