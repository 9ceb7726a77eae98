"""Peak memory of a block of work, on the device it runs on.

CUDA: ``torch.cuda.max_memory_allocated`` after a reset (exact, tensors only).
CPU: there is no allocator counter, so a background thread samples the process' resident set size
(RSS, from /proc/self/statm) every few milliseconds and the peak growth over the RSS at the start
is reported. It includes allocator caching and is approximate; it is only comparable between models
measured the same way on the same machine.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the high-water mark (kilobytes on Linux/BSD)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    def __init__(self):
        self.mb: float = 0.0
        self.method: str = ""


@contextmanager
def peak_memory(device: torch.device, interval: float = 0.005):
    """``with peak_memory(device) as m: ...`` then ``m.mb`` (MiB) and ``m.method``."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            result.method = "cuda_max_allocated"
        return
    start = _rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result.mb = max(0.0, (peak[0] - start) / 2**20)
        result.method = "cpu_peak_rss_growth"
