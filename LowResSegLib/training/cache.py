"""Where training keeps its derived files, and the version that invalidates them.

The slice cache (:mod:`LowResSegLib.training.slices`), the benchmark phantoms
(:mod:`LowResSegLib.training.phantom`) and the trainer share both names; they live here so that
none of those modules imports another for them.
"""

import os

__all__ = ["CACHE_VERSION", "default_cache_dir"]

CACHE_VERSION = 7  # bump when the phantom generator or slicing changes (7: the slab-threaded normalisation and block area resampling, issue 22)


def default_cache_dir():
    """``$LOWRESSEG_CACHE``, else ``~/.cache/lowresseg``: outside the repository, shared by every run."""
    return os.environ.get("LOWRESSEG_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lowresseg"))
