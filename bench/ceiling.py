"""How much Dice an input resolution leaves for an upsampling head to win: the resolution ceiling.

Each case's true mask goes the way a model's input goes (canonical axial slices, centred
square padding, area resampling to r²), and comes back by plain bilinear upsampling and a
0.5 threshold. The Dice of that mask against the truth is what a perfect r² network with a
bilinear head would score; a learned head can add at most the rest (1 − ceiling), and only
where the network's low-resolution logits are already right. Compare it with the models'
Dice in the quality sections.

    python bench/ceiling.py                       # real:val + stripped phantoms -> docs/BENCHMARKS.md
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.geometry import area_resample, bilinear_resample, crop_from_square, pad_to_square, to_canonical  # noqa: E402,E501
from LowResSegLib.metrics import dice  # noqa: E402
from bench.quality import held_out_cases  # noqa: E402
from bench.report import replace_section  # noqa: E402

SIZES = (16, 32, 64)


def through_resolution(truth_kji, affine, r):
    """The truth as an r² input sees it, brought back by bilinear upsampling (on the canonical grid)."""
    canon, _ = to_canonical(truth_kji.astype(np.float32), affine)
    h, w = canon.shape[1:]
    square = pad_to_square(canon)
    back = bilinear_resample(area_resample(square, r), square.shape[-1])
    return crop_from_square(back, h, w) > 0.5, canon > 0.5


def ceilings(spec, limit=None, variants=("as is", "stripped")):
    from tqdm import tqdm

    rows = []
    for case, variant in tqdm(held_out_cases(spec, limit), desc=spec, unit="volume"):
        if variant not in variants or not case.label.any():
            continue
        row = {"case": case.case_id, "spec": spec}
        for r in SIZES:
            pred, truth = through_resolution(case.label > 0, case.affine, r)
            row[r] = dice(pred, truth)
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="real:val,phantom:10:1001")
    ap.add_argument("--cases", type=int, default=None, help="use only the first N cases of each data set")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = ["## Resolution ceiling: what an upsampling head can win", "",
             "Produced by `python bench/ceiling.py --data %s` on %s. Each true mask is area-resampled to r² the way "
             "model inputs are made (canonical axial slices, centred square padding), bilinearly upsampled back and "
             "thresholded at 0.5: the Dice a perfect r² network with a bilinear head would score. A learned head can "
             "win at most 1 − ceiling, and only where the low-resolution logits are already right. Phantoms: the "
             "stripped twins, 1 mm grids." % (args.data, time.strftime("%Y-%m-%d")), "",
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
