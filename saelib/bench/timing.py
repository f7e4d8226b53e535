"""Measuring on a shared machine: wall time with the CPU share it got, and peak resident memory."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

MIN_CPU_SHARE = 0.9  # below this another process took a core: the timing is noisy


@contextlib.contextmanager
def timed(result: dict) -> Iterator[dict]:
    """Fill `result` with wall seconds and CPU share of the block."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    yield result
    wall = time.perf_counter() - wall0
    result["seconds"] = wall
    result["cpu_share"] = (time.process_time() - cpu0) / (wall * (os.cpu_count() or 1))


def reset_peak_rss() -> None:
    """Linux: start a fresh peak-RSS window (VmHWM) so each phase reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
