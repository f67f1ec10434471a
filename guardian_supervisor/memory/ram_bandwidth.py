"""System RAM read bandwidth, measured once: the speed an offloaded layer's weights are read at.

Decoding reads every weight once per token, so the part of a model kept in RAM runs at the
RAM's read bandwidth with all cores reading (llama.cpp's CPU threads split each matrix).
The measure mirrors that: one thread per core, each summing its own slice of a buffer much
larger than the caches; numpy's reduction releases the GIL, so the threads read at once.
Blocking (about 0.1-0.5 s): call it off the event loop.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Large enough to defeat any CPU cache (server L3s reach a few hundred MiB per socket).
DEFAULT_BYTES = 512 * 1024 * 1024


def read_bandwidth(n_bytes: int = DEFAULT_BYTES, threads: int | None = None, repeats: int = 3) -> float:
    """Best-of-`repeats` bytes per second for all `threads` (default: the usable cores)
    reading `n_bytes` of RAM together."""
    if n_bytes < 1 << 20 or repeats < 1:
        raise ValueError("n_bytes must be at least 1 MiB and repeats at least 1")
    n = threads or len(os.sched_getaffinity(0)) or 1
    buf = np.ones(n_bytes // 8, dtype=np.float64)  # written once, so every page is resident
    slices = np.array_split(buf, n)
    best = 0.0
    with ThreadPoolExecutor(max_workers=n) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, slices))
            elapsed = time.perf_counter() - start
            best = max(best, buf.nbytes / elapsed)
    return best
