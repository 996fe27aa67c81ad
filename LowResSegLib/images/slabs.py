"""Per-volume numpy work split into slabs of slices, run on a shared pool of threads.

numpy lets go of the GIL inside its loops, so the element-wise and block passes of the
normalisation can share the cores when each thread takes a slab of slices. Measured on the
2 shared cores of the bench machine (one thread against two, interleaved): the scaling pass
about 25 % faster, the memory-bound block sums about 10 %. With one core, or a small volume,
the work runs in the calling thread as one slab.
"""

import os
import threading

import numpy as np

#: slabs smaller than this many voxels are not worth a thread hand-off
MIN_VOXELS_PER_SLAB = 1 << 18
_MAX_THREADS = 8

_pool = None
_pool_lock = threading.Lock()


def _forget_the_pool():
    """In a forked child the parent's pool threads do not exist: start afresh (training forks its workers)."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_pool)


def worker_count():
    """Threads the slab work may use: the cores this process may run on (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, cores))


def _executor():
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(worker_count(), thread_name_prefix="lowresseg-slab")
        return _pool


def bounds(n, voxels_per_index, align=1, parts=None):
    """``[(start, stop), ...]`` covering ``range(n)``; every start but the first is a multiple of ``align``."""
    if parts is None:
        parts = min(worker_count(), max(1, int(n * voxels_per_index // MIN_VOXELS_PER_SLAB)))
    blocks = -(-n // align)
    parts = max(1, min(parts, blocks))
    cuts = [min(n, align * (blocks * p // parts)) for p in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def run(work, n, voxels_per_index, align=1):
    """``[work(start, stop) for each slab]`` in slab order, the slabs running side by side."""
    spans = bounds(n, voxels_per_index, align)
    if len(spans) <= 1:
        return [work(a, b) for a, b in spans]
    futures = [_executor().submit(work, a, b) for a, b in spans]
    return [f.result() for f in futures]


def voxels_per_slice(shape):
    """Voxels in one index of the first axis of ``shape``."""
    return int(np.prod(shape[1:], dtype=np.int64))
