"""Segmentation quality of every shipped model on labelled data, against a threshold floor.

Each model runs through the real inference path (onnxruntime on the shipped ONNX,
``LowResSegLib.inference.pipeline``); masks are scored per volume, in 3-D, on the source grid
with its spacing. Data sets (``--data``, comma-separated, each its own section of
docs/BENCHMARKS.md):

* ``phantom:N:SEED`` -- held-out phantoms, each in four twins that share anatomy, tumour
  and contrast: ``stripped`` (skull-stripped, 1 mm), ``raw`` (skull, scalp, neck, noisy
  background), ``raw-thick`` (raw on a clinical 3-6 mm grid) and ``healthy-raw`` (no tumour);
* ``real:val`` -- the real cases held out of training (``lowresseg fetch-real`` first);
* ``lgg:val`` -- the LGG validation patients (raw clinical FLAIR, skull on, ~5 mm; ``lowresseg
  fetch-real --source lgg`` first; the reserved institution CS is never read);
* ``msd:PATH`` or ``folder:PATH`` -- any labelled data of yours.

The floor is a per-volume threshold at mean + k·SD of the head-mask voxels (on a
skull-stripped volume: the brain mean + k·SD), k tuned on ``--tune-data``.

    python bench/quality.py                       # phantoms + real:val -> docs/BENCHMARKS.md, docs/quality-*
    python bench/quality.py --data msd:/data/Task01_BrainTumour --out /tmp/q
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

from LowResSegLib.inference.engines import LocalEngine  # noqa: E402
from LowResSegLib.images.geometry import Volume, to_canonical  # noqa: E402
from LowResSegLib.images.intensity import head_mask  # noqa: E402
from LowResSegLib.images.metrics import dice, hd95, volume_ml  # noqa: E402
from LowResSegLib.repository.modelstore import ModelRepository  # noqa: E402
from LowResSegLib.inference.pipeline import segment  # noqa: E402
from LowResSegLib.training.phantom import VARIANTS, cached_phantom  # noqa: E402
from bench.report import replace_section  # noqa: E402

BIG_ML = 10.0  # "every tumour over 10 mL gets Dice >= 0.5"
JHEAD, INTERP, FULL = "elunet-jhead-32to256", "elunet-interp-32to256", "elunet-full-256"


def zscore_in_head(image, spacing_kji):
    mask = head_mask(image, spacing_kji)
    vals = image[mask].astype(np.float64)
    if vals.size == 0:
        return np.zeros(image.shape, np.float32), mask
    return ((image - vals.mean()) / (vals.std() or 1.0)).astype(np.float32), mask


def lesion_contrast_sd(image, truth, spacing_kji):
    """How far the tumour stands out: (tumour mean - other head voxels' mean) / their SD."""
    from LowResSegLib.training.phantom import shown_contrast_sd

    return shown_contrast_sd(image, truth, head_mask(image, spacing_kji))


def threshold_mask(image, spacing_kji, k):
    """The floor: head-mask voxels brighter than their mean + k·SD."""
    z, mask = zscore_in_head(image, spacing_kji)
    return ((z > k) & mask).astype(np.uint8)


def tune_threshold(spec, ks):
    """k maximising the mean per-case Dice on ``spec`` (training data, never the test set)."""
    from LowResSegLib.training.slices import iter_cases

    scores = np.zeros(len(ks))
    n = 0
    for case in iter_cases(spec):
        sp = Volume(case.image, case.affine).spacing_kji
        z, mask = zscore_in_head(case.image, sp)
        for i, k in enumerate(ks):
            scores[i] += dice((z > k) & mask, case.label > 0)
        n += 1
    best = int(np.argmax(scores))
    return float(ks[best]), float(scores[best] / max(1, n))


def held_out_cases(spec, limit):
    """(case, variant) pairs: phantoms in their four twins, anything else as it is."""
    from LowResSegLib.training.slices import iter_cases, parse_data_spec

    d = parse_data_spec(spec)
    if d["kind"] != "phantom":
        for case in iter_cases(spec, limit=limit):
            yield case, "as is"
        return
    for idx in range(d["n"] if limit is None else min(limit, d["n"])):
        for variant in VARIANTS:
            yield cached_phantom(d["seed"], idx, variant), variant


def section_name(spec):
    kind = spec.partition(":")[0]
    return {"phantom": "quality-phantoms", "real": "quality-real"}.get(kind, "quality-" + kind)


def evaluate(spec, engines, k, limit):
    """Per-case rows, and for every model its worst case (arrays for the figure)."""
    from tqdm import tqdm

    rows, worst = [], {}
    floor = "threshold (k=%.2f)" % k
    cases = held_out_cases(spec, limit)
    for case, variant in tqdm(cases, desc=spec, unit="volume"):
        vol = Volume(case.image, case.affine)
        sp = vol.spacing_kji
        truth = case.label > 0
        preds = {floor: threshold_mask(case.image, sp, k)}
        for n, eng in engines.items():
            preds[n] = segment(vol, eng, keep_probabilities=False).labels
        t_ml = volume_ml(truth, sp)
        contrast = lesion_contrast_sd(case.image, truth, sp)
        for n, p in preds.items():
            row = {"case": case.case_id, "variant": variant, "model": n, "dice": dice(p, truth),
                   "hd95_mm": hd95(p, truth, sp) if t_ml > 0 else float("nan"),  # healthy: no surface to miss
                   "truth_ml": t_ml, "pred_ml": volume_ml(p, sp), "lesion_sd": contrast}
            rows.append(row)
            if t_ml >= BIG_ML and (n not in worst or row["dice"] < worst[n][0]["dice"]):
                worst[n] = (row, _figure_slice(case, p))
    return rows, worst, floor


def _figure_slice(case, pred):
    """The canonical axial slice with the most tumour: image, truth, prediction."""
    img = to_canonical(case.image, case.affine)[0]
    lab = to_canonical(case.label, case.affine)[0] > 0
    prd = to_canonical(pred, case.affine)[0] > 0
    k = int(np.argmax(lab.reshape(lab.shape[0], -1).sum(1)))
    return img[k].astype(np.float32), lab[k], prd[k]


def volume_error(row):
    """Signed relative volume error of one case: (predicted - true) / true (tumour cases only)."""
    return (row["pred_ml"] - row["truth_ml"]) / row["truth_ml"]


def summarise(rows, models):
    """Per (variant, model): mean Dice and HD95, worst Dice and failures on tumours >= 10 mL, mL on healthy."""
    out = {}
    for v in sorted(set(r["variant"] for r in rows), key=lambda v: list(VARIANTS).index(v) if v in VARIANTS else 0):
        for n in models:
            rs = [r for r in rows if r["variant"] == v and r["model"] == n]
            tum = [r for r in rs if r["truth_ml"] > 0]
            big = [r for r in rs if r["truth_ml"] >= BIG_ML]
            empty = [r for r in rs if r["truth_ml"] == 0]
            out[(v, n)] = {
                "n": len(rs), "n_tumour": len(tum),
                "dice": float(np.mean([r["dice"] for r in tum])) if tum else float("nan"),
                "hd95_mm": float(np.mean([r["hd95_mm"] for r in tum])) if tum else float("nan"),
                "worst_big": min((r["dice"] for r in big), default=float("nan")),
                "fail_big": sum(r["dice"] < 0.5 for r in big), "n_big": len(big),
                "healthy_ml_max": max((r["pred_ml"] for r in empty), default=float("nan")),
                "healthy_ml_mean": float(np.mean([r["pred_ml"] for r in empty])) if empty else float("nan"),
                # radiologists follow gliomas by volume: the bias (signed) and the typical miss (absolute)
                "vol_err_median": float(np.median([volume_error(r) for r in tum])) if tum else float("nan"),
                "abs_vol_err_median": float(np.median([abs(volume_error(r)) for r in tum])) if tum else float("nan"),
            }
    return out


def paired(rows, a, b, variant):
    """Per-case Dice differences a - b on the cases with a tumour, with a 95 % bootstrap interval of their mean."""
    by = {}
    for r in rows:
        if r["variant"] == variant and r["truth_ml"] > 0 and r["model"] in (a, b):
            by.setdefault(r["case"], {})[r["model"]] = r["dice"]
    d = [c[a] - c[b] for c in by.values() if a in c and b in c]
    if not d:
        return None
    return {"n": len(d), "wins": int(sum(x > 0 for x in d)), "losses": int(sum(x < 0 for x in d)),
            "mean": float(np.mean(d)), "median": float(np.median(d)), "ci95": bootstrap_ci(d)}


def bootstrap_ci(diffs, resamples=10000, seed=0):
    """Percentile interval of the mean of paired differences, cases resampled with replacement.

    Why: with 8-11 cases one case can move a mean by 0.05; an interval that excludes 0 is what
    "better by a clear margin" should mean. Seeded, so a rerun prints the same interval.
    """
    d = np.asarray(diffs, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def _ci(p):
    return "95 %% CI %+.3f to %+.3f" % p["ci95"]


def twin_gaps(rows, model):
    """Dice(raw twin) - Dice(stripped twin), per case with a tumour."""
    by = {}
    for r in rows:
        if r["model"] == model and r["truth_ml"] > 0 and r["variant"] in ("stripped", "raw"):
            by.setdefault(r["case"], {})[r["variant"]] = r["dice"]
    return [c["raw"] - c["stripped"] for c in by.values() if len(c) == 2]


def report(spec, rows, summary, models, floor, cards, command, n_cases, k_info):
    f = lambda x, fmt="%.3f": "–" if x != x else fmt % x  # noqa: E731 (nan -> dash)
    title = "real cases held out of training" if spec.startswith("real:") else \
        "LGG patients held out of training (raw clinical FLAIR, skull on, ~5 mm)" if spec.startswith("lgg:") else \
        "held-out phantoms" if spec.startswith("phantom:") else "`%s`" % spec
    lines = ["## Quality on %s" % title, "",
             "Produced by `%s` on %s: %d case(s) of `%s`. %s" % (command, time.strftime("%Y-%m-%d"), n_cases, spec,
                                                                  k_info),
             "Every model runs the real inference path (onnxruntime, `LowResSegLib.inference.pipeline`); Dice and HD95 are per "
             "volume in 3-D on the source grid, averaged over the cases with a tumour. *worst* and *fails* look at "
             "tumours of ≥ %g mL (*fails*: Dice < 0.5)." % BIG_ML, ""]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for v in variants:
        if v != "as is":
            lines += ["**%s**" % v, ""]
        if v.startswith("healthy"):
            lines += ["| model | healthy cases | predicted mL, mean | predicted mL, max |", "|---|---|---|---|"]
            for n in [floor] + models:
                s = summary[(v, n)]
                lines.append("| %s | %d | %s | %s |" % (n, s["n"], f(s["healthy_ml_mean"], "%.1f"),
                                                         f(s["healthy_ml_max"], "%.1f")))
        else:
            lines += ["| model | input | Dice | volume error, median (signed) | volume error, median (absolute) "
                      "| HD95 mm | worst | fails | healthy mL (max) | head params |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for n in [floor] + models:
                s, c = summary[(v, n)], cards.get(n)
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %d/%d | %s | %s |" % (
                    n, "%d²→%d²" % (c["input_size"], c["output_size"]) if c else "full res", f(s["dice"]),
                    f(100 * s["vol_err_median"], "%+.1f %%"), f(100 * s["abs_vol_err_median"], "%.1f %%"),
                    f(s["hd95_mm"], "%.1f"), f(s["worst_big"]), s["fail_big"], s["n_big"],
                    f(s["healthy_ml_max"], "%.1f"), str(c["params"]["head"]) if c else "0"))
        lines.append("")
    for v in variants:
        if v.startswith("healthy"):
            continue
        p = paired(rows, JHEAD, INTERP, v)
        if p:
            base = summary[(v, INTERP)]["dice"]
            lines.append("- %s: **jhead vs interp at 32→256: %+.1f %%** mean Dice (relative; the paper claims +5.5 %%), "
                         "better on %d and worse on %d of %d cases (median ΔDice %+.4f; mean ΔDice %+.3f, %s)." % (
                             v, 100 * p["mean"] / base if base else float("nan"), p["wins"], p["losses"], p["n"],
                             p["median"], p["mean"], _ci(p)))
        for n in models:
            q = paired(rows, n, floor, v)
            if q:
                lines.append("- %s: %s vs the floor: mean ΔDice %+.3f (%s; better on %d of %d)." % (
                    v, n, q["mean"], _ci(q), q["wins"], q["n"]))
            q = paired(rows, n, FULL, v) if n != FULL else None
            if q:
                lines.append("- %s: %s vs full-256: mean ΔDice %+.3f (%s; better on %d of %d)." % (
                    v, n, q["mean"], _ci(q), q["wins"], q["n"]))
    if len(variants) == 1 and n_cases <= 30:  # a set of real cases: every case in the table
        lines += ["", "Per case (Dice; tumour volume of the truth; lesion contrast in SDs of the other head voxels):",
                  "", "| case | truth mL | contrast SD | %s |" % " | ".join([floor] + models),
                  "|---|---|---|%s" % ("---|" * (1 + len(models)))]
        for case in dict.fromkeys(r["case"] for r in rows):
            rs = {r["model"]: r for r in rows if r["case"] == case and r["variant"] == variants[0]}
            lines.append("| %s | %.1f | %.2f | %s |" % (case, rs[floor]["truth_ml"], rs[floor]["lesion_sd"],
                                                        " | ".join("%.3f" % rs[n]["dice"] for n in [floor] + models)))
    gaps = {n: twin_gaps(rows, n) for n in models}
    if any(gaps.values()):
        lines += ["", "Raw input vs its skull-stripped twin, Dice(raw) − Dice(stripped) per case:", "",
                  "| model | mean | worst | within 0.05 |", "|---|---|---|---|"]
        for n in models:
            g = gaps[n]
            if g:
                lines.append("| %s | %+.3f | %+.3f | %d/%d |" % (n, np.mean(g), min(g), sum(abs(x) <= 0.05 for x in g),
                                                                  len(g)))
    if _patient_set(spec):
        lines += ["", "Per-case numbers: `%s_cases.csv` (beside this file); no figure: the project commits no image "
                  "of a real patient, so real cases are shown as numbers only." % section_name(spec)]
    else:
        lines += ["", "Per-case numbers: `%s_cases.csv`; worst case of each model: `%s.png` (beside this file)."
                  % (section_name(spec), section_name(spec))]
    return lines


def _patient_set(spec):
    """The project's real-patient sets (real:…, lgg:…): their results are published as numbers, never images."""
    return str(spec).split(":", 1)[0] in ("real", "lgg")


def plot_worst(worst, order, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in order if n in worst]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names), 3.3), squeeze=False)
    for ax, n in zip(axes[0], names):
        row, (img, lab, prd) = worst[n]
        vmax = float(np.percentile(img, 99.5)) or 1.0
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        if lab.any():
            ax.contour(lab, [0.5], colors="lime", linewidths=1.0)
        if prd.any():
            ax.contour(prd, [0.5], colors="red", linewidths=1.0)
        ax.set_title("%s\n%s %s\nDice %.2f, %.0f mL" % (n, row["case"], row["variant"], row["dice"], row["truth_ml"]),
                     fontsize=7)
        ax.axis("off")
    fig.suptitle(title + " — worst case per model (green: truth, red: model)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    from LowResSegLib.training.slices import parse_data_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="phantom:16:1001,real:val",
                    help="comma-separated held-out data sets (phantom seeds must differ from training's)")
    ap.add_argument("--train-seed", type=int, default=1, help="the phantom seed the models were trained on")
    ap.add_argument("--tune-data", default="real:train", help="training data for tuning the floor's k")
    ap.add_argument("--cases", type=int, default=None, help="use only the first N cases of each data set")
    ap.add_argument("--models", default=None, help="comma-separated subset (default: all shipped)")
    ap.add_argument("--repository", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-postprocessing", action="store_true",
                    help="ignore the models' component filters (to measure what they do)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"), help="folder for BENCHMARKS.md and figures")
    ap.add_argument("--write-cards", action="store_true",
                    help="write each model's lgg:val and real:val results into its card (both must be in --data)")
    ap.add_argument("--ensemble", metavar="NAME", help="measure this ensemble instead (bench/ensemble.py: vs its "
                    "best member, review-score AUROC, scatter); --data, --cases, --repository, --threads, --out apply")
    args = ap.parse_args(argv)
    if args.ensemble:  # issue 31
        from bench.ensemble import main as ensemble_main

        return ensemble_main(["--ensemble", args.ensemble, "--data", args.data, "--out", args.out,
                              "--threads", str(args.threads)] + (["--cases", str(args.cases)] if args.cases else [])
                             + (["--repository", args.repository] if args.repository else []))

    specs = [s for s in args.data.split(",") if s]
    for spec in specs:
        d = parse_data_spec(spec)
        if d.get("seed") == args.train_seed:
            raise SystemExit("the held-out phantoms must use a seed other than the training seed %d" % args.train_seed)
        if d["kind"] in ("real", "lgg") and d["split"] != "val":
            raise SystemExit("only real:val and lgg:val are held out of training; %s is not" % spec)
    repo = ModelRepository(args.repository)
    models = args.models.split(",") if args.models else repo.graph_names()  # ensembles: --ensemble NAME
    engines = {n: LocalEngine(n, args.repository, threads=args.threads) for n in models}
    if args.no_postprocessing:  # the ablation: the same graphs without their cards' component filters
        for e in engines.values():
            e.card = {k: v for k, v in e.card.items() if k != "postprocessing"}
    cards = {n: e.card for n, e in engines.items()}

    ks = np.round(np.arange(0.5, 3.01, 0.25), 2)
    k, k_dice = tune_threshold(args.tune_data, ks)
    k_info = "Floor: k = %.2f, tuned on `%s` (mean Dice %.3f there)." % (k, args.tune_data, k_dice)
    print(k_info)
    command = "python bench/quality.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for spec in specs:
        rows, worst, floor = evaluate(spec, engines, k, args.cases)
        name = section_name(spec)
        with open(os.path.join(args.out, name + "_cases.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        summary = summarise(rows, [floor] + models)
        n_cases = len(set(r["case"] for r in rows))
        lines = report(spec, rows, summary, models, floor, cards, command.strip(), n_cases, k_info)
        print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), name, lines))
        if not _patient_set(spec):  # issue 30: no real patient's scan in a committed figure
            plot_worst(worst, [floor] + models, os.path.join(args.out, name + ".png"), spec)
        results[spec] = {"k": k, "command": command, "summary": {"%s|%s" % key: val for key, val in summary.items()}}
    write_results(os.path.join(args.out, "quality.json"), results)
    if args.write_cards:
        for n in models:
            metrics = card_metrics(results, n)
            if metrics:
                write_card_metrics(repo, n, metrics)
                print("%s: card metrics %s" % (n, metrics))
    return 0


