#!/usr/bin/env python3
"""How the head-mode normalisation behaves on the restored LGG patients (numbers quoted in docs/data.md).

    python scripts/lgg_check_normalisation.py [--split all] [--root DIR]

Per patient, on the nominal geometry: the share of the volume in the head mask, the share of the tumour
inside it, the tumour's and the head's median normalised intensity, the share of head voxels at the clip;
then their spread over patients, and every tumour slice where the mask misses most of the tumour.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from LowResSegLib.images.intensity import normalize_volume  # noqa: E402
from LowResSegLib.training import kaggle3m, lggdata  # noqa: E402

COLUMNS = ("head share of volume", "tumour inside head mask", "tumour median (normalised)",
           "head median (normalised)", "head share at the clip (5)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="all", choices=["all", "train", "val"])
    ap.add_argument("--root", default=None, help="restored kaggle_3m folder (default: $LOWRESSEG_LGG_DATA)")
    args = ap.parse_args()
    rows, missed = [], []
    for case in lggdata.iter_lgg_cases(args.split, root=args.root):
        norm = normalize_volume(case.image, spacing_kji=kaggle3m.NOMINAL_SPACING_MM[::-1])
        head, tumour = norm > 0, case.label > 0
        rows.append((case.case_id, head.mean(), head[tumour].mean(), np.median(norm[tumour]),
                     np.median(norm[head & ~tumour]), (norm[head] >= 5).mean()))
        missed += [(case.case_id, k + 1) for k in range(len(norm))
                   if tumour[k].sum() > 20 and head[k][tumour[k]].mean() < 0.5]
    values = np.array([r[1:] for r in rows], float)
    print("%d patients; over patients: min / 10th pct / median / 90th pct / max" % len(rows))
    for i, name in enumerate(COLUMNS):
        v = values[:, i]
        print("  %-28s %s" % (name, " / ".join("%.3f" % q for q in np.percentile(v, [0, 10, 50, 90, 100]))))
    for i, name in ((1, "tumour inside head mask"), (2, "tumour median")):
        print("  lowest %s: %s" % (name, ", ".join("%s %.3f" % (rows[j][0], values[j, i])
                                                   for j in np.argsort(values[:, i])[:3])))
    patients = sorted({p for p, _ in missed})
    print("tumour slices with most of the tumour outside the head mask: %d, in %s"
          % (len(missed), ", ".join(patients) or "none"))


if __name__ == "__main__":
    main()
