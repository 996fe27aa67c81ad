"""Run several models (resolutions) on one volume and compare them side by side.

The table says what each input size costs (time) and what it gives (tumour volume,
Dice / HD95 against the ground truth, or agreement with the highest-resolution run).
The figure shows, per model, the *actual* low-resolution input next to its mask outlined on
the full-resolution image, on three slices spread over the tumour (its 25th, 50th and 75th
percentile slices), each labelled with its position along the patient axis in mm.
"""

import csv
import json
import os

import numpy as np

from LowResSegLib.images.geometry import to_canonical
from LowResSegLib.images.metrics import dice, hd95, volume_ml
from LowResSegLib.inference.pipeline import low_res_inputs, prepare_slices, segment

TABLE_FIELDS = ["model", "input_size", "output_size", "time_s", "ms_per_slice", "volume_ml", "reference",
                "dice", "hd95_mm"]


class Cancelled(Exception):
    """The user cancelled a comparison; nothing was written."""


def run_comparison(volume, engines, reference=None, progress=None, cancel=None):
    """Segment ``volume`` with every engine; returns (rows, segmentations by model name).

    ``reference`` (uint8, source grid) is the ground truth; without it every run is
    compared with the run of the highest input resolution. ``progress(model, done, total)``.
    """
    if reference is not None and reference.shape != volume.shape:
        raise ValueError("reference label shape %s differs from the volume's %s" % (reference.shape, volume.shape))
    segs = {}
    for eng in engines:
        name = eng.card["name"]
        cb = (lambda d, t, n=name: progress(n, d, t)) if progress else None
        seg = segment(volume, eng, progress=cb, cancel=cancel, keep_probabilities=False)
        if seg is None:
            raise Cancelled("comparison cancelled")
        segs[name] = seg
    return comparison_rows(segs, volume, reference), segs


def comparison_rows(segs, volume, reference=None, reference_model=None):
    """One table row per run: cost (time) and result (mL, Dice and HD95 against the reference).

    The reference is the ground truth ``reference`` when given, else the run ``reference_model``
    (the one the user trusts), else the run of the highest input resolution.
    """
    if not segs:
        return []
    if reference is not None:
        ref, ref_name = reference > 0, "ground truth"
    else:
        ref_name = reference_model if reference_model in segs else max(
            segs, key=lambda n: (segs[n].card["input_size"], n))
        ref = segs[ref_name].labels > 0
    sp = volume.spacing_kji
    rows = []
    for name, seg in segs.items():
        rows.append({
            "model": name, "input_size": seg.card["input_size"], "output_size": seg.card["output_size"],
            "time_s": round(seg.timings["total_s"], 3), "ms_per_slice": round(seg.timings["ms_per_slice"], 2),
            "volume_ml": round(seg.volume_ml(), 2), "reference": ref_name,
            "dice": round(dice(seg.labels, ref), 4), "hd95_mm": round(hd95(seg.labels, ref, sp), 2),
        })
    return rows


def write_table(rows, out_dir, reference_ml=None):
    """comparison.csv and comparison.json (verified atomic writes: LowResSegLib.images.io.write_text)."""
    import io

    from LowResSegLib.images.io import write_text

    os.makedirs(out_dir, exist_ok=True)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=TABLE_FIELDS)
    w.writeheader()
    w.writerows(rows)
    csv_path = os.path.join(out_dir, "comparison.csv")
    write_text(csv_path, text.getvalue())
    json_path = os.path.join(out_dir, "comparison.json")
    write_text(json_path, json.dumps({"runs": rows, "reference_volume_ml": reference_ml}, indent=2))
    return [csv_path, json_path]


def reference_volume_ml(volume, reference):
    return round(volume_ml(reference > 0, volume.spacing_kji), 2)


