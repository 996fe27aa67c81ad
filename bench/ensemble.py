"""Issue 31: the ensemble against its best member, and how well its review score finds failures.

One run of the ensemble per case gives everything (its members' masks come with it, from the same prepared
volume, through the real inference path):

* **ensemble vs best member**, per data set: paired per-case Dice differences (ensemble - the member with the
  highest mean Dice on that set), mean with a 95 % bootstrap interval (``bench/quality.py``'s ``paired``);
* **review score** (disagreeing volume / union of the members' masks, ``LowResSegLib.inference.ensemble``) as a
  detector of failures over the patient sets (``lgg:val`` + ``real:val``, tumour cases): AUROC for "ensemble
  Dice < 0.5" and for "ensemble volume error > 25 %", each with a 95 % bootstrap interval over cases; the
  threshold that maximises sensitivity + specificity (Youden) on these cases, with its sensitivity and
  specificity in-sample and leave-one-out (the threshold chosen on the other cases: the honest estimate);
  the same for 1 - mean pairwise Dice of the members, for comparison;
* a scatter of review score against Dice (``ensemble-review.png``: numbers only, no patient image).

    python bench/quality.py --ensemble elunet-ensemble-16-32-interp32 --data lgg:val,real:val,phantom:8:1001
    python bench/ensemble.py --ensemble elunet-ensemble-16-32-interp32 --data lgg:val,real:val --write-card

``--write-card`` writes the chosen threshold into the ensemble card's ``ensemble.review``; ``--write-metrics``
its Dice on ``lgg:val`` and ``real:val`` into its ``metrics`` (``real_patients_dice``: what ``--model auto`` ranks
by, so write it only when the other cards carry theirs from the same sets, or auto would rank it above them all).
``--from-cases CSV`` recomputes the report (and ``--write-card``) from an earlier run's ``ensemble_cases.csv``
without segmenting again.
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

from LowResSegLib.images.geometry import Volume  # noqa: E402
from LowResSegLib.images.metrics import dice, volume_ml  # noqa: E402
from LowResSegLib.inference.ensemble import open_engine  # noqa: E402
from LowResSegLib.inference.pipeline import segment  # noqa: E402
from LowResSegLib.repository.modelstore import ModelRepository  # noqa: E402
from bench.quality import held_out_cases, paired  # noqa: E402
from bench.report import replace_section  # noqa: E402

FAIL_DICE = 0.5
FAIL_VOLUME = 0.25
SECTION = "ensemble"


def auroc(scores, positives):
    """P(score of a random positive > score of a random negative), ties counting half; nan without both classes."""
    s, y = np.asarray(scores, np.float64), np.asarray(positives, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def auroc_ci(scores, positives, resamples=4000, seed=0):
    """95 % percentile interval of the AUROC, cases resampled with replacement (resamples lacking a class skipped)."""
    s, y = np.asarray(scores, np.float64), np.asarray(positives, bool)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, len(s), len(s))
        if y[idx].any() and (~y[idx]).any():
            values.append(auroc(s[idx], y[idx]))
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def sens_spec(scores, positives, threshold):
    """(sensitivity, specificity) of the flag ``score >= threshold``."""
    s, y = np.asarray(scores, np.float64), np.asarray(positives, bool)
    flag = s >= threshold
    sens = float(flag[y].mean()) if y.any() else float("nan")
    spec = float((~flag[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


def youden_threshold(scores, positives):
    """The threshold (a midpoint between observed scores) maximising sensitivity + specificity - 1."""
    s = np.unique(np.asarray(scores, np.float64))
    candidates = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2.0, [s[-1] + 1e-6]]) if len(s) else np.array([0.5])
    best, best_j = float(candidates[0]), -np.inf
    for t in candidates:
        sens, spec = sens_spec(scores, positives, t)
        j = (0 if sens != sens else sens) + (0 if spec != spec else spec) - 1
        if j > best_j + 1e-12:
            best, best_j = float(t), j
    return min(max(best, 1e-3), 0.999)


def leave_one_out(scores, positives):
    """(sensitivity, specificity) when each case is flagged by the threshold chosen on the others."""
    s, y = np.asarray(scores, np.float64), np.asarray(positives, bool)
    flags = np.zeros(len(s), bool)
    for i in range(len(s)):
        keep = np.arange(len(s)) != i
        flags[i] = s[i] >= youden_threshold(s[keep], y[keep])
    sens = float(flags[y].mean()) if y.any() else float("nan")
    spec = float((~flags[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


def pairwise_score(masks):
    """1 - mean pairwise Dice of the members' masks (two empty masks agree: Dice 1)."""
    ds = []
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            ds.append(1.0 if not masks[a].any() and not masks[b].any() else dice(masks[a], masks[b]))
    return 1.0 - float(np.mean(ds))


