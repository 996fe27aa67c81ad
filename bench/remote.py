"""The edge server, measured: remote vs local, bytes on the wire, wire tolerance, load, fuzz, an emulated Nano.

Starts ``python -m LowResSegLib.edge.server`` on 127.0.0.1 (a real process), then, side by side in one run:

* the same volume segmented with LocalEngine and RemoteEngine (interleaved repeats, median):
  the remote/local time ratio over loopback (goal <= 1.2x);
* the bytes each volume puts on the wire (requests and gzip'd responses, counted from the
  Content-Length headers), against the FP32 ``probabilities`` output the client read before,
  and what that costs on a 100 Mbit/s and a 1 Gbit/s link (bytes x 8 / rate, transfer only);
* the wire tolerance: labels from ``probabilities_8bit`` (what every engine reads) against labels
  from the exact FP32 output, for every shipped model on held-out phantoms (differing voxels, Dice);
* a load test: N concurrent clients x M requests of one chunk each: errors, p50 / p99 latency,
  and the server's RSS before and after (goal < 10 % growth);
* a fuzz run: 10k mutated or random request bodies; 5xx answers and crashes (goal 0);
* an emulated Nano: the server pinned to one core (``taskset -c 0``) under a memory cap
  (RLIMIT_AS), slices per second for every shipped model. It is not a Jetson: an x86 core is
  faster than a Cortex-A57 and there is no GPU; docs/jetson.md says what remains unverified.

    python bench/remote.py            # writes the remote section of docs/BENCHMARKS.md
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.inference.engines import LocalEngine, RemoteEngine  # noqa: E402
from LowResSegLib.images.metrics import dice  # noqa: E402
from LowResSegLib.repository.modelstore import ModelRepository  # noqa: E402
from LowResSegLib.inference.pipeline import low_res_inputs, prepare_slices, segment  # noqa: E402
from bench.report import replace_section  # noqa: E402

NANO_MEMORY_GIB = 2.0  # of the Nano's 4 GB, shared with the GPU and the OS


def start_server(repository, pin_core=None, memory_gib=None):
    cmd = [sys.executable, "-m", "LowResSegLib.edge.server", "--repository", repository, "--port", "0", "--max-queue", "16"]
    if pin_core is not None:
        cmd = ["taskset", "-c", str(pin_core)] + cmd

    def limit():
        if memory_gib:
            cap = int(memory_gib * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, universal_newlines=True, cwd=ROOT, preexec_fn=limit)
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("the server did not start")
        if '"event": "start"' in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain the access log
            return proc, json.loads(line)["port"]


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class CountingEngine(object):
    """Wraps a RemoteEngine to count the bytes each call puts on the wire (bodies as sent)."""

    def __init__(self, engine):
        self.engine, self.card, self.sent, self.received, self.decoded = engine, engine.card, 0, 0, 0
        server = engine.server
        original = server.request

        def counted(method, path, body=None, headers=None):
            status, reply, data = original(method, path, body, headers)
            self.sent += len(body or b"")
            self.received += int(reply.getheader("Content-Length") or len(data))  # compressed size
            self.decoded += len(data)
            return status, reply, data

        server.request = counted

    def infer(self, batch):
        return self.engine.infer(batch)


def local_vs_remote(volume, url, model, repository, repeats):
    """Interleaved timings, identical labels, and the bytes per volume for the 8-bit and the FP32 output."""
    local = LocalEngine(model, repository)
    remote = CountingEngine(RemoteEngine(url, model))
    segment(volume, local)
    segment(volume, remote)  # warm-up
    times = {"local": [], "remote": []}
    for _ in range(repeats):
        for name, engine in (("local", local), ("remote", remote)):
            t0 = time.perf_counter()
            segment(volume, engine, keep_probabilities=False)
            times[name].append(time.perf_counter() - t0)
    wire = {}
    for output in ("probabilities_8bit", "probabilities"):
        engine = CountingEngine(RemoteEngine(url, model, output=output))
        seg = segment(volume, engine)
        wire[output] = (engine.sent, engine.received, engine.decoded)
    same = np.array_equal(segment(volume, remote).labels, segment(volume, local).labels)
    return {"times": times, "same": same, "wire": wire, "slices": seg.timings["slices"],
            "ratio": float(np.median(times["remote"]) / np.median(times["local"]))}


def wire_tolerance(repository, cases):
    """Per shipped model: labels read from probabilities_8bit vs from FP32 probabilities, over ``cases``."""
    rows = []
    for name in ModelRepository(repository).graph_names():  # an ensemble has no graph to read outputs of
        coarse, exact = LocalEngine(name, repository), LocalEngine(name, repository, output="probabilities")
        differ = voxels = mask = 0
        dices = []
        for volume in cases:
            a, b = segment(volume, coarse).labels, segment(volume, exact).labels
            differ += int(np.count_nonzero(a != b))
            voxels += a.size
            mask += int(np.count_nonzero(b))
            dices.append(dice(a, b))
        rows.append({"model": name, "differ": differ, "voxels": voxels, "mask": mask, "min_dice": min(dices)})
    return rows


def load_test(url, proc, model, chunk, clients, requests):
    """After a warm-up round (every client twice: thread stacks, arenas and buffers reach their size), the load."""
    latencies, errors = [], []

    def client(n):
        engine = RemoteEngine(url, model)
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                engine.infer(chunk)
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # counted, reported
                errors.append(type(exc).__name__)

    def run(n):
        threads = [threading.Thread(target=client, args=(n,)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run(2)
    del latencies[:]
    rss0 = rss_mib(proc.pid)
    t_load = time.perf_counter()
    run(requests)
    return {"latencies": np.array(latencies) * 1000.0, "errors": errors, "seconds": time.perf_counter() - t_load,
            "rss": (rss0, rss_mib(proc.pid))}


def fuzz(url, proc, model, cases, seed=0):
    """Mutated and random bodies with true or random header lengths: status counts, 5xx, server alive."""
    from LowResSegLib.edge.protocol import encode_request

    rng = np.random.default_rng(seed)
    good, headers = encode_request([("image", np.zeros((1, 1, 32, 32), np.float32))])
    statuses = {}
    for n in range(cases):
        body = bytearray(good)
        for _ in range(int(rng.integers(1, 8))):
            body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
        if n % 5 == 0:
            body = bytearray(rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes())
        length = headers["Inference-Header-Content-Length"] if n % 3 else str(int(rng.integers(-5, 600)))
        req = urllib.request.Request("%s/v2/models/%s/infer" % (url, model), data=bytes(body), method="POST",
                                     headers={"Inference-Header-Content-Length": length})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status = r.status
                r.read()
        except urllib.error.HTTPError as e:
            status = e.code
            e.read()
        except OSError:
            status = "no answer"
        statuses[status] = statuses.get(status, 0) + 1
    alive = proc.poll() is None
    return {"statuses": statuses, "alive": alive,
            "5xx": sum(v for k, v in statuses.items() if not isinstance(k, int) or k >= 500)}


def emulated_nano(repository, volume, chunk_size=32, seconds=5.0):
    """Slices/s of every shipped model on a server pinned to one core under a memory cap."""
    if not shutil.which("taskset"):
        return None
    proc, port = start_server(repository, pin_core=0, memory_gib=NANO_MEMORY_GIB)
    url = "http://127.0.0.1:%d" % port
    rows = []
    try:
        for name in ModelRepository(repository).graph_names():  # what the server serves (no ensembles)
            engine = RemoteEngine(url, name)
            chunk = low_res_inputs(prepare_slices(volume, engine.card).slices[60:60 + chunk_size], engine.card)
            engine.infer(chunk)  # warm-up
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                engine.infer(chunk)
                n += len(chunk)
            rows.append({"model": name, "slices_per_s": n / (time.perf_counter() - t0)})
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"rows": rows, "rss": rss}


def main(argv=None):
    from LowResSegLib.training.phantom import cached_phantom
    from LowResSegLib.images.geometry import Volume

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="elunet-jhead-32to256")
    ap.add_argument("--repository", default=os.path.join(ROOT, "Resources", "Models"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--fuzz", type=int, default=10000, help="fuzzed requests (default 10000)")
    ap.add_argument("--tolerance-cases", type=int, default=4, help="held-out phantoms per twin for the tolerance")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)

    def phantom(idx, variant):
        case = cached_phantom(1001, idx, variant)
        return Volume(case.image, case.affine)

    volume = phantom(0, "raw")
    print("wire tolerance ...", flush=True)
    tol_cases = [phantom(i, v) for i in range(args.tolerance_cases) for v in ("stripped", "raw")]
    tolerance = wire_tolerance(args.repository, tol_cases)
    proc, port = start_server(args.repository)
    url = "http://127.0.0.1:%d" % port
    try:
        print("local vs remote ...", flush=True)
        lr = local_vs_remote(volume, url, args.model, args.repository, args.repeats)
        print("load ...", flush=True)
        card = LocalEngine(args.model, args.repository).card
        chunk = low_res_inputs(prepare_slices(volume, card).slices[:32], card)
        load = load_test(url, proc, args.model, chunk, args.clients, args.requests)
        print("fuzz ...", flush=True)
        fz = fuzz(url, proc, args.model, args.fuzz)
    finally:
        proc.terminate()
        proc.wait(30)
    print("emulated Nano ...", flush=True)
    nano = emulated_nano(args.repository, volume)

    sent, received, decoded = lr["wire"]["probabilities_8bit"]
    sent32, received32, decoded32 = lr["wire"]["probabilities"]
    total, total32, raw32 = sent + received, sent32 + received32, sent32 + decoded32
    lat = load["latencies"]
    rss0, rss1 = load["rss"]
    lines = [
        "## Remote inference (edge server over loopback)",
        "",
        "Produced by `python bench/remote.py` on %s: %s, one held-out raw phantom (240×240×155, %d slices), server "
        "and client on this machine (%d CPU cores), median of %d interleaved repeats." % (
            time.strftime("%Y-%m-%d"), args.model, lr["slices"], os.cpu_count(), args.repeats),
        "",
        "| measure | value |",
        "|---|---|",
        "| end to end, local | %.2f s / volume |" % np.median(lr["times"]["local"]),
        "| end to end, remote (loopback) | %.2f s / volume |" % np.median(lr["times"]["remote"]),
        "| **remote / local** | **%.2f×** (goal ≤ 1.2×) |" % lr["ratio"],
        "| remote labels identical to local | %s |" % ("yes" if lr["same"] else "NO"),
        "| **bytes on the wire per volume** (`probabilities_8bit`, gzip) | **%.2f MB** sent + %.2f MB received = "
        "%.2f MB |" % (sent / 1e6, received / 1e6, total / 1e6),
        "| the same without gzip | %.2f MB |" % ((sent + decoded) / 1e6),
        "| the FP32 `probabilities` output instead: with gzip / without | %.1f MB / %.1f MB (%.0f× the 8-bit "
        "gzip) |" % (total32 / 1e6, raw32 / 1e6, raw32 / total),
        "| transfer time implied at 100 Mbit/s / 1 Gbit/s | %.2f s / %.3f s (FP32 without gzip: %.1f s / %.2f s) |" % (
            total * 8 / 1e8, total * 8 / 1e9, raw32 * 8 / 1e8, raw32 * 8 / 1e9),
        "| load: %d clients × %d requests of 32 slices | %d errors; p50 %.0f ms, p99 %.0f ms; %.1f requests/s |" % (
            args.clients, args.requests, len(load["errors"]), np.percentile(lat, 50) if lat.size else float("nan"),
            np.percentile(lat, 99) if lat.size else float("nan"), len(lat) / load["seconds"]),
        "| server RSS after a warm-up round → after the load | %.0f → %.0f MiB (%+.1f %%; goal < 10 %%) |" % (
            rss0, rss1, 100 * (rss1 / rss0 - 1)),
        "| fuzz: %d mutated or random bodies | %d answers 5xx or none; server %s; statuses %s |" % (
            args.fuzz, fz["5xx"], "alive" if fz["alive"] else "DEAD",
            ", ".join("%s: %d" % kv for kv in sorted(fz["statuses"].items(), key=lambda kv: str(kv[0])))),
        "",
        "**Wire tolerance.** Every engine reads `probabilities_8bit` (the FP32 sigmoid rounded to multiples of "
        "1/255 and stored as FP16 in the graph), so local and remote runs agree exactly. Against labels from the "
        "exact FP32 output, on %d held-out phantoms (seed 1001, %d stripped + %d raw):" % (
            len(tol_cases), args.tolerance_cases, args.tolerance_cases),
        "",
        "| model | voxels that differ | of the FP32 mask | lowest Dice vs FP32 |",
        "|---|---|---|---|",
    ]
    for row in tolerance:
        lines.append("| %s | %d of %d | %.3f %% | %.4f |" % (
            row["model"], row["differ"], row["voxels"], 100.0 * row["differ"] / max(1, row["mask"]), row["min_dice"]))
    lines += ["", "The documented tolerance: labels may differ from FP32 labels only where the resampled probability "
              "lies within 1/510 of 0.5 (and, for a model whose card drops components by their peak probability, "
              "where a peak lies within 1/510 of that limit); the lowest Dice against them is in the table."]
    if nano:
        lines += [
            "",
            "**Emulated Nano** (`taskset -c 0`, RLIMIT_AS %.0f GiB, CPU execution provider; an x86 core, not a "
            "Cortex-A57, and no GPU, so these are not Jetson figures). Server RSS after all models: %.0f MiB." % (
                NANO_MEMORY_GIB, nano["rss"]),
            "",
            "| model | slices / s (chunks of 32, transport included) |",
            "|---|---|",
        ]
        lines += ["| %s | %.0f |" % (r["model"], r["slices_per_s"]) for r in nano["rows"]]
        per = {r["model"]: r["slices_per_s"] for r in nano["rows"]}
        if "elunet-jhead-32to256" in per and "elunet-interp-32to256" in per:
            lines += ["", "jhead / interp at 32→256 on one core: %.2f× the time per slice." % (
                per["elunet-interp-32to256"] / per["elunet-jhead-32to256"])]
    print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), "remote", lines))
    return 0 if (fz["5xx"] == 0 and fz["alive"] and not load["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
