"""How much Dice an input resolution costs by itself: a reference for what an upsampling head can win.

Each case's true mask is prepared the way a model's input is (``pipeline.prepare_array``:
canonical axial slices, square pixels, centred square padding), area-resampled to r², and
brought back the way model outputs are (``PreparedSlices.to_slice_grid``: bilinear) and
thresholded at 0.5. Its Dice against the truth is what a network that outputs the true r²
area fractions scores with a bilinear head. It is an estimate, not a bound: a network may
choose low-resolution logits that upsample better than the area fractions, and a learned head
may sharpen edges further. Compare it with the models' Dice in the quality sections.

    python bench/ceiling.py                       # real:val + stripped phantoms -> docs/BENCHMARKS.md
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.images.geometry import area_resample, to_canonical  # noqa: E402
from LowResSegLib.images.intensity import DEFAULT_METHOD  # noqa: E402
from LowResSegLib.images.metrics import dice  # noqa: E402
from LowResSegLib.inference.pipeline import prepare_array  # noqa: E402
from bench.quality import held_out_cases  # noqa: E402
from bench.report import replace_section  # noqa: E402

SIZES = (16, 32, 64)


def round_trips(image, truth_kji, affine, sizes):
    """{r: the truth after an r² round trip} and the truth, on the canonical grid (prepared once for all sizes)."""
    prepared, label = prepare_array(image, affine, DEFAULT_METHOD, label=truth_kji)
    back = {r: prepared.to_slice_grid(area_resample(label, r)) > 0.5 for r in sizes}
    return back, to_canonical(np.asarray(truth_kji), affine)[0] > 0


def through_resolution(image, truth_kji, affine, r):
    """(the truth after an r² round trip, the truth), both on the canonical grid."""
    back, truth = round_trips(image, truth_kji, affine, (r,))
    return back[r], truth


def ceilings(spec, limit=None, variants=("as is", "stripped")):
    from tqdm import tqdm

    rows = []
    for case, variant in tqdm(held_out_cases(spec, limit), desc=spec, unit="volume"):
        if variant not in variants or not case.label.any():
            continue
        back, truth = round_trips(case.image, case.label > 0, case.affine, SIZES)
        row = {"case": case.case_id, "spec": spec}
        row.update((r, dice(back[r], truth)) for r in SIZES)
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="real:val,phantom:10:1001")
    ap.add_argument("--cases", type=int, default=None, help="use only the first N cases of each data set")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = ["## Resolution ceiling: what the input resolution costs by itself", "",
             "Produced by `python bench/ceiling.py --data %s` on %s. Each true mask is prepared and area-resampled to "
             "r² the way model inputs are made, brought back the way outputs are (bilinear) and thresholded at 0.5: "
             "the Dice of a network that outputs the true r² area fractions, with a bilinear head. An estimate of "
             "what the input resolution costs by itself, not a bound (better logits or a learned head can beat "
             "it). Phantoms: the stripped twins." % (args.data, time.strftime("%Y-%m-%d")), "",
             "| data | cases | " + " | ".join("%d² ceiling (min)" % r for r in SIZES) + " |",
             "|---|---|" + "---|" * len(SIZES)]
    for spec in args.data.split(","):
        rows = ceilings(spec, args.cases)
        if not rows:
            continue
        cells = ["%.3f (%.3f)" % (np.mean([x[r] for x in rows]), min(x[r] for x in rows)) for r in SIZES]
        lines.append("| `%s` | %d | %s |" % (spec, len(rows), " | ".join(cells)))
        print(spec, len(rows), cells)
    print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), "ceiling", lines))


if __name__ == "__main__":
    main()
