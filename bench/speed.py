"""End-to-end speed of every shipped model on a 240×240×155 volume, measured side by side.

All models run in one process, interleaved round-robin over the repeats, so machine
noise hits them alike; ratios (not absolute times) are the result. Reported per model:
preprocess / inference / postprocess, the speed-up over the full-resolution model end to
end and for the ONNX graph alone (as engines run it, after the exact load-time rewrite of
LowResSegLib.inference.graphopt, and as shipped); the head cost ratio time(jhead)/time(interp) at
32→256, end to end and for the graph alone; the issue-22 targets; and a per-node
onnxruntime profile of the 32→256 J-head graph (where its extra time at 256² goes).

    python bench/speed.py                  # writes the speed section of docs/BENCHMARKS.md
    python bench/speed.py --sweep          # also: chunk size and onnxruntime thread sweeps
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

from LowResSegLib.inference.engines import LocalEngine  # noqa: E402
from LowResSegLib.inference.ensemble import open_engine  # noqa: E402
from LowResSegLib.images.geometry import Volume  # noqa: E402
from LowResSegLib.inference.modelchoice import cpu_name  # noqa: E402
from LowResSegLib.repository.modelstore import ModelRepository  # noqa: E402
from LowResSegLib.inference.pipeline import segment  # noqa: E402
from bench.report import replace_section  # noqa: E402


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


def paired_graph_ratios(a, b, chunk, rounds=15):
    """Per-round time(a)/time(b) of the graph alone on the same chunk, back to back (order alternating)."""
    r = a.card["input_size"]
    batch = np.random.default_rng(0).normal(size=(chunk, 1, r, r)).astype(np.float32)
    ratios = []
    for n in range(rounds):
        if n % 2:
            tb = time_graph(b, batch, 3)
            ta = time_graph(a, batch, 3)
        else:
            ta = time_graph(a, batch, 3)
            tb = time_graph(b, batch, 3)
        ratios.append(ta / tb)
    return ratios


def node_profile(model, r, chunk, runs=5):
    """{(node, op): ms per run} of one graph (a path or serialized bytes) from onnxruntime's profiler."""
    import tempfile

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="lowresseg-profile-"), "ort")
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).normal(size=(chunk, 1, r, r)).astype(np.float32)
    outputs = [o.name for o in session.get_outputs()]
    session.run(outputs, {"image": batch})  # warm-up, not counted below
    session.end_profiling()
    opts.profile_file_prefix += "-timed"
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    session.run(outputs, {"image": batch})
    for _ in range(runs):
        session.run(outputs, {"image": batch})
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    out = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            key = (e["name"][:-len("_kernel_time")], e["args"].get("op_name", "?"))
            out[key] = out.get(key, 0.0) + e["dur"] / 1000.0 / (runs + 1)
    return out


def _part(node, op):
    if node.startswith("/backbone"):
        return "backbone"
    if op in ("ReorderInput", "ReorderOutput"):
        return "layout"  # onnxruntime's NCHWc reorders, which it places between the convolutions
    return "head"


