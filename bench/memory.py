"""Peak memory of one clinical-size segmentation (512×512×200), the way Slicer's worker runs it.

Measures, with ``tracemalloc`` (numpy reports its buffers to it), the peak of Python/numpy memory
allocated during :func:`LowResSegLib.inference.pipeline.segment` above what was held before, as a multiple of
the float32 input volume. A full float64 copy of the volume alone would add 2×; the pipeline should
stay near the few float32 working copies it needs. onnxruntime's own arena is not seen by tracemalloc,
so the process's peak RSS growth is reported beside it.

    python bench/memory.py        # writes the memory section of docs/BENCHMARKS.md
"""

import argparse
import os
import resource
import sys
import time
import tracemalloc

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.inference.engines import LocalEngine  # noqa: E402
from LowResSegLib.images.geometry import Volume  # noqa: E402
from LowResSegLib.inference.pipeline import segment  # noqa: E402
from bench.report import replace_section  # noqa: E402


def clinical_volume(shape=(200, 512, 512), spacing=(0.45, 0.45, 1.0)):
    """A head-like float32 volume: an ellipsoid head, a brighter lesion, noise in the background."""
    rng = np.random.default_rng(0)
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = [s / 2.0 for s in shape]
    head = ((k - c[0]) / (0.45 * shape[0])) ** 2 + ((j - c[1]) / (0.42 * shape[1])) ** 2 + \
        ((i - c[2]) / (0.36 * shape[2])) ** 2 < 1
    lesion = ((k - c[0] - 20) / 25.0) ** 2 + ((j - c[1] + 60) / 50.0) ** 2 + ((i - c[2] - 40) / 45.0) ** 2 < 1
    vol = rng.normal(20, 8, shape).astype(np.float32)
    vol[head] += 400
    vol[lesion & head] += 250
    affine = np.diag(list(spacing) + [1.0])
    return Volume(vol, affine)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="elunet-jhead-32to256")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)
    volume = clinical_volume()
    engine = LocalEngine(args.model)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    seg = segment(volume, engine, keep_probabilities=False)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    mb = volume.array.nbytes / 2.0 ** 20
    lines = [
        "## Memory of a clinical-size volume",
        "",
        "Produced by `python bench/memory.py` on %s: %s on a synthetic 512×512×200 head (float32, %.0f MiB), "
        "`keep_probabilities=False` as the Slicer worker and the CLI run it." % (time.strftime("%Y-%m-%d"),
                                                                             args.model, mb),
        "",
        "| measure | value |",
        "|---|---|",
        "| peak numpy/Python memory during `segment` (tracemalloc) | %.0f MiB = **%.2f× the input** |" % (
            peak / 2.0 ** 20, peak / float(volume.array.nbytes)),
        "| process peak RSS before → after | %.0f → %.0f MiB |" % (rss0, rss),
        "| time | %.1f s (%d slices, tumour %.0f mL) |" % (seconds, seg.timings["slices"], seg.volume_ml()),
    ]
    print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), "memory", lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
