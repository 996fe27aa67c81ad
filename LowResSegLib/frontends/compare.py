"""Run several models (resolutions) on one volume and compare them side by side.

The table says what each input size costs (time) and what it gives (tumour volume,
Dice / HD95 against the ground truth, or agreement with the highest-resolution run).
The figure shows, per model, the *actual* low-resolution input next to its mask over
the full-resolution image, on the three slices with the most tumour.
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
    """comparison.csv and comparison.json (atomic writes)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    csv_path = os.path.join(out_dir, "comparison.csv")
    tmp = csv_path + ".part"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    paths.append(csv_path)
    json_path = os.path.join(out_dir, "comparison.json")
    tmp = json_path + ".part"
    with open(tmp, "w") as f:
        json.dump({"runs": rows, "reference_volume_ml": reference_ml}, f, indent=2)
    os.replace(tmp, json_path)
    paths.append(json_path)
    return paths


def reference_volume_ml(volume, reference):
    return round(volume_ml(reference > 0, volume.spacing_kji), 2)


def comparison_figure(volume, segs, path, reference=None, n_slices=3):
    """comparison.png: per model, its low-res input and its mask over the full-res slice."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError('the comparison figure needs matplotlib: pip install "LowResSegLib[figures]"')
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    red = ListedColormap(["#ff3b30"])

    names = sorted(segs, key=lambda n: (segs[n].card["input_size"], n))
    canon_img, _ = to_canonical(np.asarray(volume.array), volume.affine)
    canon = {n: to_canonical(segs[n].labels, volume.affine)[0] for n in names}
    ref_c = to_canonical(reference, volume.affine)[0] if reference is not None else None
    basis = ref_c if ref_c is not None else canon[names[-1]]
    counts = basis.reshape(basis.shape[0], -1).sum(1)
    ks = sorted(np.argsort(counts)[::-1][:n_slices]) if counts.any() else [basis.shape[0] // 2]
    c_aff = to_canonical(np.zeros(volume.shape, np.uint8), volume.affine)[1]
    col_sp, row_sp = float(np.linalg.norm(c_aff[:3, 0])), float(np.linalg.norm(c_aff[:3, 1]))
    aspect = row_sp / col_sp

    prepared = {}  # slices depend only on the normalisation method, shared by the models
    lows = {}
    for n in names:
        card = segs[n].card
        method = card["normalization"]["method"]
        if method not in prepared:
            prepared[method] = prepare_slices(volume, card).slices[ks]
        lows[n] = low_res_inputs(prepared[method], card)
    cols = len(names) + (1 if ref_c is not None else 0)
    fig, axes = plt.subplots(2 * len(ks), cols, figsize=(2.6 * cols, 2.7 * 2 * len(ks)), squeeze=False)
    vmax = float(np.percentile(canon_img[canon_img > 0], 99.5)) if (canon_img > 0).any() else 1.0
    for row, k in enumerate(ks):
        for col, name in enumerate(names):
            seg = segs[name]
            low = lows[name][row, 0]
            ax_in, ax_ov = axes[2 * row, col], axes[2 * row + 1, col]
            ax_in.imshow(low, cmap="gray", interpolation="nearest")
            r = seg.card["input_size"]
            ax_in.set_title("%s\ninput %d×%d" % (name, r, r) if row == 0 else "input %d×%d" % (r, r), fontsize=8)
            ax_ov.imshow(canon_img[k], cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
            mask = canon[name][k] > 0
            if mask.any():
                ax_ov.imshow(np.ma.masked_where(~mask, mask), cmap=red, alpha=0.35, aspect=aspect,
                             interpolation="nearest", vmin=0, vmax=1)
                ax_ov.contour(mask, [0.5], colors=["#ff3b30"], linewidths=0.8)
            if ref_c is not None and ref_c[k].any():
                ax_ov.contour(ref_c[k], [0.5], colors=["#34c759"], linewidths=0.8, linestyles="dashed")
            agree = "" if basis is None else ", Dice %.2f" % dice(mask, basis[k] > 0)
            ax_ov.set_title("slice %d%s | %.1f mL" % (k, agree, seg.volume_ml()), fontsize=7)
        if ref_c is not None:
            ax_in, ax_ov = axes[2 * row, cols - 1], axes[2 * row + 1, cols - 1]
            ax_in.axis("off")
            if row == 0:
                ax_in.set_title("ground truth", fontsize=8)
            ax_ov.imshow(canon_img[k], cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
            if ref_c[k].any():
                ax_ov.contour(ref_c[k], [0.5], colors=["#34c759"], linewidths=1.0)
            ax_ov.set_title("slice %d (truth)" % k, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("LowResSeg: each model's actual input (top) and its mask on the full-resolution slice (bottom)\n"
                 "red = model, green dashed = %s; per-slice Dice against it. Radiological view (patient's right on the "
                 "left). Research use only." % ("ground truth" if ref_c is not None else "highest-resolution run"),
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    tmp = path + ".part.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