def card_metrics(results, model):
    """The card's ``metrics`` from this run: Dice and median volume errors on ``lgg:val`` and ``real:val``,
    and ``real_patients_dice`` (their mean), which ``--model auto`` ranks by; {} unless both were measured."""
    out = {}
    for spec, key in (("lgg:val", "lgg_val"), ("real:val", "real_val")):
        s = (results.get(spec) or {}).get("summary", {}).get("as is|%s" % model)
        if not s:
            return {}
        out[key + "_dice"] = round(s["dice"], 4)
        out[key + "_volume_error_median"] = round(s["vol_err_median"], 4)
        out[key + "_abs_volume_error_median"] = round(s["abs_vol_err_median"], 4)
        out[key + "_cases"] = s["n_tumour"]
    out["real_patients_dice"] = round((out["lgg_val_dice"] + out["real_val_dice"]) / 2, 4)
    out["real_patients_measured_by"] = "bench/quality.py on lgg:val and real:val (patients never trained on)"
    return out


def write_card_metrics(repo, model, metrics):
    """Replace ``model``'s card with one whose ``metrics`` hold ``metrics`` (the graph is kept as it is)."""
    from LowResSegLib.training.export import replace_card

    card = dict(repo.card(model))
    card["metrics"] = dict(card.get("metrics") or {}, **metrics)
    replace_card(repo.model_dir(model), card)


def write_results(path, results):
    """Merge this run's summaries into ``path``, one entry per data spec, as BENCHMARKS.md keeps one
    section per spec: a run on real:val alone must not drop the phantoms' numbers."""
    merged = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        merged = old.get("by_data", {})
    merged.update(results)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump({"by_data": merged}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
