"""Issue 28's ship rule: does a retrained model replace the shipped one of its name?

Reads the per-case tables that ``bench/quality.py`` writes (``<out>/quality-<set>_cases.csv``), once for
the shipped models and once for the candidates, pairs them case by case, and applies the rule:

* ``lgg:val``: mean Dice higher, with the 95 % bootstrap interval of the paired difference above 0;
* ``real:val``: mean Dice not lower by more than 0.02;
* healthy raw heads (the phantoms' ``healthy-raw`` twins): at most 10 mL on average;
* held-out phantoms (``stripped``, ``raw``, ``raw-thick``): mean Dice down by at most 0.05 in each.

    python bench/ship_rule.py --shipped docs --candidates ~/lowresseg-runs/bench
"""

import argparse
import csv
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.quality import paired  # noqa: E402

SETS = {"lgg": "quality-lgg_cases.csv", "real": "quality-real_cases.csv", "phantoms": "quality-phantoms_cases.csv"}
PHANTOM_VARIANTS = ("stripped", "raw", "raw-thick")
HEALTHY_MAX_ML = 10.0
REAL_MAX_DROP = 0.02
PHANTOM_MAX_DROP = 0.05


def read_cases(folder, name):
    path = os.path.join(folder, SETS[name])
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [dict(r, dice=float(r["dice"]), truth_ml=float(r["truth_ml"]), pred_ml=float(r["pred_ml"]))
                for r in csv.DictReader(f)]


def verdict(model, shipped_dir, candidate_dir):
    """(ships: bool, [(check, passed or None when not measured, text)])."""
    checks = []
    new, old = "candidate:" + model, "shipped:" + model

    def rows_of(name):
        return ([dict(r, model=old) for r in read_cases(shipped_dir, name) if r["model"] == model]
                + [dict(r, model=new) for r in read_cases(candidate_dir, name) if r["model"] == model])

    lgg = rows_of("lgg")
    p = paired(lgg, new, old, "as is")
    if p is None:
        checks.append(("lgg:val better, interval above 0", None, "not measured on both"))
    else:
        checks.append(("lgg:val better, interval above 0", p["ci95"][0] > 0,
                       "ΔDice %+.3f (95 %% CI %+.3f to %+.3f), %d cases" % (p["mean"], p["ci95"][0], p["ci95"][1],
                                                                          p["n"])))
    p = paired(rows_of("real"), new, old, "as is")
    if p is None:
        checks.append(("real:val not lower by more than 0.02", None, "not measured on both"))
    else:
        checks.append(("real:val not lower by more than 0.02", p["mean"] >= -REAL_MAX_DROP,
                       "ΔDice %+.3f (95 %% CI %+.3f to %+.3f), %d cases" % (p["mean"], p["ci95"][0], p["ci95"][1],
                                                                          p["n"])))
    ph = rows_of("phantoms")
    healthy = [r["pred_ml"] for r in ph if r["model"] == new and r["variant"] == "healthy-raw"]
    checks.append(("healthy raw heads ≤ 10 mL on average", (float(np.mean(healthy)) <= HEALTHY_MAX_ML) if healthy else None,
                   "%.1f mL over %d heads" % (float(np.mean(healthy)), len(healthy)) if healthy else "not measured"))
    for v in PHANTOM_VARIANTS:
        p = paired(ph, new, old, v)
        checks.append(("phantoms %s down by at most 0.05" % v, None if p is None else p["mean"] >= -PHANTOM_MAX_DROP,
                       "not measured on both" if p is None else "ΔDice %+.3f, %d cases" % (p["mean"], p["n"])))
    ships = all(c[1] is True for c in checks)
    return ships, checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shipped", default=os.path.join(ROOT, "docs"), help="bench/quality.py --out of the shipped models")
    ap.add_argument("--candidates", required=True, help="bench/quality.py --out of the retrained models")
    ap.add_argument("--models", default=None, help="comma-separated (default: every candidate model)")
    args = ap.parse_args(argv)
    models = args.models.split(",") if args.models else sorted(
        {r["model"] for n in SETS for r in read_cases(args.candidates, n) if not r["model"].startswith("threshold")})
    if not models:
        raise SystemExit("no candidate results in %s: run bench/quality.py --repository CANDIDATES --out %s first"
                         % (args.candidates, args.candidates))
    for m in models:
        ships, checks = verdict(m, args.shipped, args.candidates)
        print("%s: %s" % (m, "SHIPS" if ships else "does not ship"))
        for name, ok, text in checks:
            print("  [%s] %s: %s" % ({True: "pass", False: "FAIL", None: " ?  "}[ok], name, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
