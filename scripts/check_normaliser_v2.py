#!/usr/bin/env python3
"""Normaliser v2 against v1 on the real training patients (issue 28): head mask, tissue mode and time.

    python scripts/check_normaliser_v2.py [--split train] [--out docs/normaliser-v2.json]

Per patient of ``lgg:SPLIT`` and ``real:SPLIT``: the Dice of the v2 head mask against v1's, the v2 mode
over the v1 mode, the share of tumour voxels inside each mask, and the time of each normalisation
(interleaved, median of 3). Then the spread over patients. Never reads a reserved patient.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from LowResSegLib.images import intensity  # noqa: E402
from LowResSegLib.training import lggdata, realdata  # noqa: E402


def spacing_kji(case):
    return tuple(float(s) for s in np.sqrt((np.asarray(case.affine)[:3, :3] ** 2).sum(0))[::-1])


def compare(case):
    sp = spacing_kji(case)
    v = np.asarray(case.image, np.float32)
    v = v - min(0.0, float(v.min()))
    out, times = {}, {m: [] for m in (intensity.HEAD_MODE_RATIO, intensity.HEAD_MODE_RATIO_V2)}
    for _ in range(3):
        for m in times:
            t = time.perf_counter()
            out[m] = intensity.head_mask_and_scale(v, sp, m)
            times[m].append(time.perf_counter() - t)
    (m1, s1), (m2, s2) = out[intensity.HEAD_MODE_RATIO], out[intensity.HEAD_MODE_RATIO_V2]
    tumour = np.asarray(case.label) > 0
    return {"case": case.case_id, "mask_dice": float(2 * (m1 & m2).sum() / max(1, m1.sum() + m2.sum())),
            "mode_ratio": float(s2 / s1) if s1 else None,
            "tumour_in_mask_v1": float(m1[tumour].mean()) if tumour.any() else None,
            "tumour_in_mask_v2": float(m2[tumour].mean()) if tumour.any() else None,
            "ms_v1": 1000 * float(np.median(times[intensity.HEAD_MODE_RATIO])),
            "ms_v2": 1000 * float(np.median(times[intensity.HEAD_MODE_RATIO_V2])), "shape": list(v.shape)}


def spread(values):
    v = np.array([x for x in values if x is not None], float)
    return "%.4f / %.4f / %.4f / %.4f / %.4f" % (v.min(), np.percentile(v, 10), np.median(v), np.percentile(v, 90), v.max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="train", choices=["train", "val", "all"])
    ap.add_argument("--out", default=None, help="write the per-patient rows as JSON here")
    args = ap.parse_args()
    rows = []
    for source in (lggdata.iter_lgg_cases(args.split), realdata.iter_real_cases(args.split)):
        for case in source:
            rows.append(compare(case))
            print("%-32s mask Dice %.4f  mode v2/v1 %.4f  %5.0f -> %5.0f ms" % (
                rows[-1]["case"], rows[-1]["mask_dice"], rows[-1]["mode_ratio"] or float("nan"),
                rows[-1]["ms_v1"], rows[-1]["ms_v2"]), flush=True)
    print("\n%d patients; min / 10th pct / median / 90th pct / max" % len(rows))
    for key in ("mask_dice", "mode_ratio", "tumour_in_mask_v1", "tumour_in_mask_v2", "ms_v1", "ms_v2"):
        print("%-18s %s" % (key, spread(r[key] for r in rows)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
