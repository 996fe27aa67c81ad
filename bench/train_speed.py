"""Training throughput on this machine's CPU cores: samples per second, before and after, side by side.

Each arm is the trainer's own step (``trainer.training_step``: the augmented batch from the slice
cache, forward, deep-supervised loss, backward, Adam) on the same data and seed; the arms run
interleaved, round-robin, so machine noise hits them alike, and the ratio is the result.

- ``before``: the J-head in its plain form (ConvT + Conv3x3 at the high resolution), numpy's
  BLAS threads left as they are, and each slice warped on its own by scipy (the trainer up to issue 28);
- ``after``: the sub-pixel J-head, BLAS pinned to one thread, the batch warped at once by torch's
  ``affine_grid`` + ``grid_sample``, and the deep-supervision targets of all scales made from one stack
  (the same-size one a copy), as the trainer runs now;
- ``after + bf16``: also torch's bfloat16 autocast (``lowresseg train --precision bf16``), where
  the CPU has bfloat16 units.

    python bench/train_speed.py                       # writes the training-speed section of docs/BENCHMARKS.md
    python bench/train_speed.py --data phantom:20:1 --rounds 5 --batches 8
"""

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import replace_section  # noqa: E402


def make_arm(name, cache, model_kw, seed):
    import torch

    from LowResSegLib.training.models import JHead, SegModel
    from LowResSegLib.training.trainer import StepRunner

    torch.manual_seed(seed)
    model = SegModel(**model_kw)
    if isinstance(model.head, JHead):
        model.head.subpixel = name != "before"
    precision = "bf16" if name.endswith("bf16") else "fp32"
    return StepRunner(model, cache, precision=precision, pin_blas=name != "before",
                      one_by_one=name == "before")


def measure(args):
    import torch

    from LowResSegLib.training.cache import default_cache_dir
    from LowResSegLib.training.slices import SliceCache

    torch.set_num_threads(args.threads)
    cache = SliceCache.build(args.data, default_cache_dir(), progress=True)
    rows = cache.sample(np.random.default_rng(0), 1.0)
    model_kw = dict(backbone="elunet", head=args.head, input_size=args.input_size, output_size=256, width=8)
    names = ["before", "after"] + (["after + bf16"] if args.bf16 else [])
    arms = {n: make_arm(n, cache, model_kw, args.seed) for n in names}
    per_arm = {n: [] for n in names}
    n_rows = args.batches * args.batch_size
    for rnd in range(args.rounds + 1):  # round 0 warms every arm up and is not counted
        order = names if rnd % 2 == 0 else names[::-1]
        for n in order:
            start = (rnd * n_rows) % max(1, len(rows) - n_rows)
            chunk = rows[start:start + n_rows]
            t = time.perf_counter()
            with arms[n].pinned():
                for b in range(0, len(chunk), args.batch_size):
                    arms[n].step(chunk[b:b + args.batch_size], (args.seed, rnd, b))
            if rnd:
                per_arm[n].append(len(chunk) / (time.perf_counter() - t))
        print("round %d/%d: %s" % (rnd, args.rounds, "  ".join(
            "%s %.1f/s" % (n, per_arm[n][-1]) for n in names if per_arm[n])), flush=True)
    result = {n: {"median_samples_per_s": float(np.median(v)), "rounds": [round(x, 2) for x in v]}
              for n, v in per_arm.items()}
    ratios = {n: [a / b for a, b in zip(per_arm[n], per_arm["before"])] for n in names if n != "before"}
    for n, v in ratios.items():
        result[n]["speedup_vs_before"] = {"median": float(np.median(v)), "min": float(min(v)),
                                         "max": float(max(v))}
    return result


def section(result, args):
    from LowResSegLib.inference.modelchoice import cpu_name

    import datetime

    lines = ["## Training throughput", "",
             "Measured by `python bench/train_speed.py %s` on %s (%s), torch threads %d: %s of `%s`, batch %d, "
             "%d rounds of %d batches per arm, interleaved (the first round only warms up). Each round's "
             "speed-up is the arm's samples/s over `before`'s in the same round."
             % (" ".join(shlex.quote(a) for a in sys.argv[1:]), cpu_name(), datetime.date.today().isoformat(),
                args.threads,
                "jhead" if args.head == "jhead" else args.head, args.data, args.batch_size, args.rounds,
                args.batches),
             "",
             "| arm | samples/s (median) | speed-up vs before: median (min to max over rounds) |",
             "|---|---|---|"]
    for n, r in result.items():
        s = r.get("speedup_vs_before")
        lines.append("| %s | %.1f | %s |" % (n, r["median_samples_per_s"],
                                              "1 (the reference)" if s is None else
                                              "%.2f× (%.2f to %.2f)" % (s["median"], s["min"], s["max"])))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="lgg:train")
    ap.add_argument("--head", default="jhead", choices=["jhead", "interp"])
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=10, help="batches per arm per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="also the bfloat16 autocast arm")
    ap.add_argument("--json", default=os.path.join(ROOT, "docs", "train_speed.json"))
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args(argv)
    result = measure(args)
    lines = section(result, args)
    print("\n".join(lines))
    if not args.no_write:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        replace_section(os.path.join(ROOT, "docs", "BENCHMARKS.md"), "train-speed", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
