"""Two models over several training seeds: is the difference real or within the seeds' noise?

Reads ``bench/quality.py``'s per-case tables of one folder per seed (each the ``--out`` of a run over that
seed's models), and for every data set and variant prints: each model's mean Dice and median signed
volume error per seed, their mean and spread over seeds, and the paired difference a - b with a 95 %
bootstrap interval, where each case's difference is first averaged over the seeds (so the interval
holds case-to-case and, through the average, part of the seed-to-seed noise).

    python bench/seeds.py --a elunet-jhead-32to256 --b elunet-interp-32to256 RUNS/bench-s0 RUNS/bench-s1 RUNS/bench-s2
"""

import argparse
import csv
import glob
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.quality import bootstrap_ci  # noqa: E402


def read_folder(folder):
    """{(set, variant): {model: {case: (dice, truth_ml, pred_ml)}}} from every quality-*_cases.csv."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "quality-*_cases.csv"))):
        name = os.path.basename(path)[len("quality-"):-len("_cases.csv")]
        with open(path) as f:
            for r in csv.DictReader(f):
                out.setdefault((name, r["variant"]), {}).setdefault(r["model"], {})[r["case"]] = (
                    float(r["dice"]), float(r["truth_ml"]), float(r["pred_ml"]))
    return out


def compare(folders, a, b):
    """Rows of the comparison, one per (set, variant) measured for both models in every folder."""
    seeds = [read_folder(f) for f in folders]
    keys = sorted(set.intersection(*[set(s) for s in seeds])) if seeds else []
    rows = []
    for key in keys:
        if not all(a in s[key] and b in s[key] for s in seeds):
            continue
        cases = sorted(set.intersection(*[set(s[key][a]) & set(s[key][b]) for s in seeds]))
        cases = [c for c in cases if seeds[0][key][a][c][1] > 0]  # tumour cases only
        if not cases:
            continue
        per_seed = {m: [float(np.mean([s[key][m][c][0] for c in cases])) for s in seeds] for m in (a, b)}
        vol = {m: [float(np.median([(s[key][m][c][2] - s[key][m][c][1]) / s[key][m][c][1] for c in cases]))
                   for s in seeds] for m in (a, b)}
        diff = [float(np.mean([s[key][a][c][0] - s[key][b][c][0] for s in seeds])) for c in cases]
        lo, hi = bootstrap_ci(diff)
        rows.append({"set": key[0], "variant": key[1], "cases": len(cases), "seeds": len(seeds),
                     "a": per_seed[a], "b": per_seed[b], "vol_a": vol[a], "vol_b": vol[b],
                     "mean_diff": float(np.mean(diff)), "ci95": (lo, hi),
                     "relative": float(np.mean(per_seed[a]) / np.mean(per_seed[b]) - 1)})
    return rows


def table(rows, a, b):
    lines = ["| set | variant | cases × seeds | %s Dice (per seed) | %s Dice (per seed) | Δ (95 %% CI) | relative | "
             "median volume error %s / %s | within noise? |" % (a, b, a, b),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append("| %s | %s | %d × %d | %.3f ± %.3f (%s) | %.3f ± %.3f (%s) | %+.3f (%+.3f to %+.3f) | %+.1f %% | "
                     "%+.0f %% / %+.0f %% | %s |" % (
                         r["set"], r["variant"], r["cases"], r["seeds"], np.mean(r["a"]), np.std(r["a"]),
                         ", ".join("%.3f" % x for x in r["a"]), np.mean(r["b"]), np.std(r["b"]),
                         ", ".join("%.3f" % x for x in r["b"]), r["mean_diff"], lo, hi, 100 * r["relative"],
                         100 * np.mean(r["vol_a"]), 100 * np.mean(r["vol_b"]),
                         "yes" if lo <= 0 <= hi else "no"))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("folders", nargs="+", help="one bench/quality.py --out folder per seed")
    args = ap.parse_args(argv)
    rows = compare(args.folders, args.a, args.b)
    if not rows:
        raise SystemExit("no data set has both %s and %s in every folder" % (args.a, args.b))
    print("\n".join(table(rows, args.a, args.b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
