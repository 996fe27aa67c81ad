"""Segmentation quality of every shipped model on held-out phantoms, plus a threshold floor.

Each model runs through the real inference path (onnxruntime on the shipped ONNX,
LowResSegLib.pipeline): labels are compared with the truth per volume on the source
grid, in 3-D, with the voxel spacing. The floor is a non-learned per-volume threshold
at brain mean + k·SD (k tuned on the training phantoms).

    python bench/quality.py                 # writes docs/BENCHMARKS.md (quality section) + docs/quality.*
    python bench/quality.py --cases 4 --out DIR   # quick look, writes to DIR only
"""

import argparse
import csv
import json
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.engines import LocalEngine  # noqa: E402
from LowResSegLib.intensity import normalize_volume  # noqa: E402
from LowResSegLib.geometry import Volume  # noqa: E402
from LowResSegLib.metrics import dice, hd95, iou, volume_ml  # noqa: E402
from LowResSegLib.modelstore import ModelRepository  # noqa: E402
from LowResSegLib.pipeline import segment_array  # noqa: E402
from bench.report import replace_section  # noqa: E402



def threshold_mask(image, k):
    """The floor: voxels brighter than brain mean + k·SD (z-score over non-zero voxels)."""
    return (normalize_volume(image) > k).astype(np.uint8)


def tune_threshold(train_spec, ks, cache_dir):
    """k maximising mean per-case Dice on the (cached, normalised) training slices."""
    from LowResSegLib.training.slices import SliceCache

    cache = SliceCache.build(train_spec, cache_dir, progress=True)
    scores = []
    for k in ks:
        scores.append(np.mean([dice(im.astype(np.float32) > k, lb) for im, lb in zip(cache.images, cache.labels)]))
    best = int(np.argmax(scores))
    return float(ks[best]), float(scores[best])