def profile_lines(repo, j32, i32, chunk):
    """The per-node profile section: the 32→256 J-head (as shipped and as engines run it) and interp."""
    from LowResSegLib.inference.graphopt import optimised_model
    from LowResSegLib.repository.modelstore import PROBABILITIES_8BIT

    graphs = [("%s, as shipped" % j32, repo.onnx_path(j32))]
    fast = optimised_model(repo.onnx_path(j32), lambda names: PROBABILITIES_8BIT)
    if fast is not None:
        graphs.append(("%s, as engines run it" % j32, fast))
        graphs.append(("%s, as engines run it" % i32,
                       optimised_model(repo.onnx_path(i32), lambda names: PROBABILITIES_8BIT)))
    else:
        graphs.append(("%s, as shipped" % i32, repo.onnx_path(i32)))
    profiles = [(label, node_profile(g, 32, chunk)) for label, g in graphs]
    lines = ["### Where the graph time goes (onnxruntime profiling, %d slices 32² → 256², kernel time per run)"
             % chunk, "", "| graph | all nodes ms | backbone ms | head + outputs ms | NCHWc reorders ms |",
             "|---|---|---|---|---|"]
    for label, prof in profiles:
        parts = {}
        for (node, op), ms in prof.items():
            parts[_part(node, op)] = parts.get(_part(node, op), 0.0) + ms
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f |" % (label, sum(prof.values()), parts.get("backbone", 0),
                                                            parts.get("head", 0), parts.get("layout", 0)))
    lines += ["", "Head and output nodes of %s, largest first (the rest of the head is below 0.5 ms):" % j32, "",
              "| node | op | ms as shipped | ms as engines run it |", "|---|---|---|---|"]
    shipped = profiles[0][1]
    run = profiles[1][1] if fast is not None else {}
    by_node = {}
    for prof, col in ((shipped, 0), (run, 1)):
        for (node, op), ms in prof.items():
            if _part(node, op) != "backbone":
                base = node.split("/as_conv_transpose")[0] if op != "ReorderInput" and op != "ReorderOutput" \
                    else "(all NCHWc reorders, backbone's included)"
                if base in by_node and by_node[base][col + 1] is not None:
                    by_node[base][col + 1] += ms
                    continue
                shown_op = "ReorderInput/Output" if base.startswith("(") else op
                by_node.setdefault(base, [shown_op, None, None])[col + 1] = ms
                if col == 1 and op == "ConvTranspose" and base != node:
                    by_node[base][0] = "DepthToSpace → ConvTranspose"
    for node, (op, a, b) in sorted(by_node.items(), key=lambda kv: -max(v or 0 for v in kv[1][1:])):
        if max(a or 0, b or 0) >= 0.5:
            lines.append("| %s | %s | %s | %s |" % (node if node.startswith("(") else "`%s`" % node, op,
                                                    "%.2f" % a if a is not None else "–",
                                                    "%.2f" % b if b is not None else "–"))
    lines.append("")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--sweep", action="store_true", help="also sweep chunk size and threads for the 32² jhead")
    ap.add_argument("--repository", default=None)
    ap.add_argument("--volume", default=None, help="time this volume instead of a 240×240×155 phantom")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--models", default=None, help="comma-separated subset of the models and ensembles (default: all)")
    args = ap.parse_args(argv)

    repo = ModelRepository(args.repository)
    wanted = set(args.models.split(",")) if args.models else None
    names = sorted((n for n in repo.graph_names() if wanted is None or n in wanted),
                   key=lambda n: (repo.card(n)["input_size"], n))  # the ensembles: below
    engines = {n: LocalEngine(n, args.repository, threads=args.threads) for n in names}
    ensembles = [n for n in repo.names()
                 if repo.is_ensemble(n) and repo.check(n)[0] and (wanted is None or n in wanted)]
    ens_engines = {n: open_engine(n, args.repository, threads=args.threads) for n in ensembles}
    if args.volume:
        from LowResSegLib.images.io import read_volume

        vol = read_volume(args.volume)
    else:
        vol = bench_volume()
    print("volume %s, %d models, %d repeats, threads=%s" % (vol.shape, len(names), args.repeats,
                                                             args.threads or "all"))
    for e in list(engines.values()) + list(ens_engines.values()):  # warm-up
        segment(vol, e, chunk=args.chunk)
    runs = {n: [] for n in names + ensembles}  # the ensembles in the same rounds: their cost in the same noise
    for rep in range(args.repeats):
        for n in names + ensembles:
            runs[n].append(segment(vol, engines.get(n) or ens_engines[n], chunk=args.chunk,
                                   keep_probabilities=False).timings)
        print("repeat %d/%d done" % (rep + 1, args.repeats), flush=True)
    med = {n: {k: float(np.median([t[k] for t in runs[n]])) for k in ("total_s", "ms_per_slice", "preprocess_ms",
                                                                       "infer_ms", "postprocess_ms")}
           for n in names + ensembles}

    # the graph alone, one chunk of slices, interleaved: as engines run it, and as shipped
    shipped = {n: LocalEngine(n, args.repository, threads=args.threads, optimise=False) for n in names}
    graph = {n: [] for n in names}
    graph_shipped = {n: [] for n in names}
    for rep in range(args.repeats):
        for n in names:
            r = engines[n].card["input_size"]
            batch = np.random.default_rng(0).normal(size=(args.chunk, 1, r, r)).astype(np.float32)
            graph[n].append(time_graph(engines[n], batch, 3))
            graph_shipped[n].append(time_graph(shipped[n], batch, 3))
    graph_med = {n: float(np.median(v)) for n, v in graph.items()}
    shipped_med = {n: float(np.median(v)) for n, v in graph_shipped.items()}

    full = next((n for n in names if repo.card(n)["head"] == "full"), None)
    j32, i32 = "elunet-jhead-32to256", "elunet-interp-32to256"
    rewritten = all(e.optimised for e in engines.values())
    lines = ["## Speed (CPU, onnxruntime)", "",
             "Produced by `python bench/speed.py %s` on %s: %s, %d cores, onnxruntime %s, %s threads, chunk %d "
             "slices. Volume: %s. Median of %d interleaved repeats "
             "(every model once per round) after a warm-up run. End to end = preprocess + inference + "
             "postprocess of `LowResSegLib.inference.pipeline.segment` (labels only, as the CLI and Slicer run it). "
             "*graph*: `engine.infer` on one chunk, %s; *shipped graph*: the model file as it is."
             % (" ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
                time.strftime("%Y-%m-%d"), cpu_name(), os.cpu_count(), __import__("onnxruntime").__version__,
                args.threads or "all", args.chunk,
                "`%s`, %s voxels (k, j, i)" % (args.volume, "×".join(map(str, vol.shape))) if args.volume else
                "a held-out phantom, 240×240×155 at 1 mm (seed 1001)", args.repeats,
                "after the exact load-time rewrite of `LowResSegLib.inference.graphopt`" if rewritten else
                "without the load-time rewrite (no `onnx` package here)"), "",
             "| model | input | end-to-end s / volume | ms / slice | preprocess ms | inference ms | postprocess ms "
             "| pre + post ms | speed-up vs %s, end to end | graph ms / %d slices | shipped graph ms "
             "| speed-up, graph |"
             % (full or "full", args.chunk),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        m = med[n]
        up = med[full]["total_s"] / m["total_s"] if full else float("nan")
        g_up = graph_med[full] / graph_med[n] if full else float("nan")
        lines.append("| %s | %d² | %.2f | %.1f | %.0f | %.0f | %.0f | %.0f | %.1f× | %.1f | %.1f | %.1f× |" % (
            n, repo.card(n)["input_size"], m["total_s"], m["ms_per_slice"], m["preprocess_ms"], m["infer_ms"],
            m["postprocess_ms"], m["preprocess_ms"] + m["postprocess_ms"], up, 1000 * graph_med[n],
            1000 * shipped_med[n], g_up))
    lines.append("")
    result = {"median": med, "graph_median_s": graph_med, "shipped_graph_median_s": shipped_med}
    if ensembles:  # issue 31: an ensemble's members one after the other on one prepared volume
        lines += ["Ensembles (issue 31), end to end in the same rounds (members run one after the other on one "
                  "prepared volume; the mean, the disagreement map and the review score included):", "",
                  "| ensemble | members | end-to-end s / volume | × %s | × %s |" % (j32, full or "full"),
                  "|---|---|---|---|---|"]
        for n in ensembles:
            per_round = [a["total_s"] / b["total_s"] for a, b in zip(runs[n], runs[j32])] if j32 in runs else []
            x32 = med[n]["total_s"] / med[j32]["total_s"] if j32 in med else float("nan")
            xfull = med[n]["total_s"] / med[full]["total_s"] if full in med else float("nan")
            lines.append("| %s | %s | %.2f | %.2f (per round %s) | %.2f |" % (
                n, ", ".join(repo.members(n)), med[n]["total_s"], x32, ", ".join("%.2f" % x for x in per_round),
                xfull))
            result.setdefault("ensembles", {})[n] = {"x_" + j32: x32, "x_full": xfull, "per_round": per_round}
        lines.append("")
    if j32 in med and i32 in med:
        e2e = med[j32]["total_s"] / med[i32]["total_s"]
        # the graph ratio from many short back-to-back pairs: robust to the machine's drift
        pairs = paired_graph_ratios(engines[j32], engines[i32], args.chunk)
        g = float(np.median(pairs))
        g_q = np.percentile(pairs, [25, 75])
        g_shipped = shipped_med[j32] / shipped_med[i32]
        per_round = [a["total_s"] / b["total_s"] for a, b in zip(runs[j32], runs[i32])]
        result.update(head_cost_ratio_end_to_end=e2e, head_cost_ratio_graph=g, head_cost_ratio_shipped_graph=g_shipped,
                      head_cost_ratio_graph_pairs=pairs)
        lines.append("**Head cost ratio time(jhead)/time(interp) at 32→256: %.3f end to end** (per-round ratios "
                     "%s), **%.3f for the ONNX graph alone** as engines run it (median of %d back-to-back pairs, "
                     "quartiles %.3f–%.3f; %.3f as shipped, from the medians in the table). The paper's abstract "
                     "implies about 1.25 (25 → 20 FPS on a Jetson Nano)."
                     % (e2e, ", ".join("%.3f" % x for x in per_round), g, len(pairs), g_q[0], g_q[1], g_shipped))
        lines.append("")
        if full in med:
            up = med[full]["total_s"] / med[j32]["total_s"]
            pp = med[j32]["preprocess_ms"] + med[j32]["postprocess_ms"]
            pp_low = min(t["preprocess_ms"] + t["postprocess_ms"] for t in runs[j32])  # the machine's noise aside
            checks = [("%s end to end ≥ 25× faster than %s" % (j32, full), "%.1f×" % up, up >= 25),
                      ("pre + post ≤ 100 ms per volume (%s)" % j32,
                       "%.0f ms (median; lowest of the %d rounds %.0f ms)" % (pp, len(runs[j32]), pp_low), pp <= 100),
                      ("head cost ≤ 1.15×, graph alone", "%.3f" % g, g <= 1.15),
                      ("head cost ≤ 1.05×, end to end", "%.3f" % e2e, e2e <= 1.05)]
            lines += ["Issue 22 targets, in this run:", "", "| target | measured | met |", "|---|---|---|"]
            lines += ["| %s | %s | %s |" % (t, v, "yes" if ok else "**no**") for t, v, ok in checks]
            lines.append("")
            result["targets"] = {t: ok for t, _, ok in checks}
    if j32 in engines and i32 in engines and repo.card(j32)["input_size"] == 32:
        lines += profile_lines(repo, j32, i32, args.chunk)
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
