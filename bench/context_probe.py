"""How much normal tissue around a tumour a model needs: one case's tumour slices, edited.

The slices are prepared the way inference prepares them (``LowResSegLib.inference.pipeline``), edited,
and each model's per-slice Dice against the (equally edited) truth is averaged over the
slices that hold at least 1 cm² of tumour:

* ``rim R``: the brain beyond R pixels of the tumour is zeroed -- a tumour that fills its
  slice's brain, as a hemisphere-sized one does;
* ``ring R``: R pixels of normal-intensity tissue (the slice's median brain value) are added
  around the brain -- more context than the case has;
* ``zoom F``: the slice is shrunk by F about its centre -- a wider field of view.

Why: 32² models trained with ``--augment standard`` lost deepmedic pat0006 (217 mL) in the slices
where it covers most of the brain; this shows it without retraining (docs/method.md).

    python bench/context_probe.py --case pat0006                      # shipped 32² pair, real:val
    python bench/context_probe.py --case s1001_0000 --data phantom:10:1001 --repository /tmp/repo
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.inference.engines import LocalEngine  # noqa: E402
from LowResSegLib.images.geometry import area_resample, to_canonical  # noqa: E402
from LowResSegLib.images.metrics import dice  # noqa: E402
from LowResSegLib.inference.pipeline import low_res_inputs, prepare_array  # noqa: E402
from LowResSegLib.training.slices import zero_beyond  # noqa: E402

EDITS = ("as is", "rim 20", "rim 10", "rim 5", "ring 20", "zoom 0.7")
MIN_TUMOUR_MM2 = 100.0


def edit_slice(im, lab, edit):
    """``edit`` applied to one prepared slice and its label (float, soft)."""
    from scipy import ndimage

    kind, _, arg = edit.partition(" ")
    if kind == "as":
        return im, lab
    brain, tumour = im != 0, lab >= 0.5
    if kind == "rim":  # the cut of `lowresseg train --augment cut`, at a fixed distance
        return zero_beyond(im, tumour, float(arg)), lab
    if kind == "ring":
        ring = ndimage.binary_dilation(brain, iterations=int(arg)) & ~brain
        out = im.copy()
        out[ring] = np.median(im[brain & ~tumour]) if (brain & ~tumour).any() else 0.0
        return out, lab
    if kind == "zoom":
        f = float(arg)
        s = im.shape[0]
        c = (s - 1) / 2.0
        matrix, offset = np.eye(2) / f, c - c / f
        return (ndimage.affine_transform(im, matrix, offset, order=1, cval=0.0),
                ndimage.affine_transform(lab, matrix, offset, order=1, cval=0.0))
    raise ValueError("unknown edit %r" % edit)


def probe(image, affine, label, engines, edits=EDITS):
    """{edit: {model: mean per-slice Dice}} over the slices with >= 1 cm² of tumour, and their number."""
    method = next(iter(engines.values())).card["normalization"]["method"]
    prepared, lab = prepare_array(image, affine, method, label=label)
    c_aff = to_canonical(np.asarray(label), affine)[1]
    row_mm, col_mm = np.linalg.norm(c_aff[:3, :3], axis=0)[:2]
    pixel_mm2 = float(min(row_mm, col_mm) ** 2)  # prepared slices have square pixels at the finer in-plane spacing
    ks = [k for k in range(lab.shape[0]) if (lab[k] >= 0.5).sum() * pixel_mm2 >= MIN_TUMOUR_MM2]
    out = {}
    for edit in edits:
        pairs = [edit_slice(prepared.slices[k], lab[k], edit) for k in ks]
        ims = np.stack([p[0] for p in pairs]).astype(np.float32)
        labs = np.stack([p[1] for p in pairs]).astype(np.float32)
        out[edit] = {}
        for name, eng in engines.items():
            prob = eng.infer(low_res_inputs(ims, eng.card))[:, 0]
            truth = area_resample(labs, prob.shape[-1]) >= 0.5
            out[edit][name] = float(np.mean([dice(p > 0.5, t) for p, t in zip(prob, truth)])) if ks else float("nan")
    return out, len(ks)


def table(results, n_slices, case_id):
    names = list(next(iter(results.values())))
    lines = ["Mean per-slice Dice over the %d slices of `%s` with >= 1 cm² of tumour:" % (n_slices, case_id), "",
             "| edit | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for edit, row in results.items():
        lines.append("| %s | %s |" % (edit, " | ".join("%.3f" % row[n] for n in names)))
    return lines


def main(argv=None):
    from LowResSegLib.training.slices import iter_cases

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="real:val", help="labelled data spec (as for bench/quality.py)")
    ap.add_argument("--case", required=True, help="a substring of the case id, e.g. pat0006")
    ap.add_argument("--models", default="elunet-jhead-32to256,elunet-interp-32to256")
    ap.add_argument("--repository", action="append", default=None,
                    help="model repository (repeat it to compare the same names from several; default: shipped)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    repos = args.repository or [None]
    engines = {}
    for repo in repos:
        for name in args.models.split(","):
            label = name if len(repos) == 1 else "%s (%s)" % (name, repo)
            engines[label] = LocalEngine(name, repo, threads=args.threads)
    case = next((c for c in iter_cases(args.data) if args.case in c.case_id), None)
    if case is None:
        raise SystemExit("no case of %s has %r in its id" % (args.data, args.case))
    results, n = probe(case.image, case.affine, case.label, engines)
    print("\n".join(table(results, n, case.case_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