def figure_slices(counts, n_slices=3):
    """Axial slices spread over the tumour: its 25th, 50th and 75th percentile slices (by tumour voxels).

    Neighbouring slices with the most tumour look alike; these show its top, middle and bottom part.
    ``counts``: tumour voxels per slice (canonical k, inferior to superior). No tumour: the middle slice.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not counts.any():
        return [len(counts) // 2]
    cdf = np.cumsum(counts) / counts.sum()
    qs = [0.5] if n_slices == 1 else list(np.linspace(0.25, 0.75, n_slices))
    return sorted(set(int(np.searchsorted(cdf, q)) for q in qs))


def slice_position(affine_canonical, k, shape):
    """The patient-axis position of canonical slice ``k`` as a viewer shows it: ``"S 12.5 mm"`` / ``"I 3.0 mm"``.

    Slicer and most viewers give an axial slice's offset along the inferior-superior axis (the same number in
    RAS and LPS); the centre of the slice is used, so an oblique volume gets its mid-slice position.
    """
    centre = np.array([(shape[2] - 1) / 2.0, (shape[1] - 1) / 2.0, float(k), 1.0])
    z = float((np.asarray(affine_canonical) @ centre)[2])
    return "%s %.1f mm" % ("S" if z >= 0 else "I", abs(z))


def figure_caption(names, reference_name, has_truth, ensembles=()):
    """What the figure draws, and nothing else."""
    if has_truth:
        lines = ["Each model's actual input (top) and its mask outlined in red on the full-resolution slice (bottom); "
                 "green dashed: the ground truth; Dice on that slice against it."]
    else:
        lines = ["Each model's actual input (top) and its mask outlined in red on the full-resolution slice (bottom); "
                 "Dice on that slice against %s (no ground truth given)." % reference_name]
    if ensembles:  # an ensemble has no input of its own: its top cell shows where its members disagree
        lines.append("Ensemble (%s): top, in yellow, where its members disagree (some, not all, call it tumour); "
                     "its review score is the disagreeing volume over the volume any member finds."
                     % ", ".join(ensembles))
    lines.append("Slices at the 25th, 50th and 75th percentile of the tumour's extent, positions along the patient "
                 "axis. Radiological view (patient's right on the left). Research use only.")
    return lines


def comparison_figure(volume, segs, path, reference=None, n_slices=3):
    """comparison.png: per model, its low-res input and its mask outlined over the full-res slice.

    See :func:`figure_slices`, :func:`slice_position` and :func:`figure_caption` for what is shown.
    """
    import textwrap

    try:
        import matplotlib
    except ImportError:
        raise ImportError('the comparison figure needs matplotlib: pip install "LowResSegLib[figures]"')
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(segs, key=lambda n: (segs[n].card["input_size"], n))
    canon_img, c_aff = to_canonical(np.asarray(volume.array), volume.affine)
    canon = {n: to_canonical(segs[n].labels, volume.affine)[0] for n in names}
    ref_c = to_canonical(reference, volume.affine)[0] if reference is not None else None
    basis = ref_c if ref_c is not None else canon[names[-1]]
    basis_name = "the ground truth" if ref_c is not None else "the highest-resolution run (%s)" % names[-1]
    ks = figure_slices(basis.reshape(basis.shape[0], -1).sum(1), n_slices)
    col_sp, row_sp = float(np.linalg.norm(c_aff[:3, 0])), float(np.linalg.norm(c_aff[:3, 1]))
    aspect = row_sp / col_sp

    prepared = {}  # slices depend only on the normalisation method, shared by the models
    lows = {}
    ensembles = [n for n in names if getattr(segs[n], "disagreement", None) is not None]
    disagree = {n: to_canonical(segs[n].disagreement > 0, volume.affine)[0] for n in ensembles}
    for n in names:
        if n in ensembles:
            continue
        card = segs[n].card
        method = card["normalization"]["method"]
        if method not in prepared:
            prepared[method] = prepare_slices(volume, card).slices[ks]
        lows[n] = low_res_inputs(prepared[method], card)
    cols = len(names) + (1 if ref_c is not None else 0)
    width = max(2.6 * cols, 7.0)
    caption = [textwrap.fill(line, width=int(width * 15)) for line in figure_caption(names, basis_name,
                                                                                   ref_c is not None, ensembles)]
    n_caption = sum(line.count("\n") + 1 for line in caption)
    fig, axes = plt.subplots(2 * len(ks), cols, figsize=(width, 2.7 * 2 * len(ks) + 0.16 * n_caption),
                             squeeze=False)
    vmax = float(np.percentile(canon_img[canon_img > 0], 99.5)) if (canon_img > 0).any() else 1.0
    for row, k in enumerate(ks):
        where = slice_position(c_aff, k, canon_img.shape)
        for col, name in enumerate(names):
            seg = segs[name]
            ax_in, ax_ov = axes[2 * row, col], axes[2 * row + 1, col]
            if name in ensembles:  # where the members disagree, over the full-resolution slice
                ax_in.imshow(canon_img[k], cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
                ax_in.imshow(np.ma.masked_where(~disagree[name][k], disagree[name][k]), cmap="autumn", vmin=0,
                             vmax=1, alpha=0.75, aspect=aspect, interpolation="nearest")
                ax_in.set_title("%s\nmembers disagree on %.1f mL\nreview score %.2f%s; whole volume %.1f mL"
                                % (name, seg.disagree_ml(), seg.review_score, " REVIEW" if seg.review else "",
                                   seg.volume_ml()) if row == 0 else "members disagree (yellow)", fontsize=7)
            else:
                ax_in.imshow(lows[name][row, 0], cmap="gray", interpolation="nearest")
                r = seg.card["input_size"]
                ax_in.set_title("%s\ninput %d×%d; whole volume %.1f mL" % (name, r, r, seg.volume_ml()) if row == 0
                                else "input %d×%d" % (r, r), fontsize=7)
            ax_ov.imshow(canon_img[k], cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
            mask = canon[name][k] > 0
            if mask.any():  # outlines only: the anatomy under the mask stays visible
                ax_ov.contour(mask, [0.5], colors=["#ff3b30"], linewidths=0.9)
            if ref_c is not None and ref_c[k].any():
                ax_ov.contour(ref_c[k], [0.5], colors=["#34c759"], linewidths=0.9, linestyles="dashed")
            agree = "" if (ref_c is None and name == names[-1]) else "; Dice %.2f" % dice(mask, basis[k] > 0)
            ax_ov.set_title("%s%s" % (where, agree), fontsize=7)
        if ref_c is not None:
            ax_in, ax_ov = axes[2 * row, cols - 1], axes[2 * row + 1, cols - 1]
            ax_in.axis("off")
            if row == 0:
                ax_in.set_title("ground truth", fontsize=7)
            ax_ov.imshow(canon_img[k], cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
            if ref_c[k].any():
                ax_ov.contour(ref_c[k], [0.5], colors=["#34c759"], linewidths=1.0, linestyles="dashed")
            ax_ov.set_title("%s (truth)" % where, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    top = 1 - (0.16 * n_caption + 0.15) / fig.get_figheight()
    fig.text(0.5, 0.995, "\n".join(caption), ha="center", va="top", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, top))
    tmp = path + ".part.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