def long_rows(cases, models):
    """The per-(case, model) rows that ``bench/quality.py``'s ``paired`` reads."""
    return [{"case": c["case"], "variant": c["variant"], "model": m, "dice": c["dice|" + m], "truth_ml": c["truth_ml"],
             "pred_ml": c["ml|" + m]} for c in cases for m in models]


def cases_from_csv(path):
    """The per-case rows of an earlier run (``ensemble_cases.csv``), numbers as numbers."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    text = ("set", "case", "variant")
    return [{k: (v if k in text else float(v)) for k, v in r.items()} for r in rows]


def evaluate(spec, engine, limit=None, progress=True):
    """Per case: the ensemble's and every member's Dice and mL, the review scores, the time."""
    from tqdm import tqdm

    name = engine.card["name"]
    cases = []
    for case, variant in tqdm(held_out_cases(spec, limit), desc=spec, unit="volume", disable=not progress):
        vol = Volume(case.image, case.affine)
        sp = vol.spacing_kji
        truth = case.label > 0
        seg = segment(vol, engine, keep_probabilities=False)
        t_ml = volume_ml(truth, sp)
        row = {"set": spec, "case": case.case_id, "variant": variant, "truth_ml": t_ml,
               "review_score": seg.review_score, "pairwise_score": pairwise_score(seg.member_labels),
               "disagree_ml": seg.disagree_ml(), "seconds": seg.timings["total_s"]}
        for model, labels in [(name, seg.labels)] + list(zip(seg.member_names, seg.member_labels)):
            row["dice|" + model], row["ml|" + model] = dice(labels, truth), volume_ml(labels, sp)
        cases.append(row)
    return cases


def failures(cases, name):
    """Per tumour case: (Dice < 0.5, |volume error| > 25 %) of the ensemble."""
    dice_fail = [c["dice|" + name] < FAIL_DICE for c in cases]
    vol_fail = [abs(c["ml|" + name] - c["truth_ml"]) / c["truth_ml"] > FAIL_VOLUME for c in cases]
    return np.array(dice_fail), np.array(vol_fail)


def detection(cases, name, score_key):
    """AUROC (with CI) for both failures, and the Youden threshold's sensitivity/specificity for Dice < 0.5."""
    scores = [c[score_key] for c in cases]
    dice_fail, vol_fail = failures(cases, name)
    t = youden_threshold(scores, dice_fail)
    return {
        "n": len(cases), "dice_failures": int(dice_fail.sum()), "volume_failures": int(vol_fail.sum()),
        "auroc_dice": auroc(scores, dice_fail), "auroc_dice_ci95": auroc_ci(scores, dice_fail),
        "auroc_volume": auroc(scores, vol_fail), "auroc_volume_ci95": auroc_ci(scores, vol_fail),
        "threshold": t, "in_sample": sens_spec(scores, dice_fail, t), "leave_one_out": leave_one_out(scores, dice_fail),
    }