def main(argv=None):
    from tqdm import tqdm

    from LowResSegLib.training.slices import iter_cases, parse_data_spec
    from LowResSegLib.training.trainer import default_cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="phantom:24:1001", help="held-out set (seed disjoint from training's)")
    ap.add_argument("--train-data", default="phantom:80:1", help="the models' training set (its seed must differ)")
    ap.add_argument("--tune-data", default="phantom:16:1",
                    help="training cases for tuning the threshold floor's k (default: the first 16 training phantoms)")
    ap.add_argument("--cases", type=int, default=None, help="use only the first N held-out cases")
    ap.add_argument("--models", default=None, help="comma-separated subset (default: all shipped)")
    ap.add_argument("--repository", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"), help="folder for BENCHMARKS.md and figures")
    args = ap.parse_args(argv)

    test_seed = parse_data_spec(args.data).get("seed")
    for spec in (args.train_data, args.tune_data):
        if test_seed is not None and parse_data_spec(spec).get("seed") == test_seed:
            raise SystemExit("the held-out phantoms must use a seed other than the training seed %d" % test_seed)
    repo = ModelRepository(args.repository)
    names = args.models.split(",") if args.models else repo.names()
    engines = {n: LocalEngine(n, args.repository, threads=args.threads) for n in names}

    ks = np.round(np.arange(0.5, 3.01, 0.1), 2)
    k, k_dice = tune_threshold(args.tune_data, ks, default_cache_dir())
    print("threshold floor: k = %.1f (mean Dice %.3f on the training phantoms)" % (k, k_dice))

    rows = []
    cases = list(iter_cases(args.data, limit=args.cases))
    for case in tqdm(cases, desc="held-out cases", unit="case"):
        sp = Volume(case.image, case.affine).spacing_kji
        truth = case.label > 0
        preds = {"threshold (k=%.1f)" % k: threshold_mask(case.image, k)}
        for n, eng in engines.items():
            preds[n] = segment_array(case.image, case.affine, eng)[0]
        for n, p in preds.items():
            rows.append({"case": case.case_id, "model": n, "dice": dice(p, truth), "iou": iou(p, truth),
                         "hd95_mm": hd95(p, truth, sp), "truth_ml": volume_ml(truth, sp)})

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality_cases.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    order = ["threshold (k=%.1f)" % k] + names
    summary = {}
    for n in order:
        rs = [r for r in rows if r["model"] == n]
        summary[n] = {m: (float(np.mean([r[m] for r in rs])), float(np.std([r[m] for r in rs])))
                      for m in ("dice", "iou", "hd95_mm")}
    cards = {n: e.card for n, e in engines.items()}
    gain = paired = None
    if "elunet-jhead-32to256" in summary and "elunet-interp-32to256" in summary:
        dj, di = summary["elunet-jhead-32to256"]["dice"][0], summary["elunet-interp-32to256"]["dice"][0]
        gain = (dj - di) / di * 100.0
        by_case = {}
        for r in rows:
            by_case.setdefault(r["case"], {})[r["model"]] = r
        diffs = [(c["elunet-jhead-32to256"]["dice"] - c["elunet-interp-32to256"]["dice"],
                  c["elunet-jhead-32to256"]["truth_ml"]) for c in by_case.values()]
        big = [d for d, ml in diffs if ml >= 10.0]
        paired = {"wins": sum(d > 0 for d, _ in diffs), "losses": sum(d < 0 for d, _ in diffs), "n": len(diffs),
                  "median_delta": float(np.median([d for d, _ in diffs])),
                  "wins_ge_10ml": sum(d > 0 for d in big), "n_ge_10ml": len(big),
                  "mean_delta_ge_10ml": float(np.mean(big)) if big else float("nan")}

    command = "python bench/quality.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines = ["## Quality on held-out phantoms", "",
             "Produced by `%s` on %s (%d held-out cases, `%s`; the training set is `%s`)."
             % (command.strip(), time.strftime("%Y-%m-%d"), len(cases), args.data, args.train_data),
             "Each model runs through the real inference path (onnxruntime on the shipped ONNX, "
             "`LowResSegLib.pipeline`); metrics are per volume, 3-D, on the source grid with its spacing, "
             "then averaged (± SD). HD95 is medpy's pooled-surface 95th percentile; empty-mask conventions as in "
             "`LowResSegLib/metrics.py`.", "",
             "| model | input | Dice | IoU | HD95 (mm) | head params | head MMACs | backbone MMACs |",
             "|---|---|---|---|---|---|---|---|"]
    for n in order:
        s = summary[n]
        c = cards.get(n)
        cols = ["%d²→%d²" % (c["input_size"], c["output_size"]) if c else "full res",
                "%.3f ± %.3f" % s["dice"], "%.3f ± %.3f" % s["iou"], "%.1f ± %.1f" % s["hd95_mm"],
                str(c["params"]["head"]) if c else "0",
                "%.2f" % (c["macs"]["head"] / 1e6) if c else "–",
                "%.1f" % (c["macs"]["backbone"] / 1e6) if c else "–"]
        lines.append("| %s | %s |" % (n, " | ".join(cols)))
    lines.append("")
    if gain is not None:
        lines.append("**jhead gain over interp at 32→256: %+.1f %% mean Dice** (relative; the paper claims +5.5 %% "
                     "for its head, metric unnamed)." % gain)
        lines.append("Paired per case: jhead better on %d, worse on %d of %d cases (median ΔDice %+.4f); on the %d "
                     "tumours of ≥ 10 mL it is better on %d (mean ΔDice %+.4f)." % (
                         paired["wins"], paired["losses"], paired["n"], paired["median_delta"], paired["n_ge_10ml"],
                         paired["wins_ge_10ml"], paired["mean_delta_ge_10ml"]))
    floor = summary[order[0]]["dice"][0]
    beaten = [n for n in names if summary[n]["dice"][0] > floor]
    lines.append("Models beating the threshold floor (Dice %.3f): %d of %d%s." % (
        floor, len(beaten), len(names),
        "" if len(beaten) == len(names) else " — NOT beaten by: " + ", ".join(sorted(set(names) - set(beaten)))))
    lines += ["", "Per-case numbers: `quality_cases.csv`; figure: `quality.png` (beside this file)."]
    print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), "quality", lines))
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump({"summary": summary, "k": k, "jhead_gain_pct": gain, "jhead_vs_interp_paired": paired,
                   "command": command}, f, indent=2)
    plot(summary, order, rows, os.path.join(args.out, "quality.png"))
    return 0


def plot(summary, order, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (m, label) in zip(axes, (("dice", "Dice (higher is better)"), ("hd95_mm", "HD95 mm (lower is better)"))):
        vals = [summary[n][m][0] for n in order]
        colors = ["#999999"] + ["#d95f02" if "jhead" in n else "#7570b3" if "interp" in n else "#1b9e77"
                                for n in order[1:]]
        ax.barh(range(len(order)), vals, color=colors, alpha=0.75)
        for y, n in enumerate(order):  # every held-out case as a dot: the spread, honestly
            pts = [r[m] for r in rows if r["model"] == n]
            ax.scatter(pts, y + np.linspace(-0.25, 0.25, len(pts)), s=9, color="black", zorder=3)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels(order, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(label)
    fig.suptitle("Held-out phantoms: mean per volume (bars) and every case (dots)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
