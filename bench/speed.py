"""End-to-end speed of every shipped model on a 240×240×155 volume, measured side by side.

All models run in one process, interleaved round-robin over the repeats, so machine
noise hits them alike; ratios (not absolute times) are the result. Also reported:
the head cost ratio time(jhead)/time(interp) at 32→256 — end to end and for the
ONNX graph alone — and where the time goes (preprocess / inference / postprocess).

    python bench/speed.py                  # writes the speed section of docs/BENCHMARKS.md
    python bench/speed.py --sweep          # also: chunk size and onnxruntime thread sweeps
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.engines import LocalEngine  # noqa: E402
from LowResSegLib.geometry import Volume  # noqa: E402
from LowResSegLib.modelstore import ModelRepository  # noqa: E402
from LowResSegLib.pipeline import segment  # noqa: E402
from bench.report import replace_section  # noqa: E402



def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench_volume():
    """A held-out phantom on the BraTS grid (seed 1001, disjoint from training)."""
    from LowResSegLib.training.phantom import make_phantom

    case = make_phantom(1001, 0, style="stripped", grid="iso")
    return Volume(case.image, case.affine)


def time_graph(engine, batch, repeats):
    """Median seconds of engine.infer on one prepared batch (the ONNX graph alone)."""
    engine.infer(batch)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.infer(batch)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--sweep", action="store_true", help="also sweep chunk size and threads for the 32² jhead")
    ap.add_argument("--repository", default=None)
    ap.add_argument("--volume", default=None, help="time this volume instead of a 240×240×155 phantom")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)

    repo = ModelRepository(args.repository)
    names = sorted(repo.names(), key=lambda n: (repo.card(n)["input_size"], n))
    engines = {n: LocalEngine(n, args.repository, threads=args.threads) for n in names}
    if args.volume:
        from LowResSegLib.io import read_volume

        vol = read_volume(args.volume)
    else:
        vol = bench_volume()
    print("volume %s, %d models, %d repeats, threads=%s" % (vol.shape, len(names), args.repeats,
                                                             args.threads or "all"))
    for e in engines.values():  # warm-up
        segment(vol, e, chunk=args.chunk)
    runs = {n: [] for n in names}
    for rep in range(args.repeats):
        for n in names:
            runs[n].append(segment(vol, engines[n], chunk=args.chunk, keep_probabilities=False).timings)
        print("repeat %d/%d done" % (rep + 1, args.repeats), flush=True)
    med = {n: {k: float(np.median([t[k] for t in runs[n]])) for k in runs[n][0]} for n in names}

    # the graph alone, one chunk of slices, interleaved
    graph = {n: [] for n in names}
    for rep in range(args.repeats):
        for n in names:
            r = engines[n].card["input_size"]
            batch = np.random.default_rng(0).normal(size=(args.chunk, 1, r, r)).astype(np.float32)
            graph[n].append(time_graph(engines[n], batch, 3))
    graph_med = {n: float(np.median(v)) for n, v in graph.items()}

    full = next((n for n in names if repo.card(n)["head"] == "full"), None)
    j32, i32 = "elunet-jhead-32to256", "elunet-interp-32to256"
    lines = ["## Speed (CPU, onnxruntime)", "",
             "Produced by `python bench/speed.py %s` on %s: %s, %d cores, onnxruntime %s, %s threads, chunk %d "
             "slices. Volume: %s. Median of %d interleaved repeats "
             "(every model once per round) after a warm-up run."
             % (" ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
                time.strftime("%Y-%m-%d"), cpu_name(), os.cpu_count(), __import__("onnxruntime").__version__,
                args.threads or "all", args.chunk,
                "`%s`, %s voxels (k, j, i)" % (args.volume, "×".join(map(str, vol.shape))) if args.volume else
                "a held-out phantom, 240×240×155 at 1 mm (seed 1001)", args.repeats), "",
             "| model | input | end-to-end s / volume | ms / slice | preprocess ms | inference ms | postprocess ms "
             "| speed-up vs %s | graph ms / %d slices |" % (full or "full", args.chunk),
             "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        m = med[n]
        up = med[full]["total_s"] / m["total_s"] if full else float("nan")
        lines.append("| %s | %d² | %.2f | %.1f | %.0f | %.0f | %.0f | %.1f× | %.1f |" % (
            n, repo.card(n)["input_size"], m["total_s"], m["ms_per_slice"], m["preprocess_ms"], m["infer_ms"],
            m["postprocess_ms"], up, 1000 * graph_med[n]))
    lines.append("")
    result = {"median": med, "graph_median_s": graph_med}
    if j32 in med and i32 in med:
        e2e = med[j32]["total_s"] / med[i32]["total_s"]
        g = graph_med[j32] / graph_med[i32]
        per_round = [a["total_s"] / b["total_s"] for a, b in zip(runs[j32], runs[i32])]
        result.update(head_cost_ratio_end_to_end=e2e, head_cost_ratio_graph=g)
        lines.append("**Head cost ratio time(jhead)/time(interp) at 32→256: %.3f end to end** (per-round ratios "
                     "%s), **%.3f for the ONNX graph alone**. Goal ≤ 1.05; the paper's abstract implies about 1.25 "
                     "(25 → 20 FPS on a Jetson Nano)." % (e2e, ", ".join("%.3f" % x for x in per_round), g))
        lines.append("")
    if args.sweep and j32 in engines:
        lines += ["### Sweeps for %s" % j32, "", "| setting | end-to-end s / volume |", "|---|---|"]
        for chunk in (8, 16, 32, 64, 155):
            ts = [segment(vol, engines[j32], chunk=chunk, keep_probabilities=False).timings["total_s"]
                  for _ in range(args.repeats)]
            lines.append("| chunk %d | %.3f |" % (chunk, float(np.median(ts))))
        for threads in (1, 2):
            e = LocalEngine(j32, args.repository, threads=threads)
            segment(vol, e, chunk=args.chunk)
            ts = [segment(vol, e, chunk=args.chunk, keep_probabilities=False).timings["total_s"]
                  for _ in range(args.repeats)]
            lines.append("| %d onnxruntime thread(s), chunk %d | %.3f |" % (threads, args.chunk, float(np.median(ts))))
        lines.append("")
    os.makedirs(args.out, exist_ok=True)
    print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), "speed", lines))
    with open(os.path.join(args.out, "speed.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