def scatter(cases, name, threshold, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    markers = {"lgg": ("o", "#3A9BDC"), "real": ("s", "#E17012"), "phantom": ("^", "#6DB33F")}
    for spec in dict.fromkeys(c["set"] for c in cases):
        marker, colour = markers.get(spec.split(":")[0], ("D", "#777777"))
        cs = [c for c in cases if c["set"] == spec]
        if cs:
            ax.scatter([c["review_score"] for c in cs], [c["dice|" + name] for c in cs], marker=marker, c=colour,
                       s=22, label="%s (%d)" % (cs[0]["set"], len(cs)), alpha=0.8, edgecolors="none")
    ax.axhline(FAIL_DICE, color="grey", lw=0.8, ls=":")
    ax.axvline(threshold, color="#D94F6B", lw=1.0, ls="--", label="review flag at %.2f" % threshold)
    ax.set_xlabel("review score (members' disagreeing volume / union)")
    ax.set_ylabel("ensemble Dice against the truth")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("%s: review score vs Dice, per case" % name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(name, members, by_set, long_by_set, patient_cases, det, det_pair, command):
    def ci(p):
        return "%+.3f (95 %% CI %+.3f to %+.3f; better on %d, worse on %d of %d)" % (
            p["mean"], p["ci95"][0], p["ci95"][1], p["wins"], p["losses"], p["n"])

    lines = ["## Ensemble and review flag (issue 31)", "",
             "Produced by `%s` on %s. `%s` = mean of the probabilities of %s on the source grid, then 0.5 "
             "(`LowResSegLib.inference.ensemble`); each case runs once through the real inference path and the "
             "members' masks come from that same run. Review score = the volume where some but not all members "
             "call tumour over the volume any member calls tumour." % (command, time.strftime("%Y-%m-%d"), name,
                                                                      ", ".join(members)), "",
             "| data | variant | cases with tumour | %s | ensemble − best member, Dice |" % " | ".join(
                 [name] + members), "|---|---|---|%s---|" % ("---|" * (1 + len(members)))]
    for spec, cases in by_set.items():
        for variant in dict.fromkeys(c["variant"] for c in cases):
            tum = [c for c in cases if c["variant"] == variant and c["truth_ml"] > 0]
            if not tum:
                continue
            means = {m: float(np.mean([c["dice|" + m] for c in tum])) for m in [name] + members}
            best = max(members, key=lambda m: means[m])
            p = paired(long_by_set[spec], name, best, variant)
            lines.append("| %s | %s | %d | %s | vs %s: %s |" % (
                spec, variant, len(tum), " | ".join("%.3f" % means[m] for m in [name] + members), best,
                ci(p) if p else "–"))
    lines.append("")
    if det:
        lines += ["Review score as a failure detector over the real-data sets (%d tumour cases of %s; failures of the "
                  "ensemble: %d with Dice < %.1f, %d with |volume error| > %d %%):" % (
                      det["n"], " + ".join(sorted(set(c["set"] for c in patient_cases))), det["dice_failures"],
                      FAIL_DICE, det["volume_failures"], 100 * FAIL_VOLUME), "",
                  "| score | AUROC, Dice < 0.5 | AUROC, volume error > 25 % | threshold (Youden, Dice < 0.5) "
                  "| sensitivity / specificity, in-sample | sensitivity / specificity, leave-one-out |",
                  "|---|---|---|---|---|---|"]
        for label, d in (("disagreeing volume / union (shipped)", det),
                         ("1 − mean pairwise Dice of the members", det_pair)):
            lines.append("| %s | **%.3f** (95 %% CI %.3f–%.3f) | %.3f (95 %% CI %.3f–%.3f) | %.2f | %.2f / %.2f | "
                         "%.2f / %.2f |" % (label, d["auroc_dice"], d["auroc_dice_ci95"][0], d["auroc_dice_ci95"][1],
                                            d["auroc_volume"], d["auroc_volume_ci95"][0], d["auroc_volume_ci95"][1],
                                            d["threshold"], d["in_sample"][0], d["in_sample"][1],
                                            d["leave_one_out"][0], d["leave_one_out"][1]))
        lines += ["", "The in-sample numbers use the threshold chosen on the same cases (optimistic); the "
                  "leave-one-out ones flag each case by the threshold chosen on the others. Scatter: "
                  "`ensemble-review.png` (numbers only).", ""]
    lines += ["Per-case numbers: `ensemble_cases.csv` (beside this file)."]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ensemble", default="elunet-ensemble-16-32-interp32")
    ap.add_argument("--data", default="lgg:val,real:val")
    ap.add_argument("--cases", type=int, default=None, help="only the first N cases of each data set")
    ap.add_argument("--repository", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--write-card", action="store_true", help="write the chosen review threshold into the card")
    ap.add_argument("--write-metrics", action="store_true", help="write the measured lgg:val / real:val Dice into the "
                                                                 "card's metrics (what --model auto ranks by)")
    ap.add_argument("--from-cases", metavar="CSV",
                    help="report from an earlier run's ensemble_cases.csv (no inference)")
    args = ap.parse_args(argv)

    repo = ModelRepository(args.repository)
    if not repo.is_ensemble(args.ensemble):
        raise SystemExit("%s is not an ensemble" % args.ensemble)
    name, members = args.ensemble, repo.members(args.ensemble)
    command = "python bench/ensemble.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                              else sys.argv[1:]))
    by_set = {}
    if args.from_cases:
        for c in cases_from_csv(args.from_cases):
            by_set.setdefault(c["set"], []).append(c)
    else:
        engine = open_engine(args.ensemble, args.repository, threads=args.threads)
        for spec in [s for s in args.data.split(",") if s]:
            by_set[spec] = evaluate(spec, engine, args.cases)
    long_by_set = {spec: long_rows(cs, [name] + members) for spec, cs in by_set.items()}
    all_cases = [c for cs in by_set.values() for c in cs]
    patient = [c for c in all_cases if not c["set"].startswith("phantom:") and c["truth_ml"] > 0]  # real data
    det = detection(patient, name, "review_score") if patient else None
    det_pair = detection(patient, name, "pairwise_score") if patient else None
    os.makedirs(args.out, exist_ok=True)
    if not args.from_cases:
        with open(os.path.join(args.out, "ensemble_cases.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(all_cases[0]))
            w.writeheader()
            w.writerows(all_cases)
    if det:
        scatter(patient + [c for c in all_cases if c["set"].startswith("phantom:") and c["truth_ml"] > 0], name,
                det["threshold"], os.path.join(args.out, "ensemble-review.png"))
    lines = report(name, members, by_set, long_by_set, patient, det, det_pair, command.strip())
    print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), SECTION, lines))
    with open(os.path.join(args.out, "ensemble.json"), "w") as f:
        json.dump({"command": command, "review": det, "pairwise": det_pair}, f, indent=2)
    if (args.write_card and det) or args.write_metrics:
        path = os.path.join(repo.model_dir(name), "lowresseg.json")
        with open(path) as f:
            card = json.load(f)
    if args.write_card and det:
        card["ensemble"]["review"] = {
            "threshold": round(det["threshold"], 3),
            "chosen_on": "%s: %d tumour cases, Youden's J for ensemble Dice < %.1f (bench/ensemble.py)" % (
                " + ".join(sorted(set(c["set"] for c in patient))), det["n"], FAIL_DICE),
            "auroc_dice_below_0.5": round(det["auroc_dice"], 3),
            "sensitivity_leave_one_out": round(det["leave_one_out"][0], 3),
            "specificity_leave_one_out": round(det["leave_one_out"][1], 3)}
    if args.write_metrics:
        measured = {}
        for spec, key in (("lgg:val", "lgg_val"), ("real:val", "real_val")):
            tum = [c for c in by_set.get(spec, []) if c["truth_ml"] > 0]
            if tum:
                measured[key + "_dice"] = round(float(np.mean([c["dice|" + name] for c in tum])), 4)
                measured[key + "_cases"] = len(tum)
        if "lgg_val_dice" in measured and "real_val_dice" in measured:  # what --model auto ranks by
            measured["real_patients_dice"] = round((measured["lgg_val_dice"] + measured["real_val_dice"]) / 2, 4)
            measured["real_patients_measured_by"] = "bench/ensemble.py on lgg:val and real:val (never trained on)"
            card["metrics"] = dict(card.get("metrics") or {}, **measured)
    if (args.write_card and det) or args.write_metrics:
        with open(path + ".part", "w") as f:
            json.dump(card, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(path + ".part", path)
        what = [w for w, on in (("review threshold", args.write_card and det), ("metrics", args.write_metrics)) if on]
        print("%s: card updated (%s): %s" % (name, ", ".join(what), path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
