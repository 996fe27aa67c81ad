"""The edge server, measured: remote vs local on one machine, bytes on the wire, and a load test.

Starts ``python -m LowResSegLib.server`` on 127.0.0.1 (a real process), then, side by side in one run:

* the same volume segmented with LocalEngine and RemoteEngine (interleaved repeats, median):
  the remote/local time ratio over loopback (goal <= 1.2x);
* the bytes each volume puts on the wire (requests and responses), and what that costs on a
  100 Mbit/s and a 1 Gbit/s link (bytes x 8 / rate, transfer only);
* a load test: N concurrent clients x M requests of one chunk each: errors, p50 / p99 latency,
  and the server's RSS before and after (goal < 10 % growth).

    python bench/remote.py            # writes the remote section of docs/BENCHMARKS.md
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.engines import LocalEngine, RemoteEngine  # noqa: E402
from LowResSegLib.pipeline import low_res_inputs, prepare_slices, segment  # noqa: E402
from bench.report import replace_section  # noqa: E402


def start_server(repository):
    proc = subprocess.Popen([sys.executable, "-m", "LowResSegLib.server", "--repository", repository, "--port", "0",
                             "--max-queue", "16"], stderr=subprocess.PIPE, universal_newlines=True, cwd=ROOT)
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
    """Wraps a RemoteEngine to count the request and response bytes of each call."""

    def __init__(self, engine):
        self.engine, self.card, self.sent, self.received = engine, engine.card, 0, 0
        server = engine.server
        original = server.request

        def counted(method, path, body=None, headers=None):
            status, reply, data = original(method, path, body, headers)
            self.sent += len(body or b"")
            self.received += len(data)
            return status, reply, data

        server.request = counted

    def infer(self, batch):
        return self.engine.infer(batch)


def main(argv=None):
    from bench.quality import cached_phantom, TWINS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="elunet-jhead-32to256")
    ap.add_argument("--repository", default=os.path.join(ROOT, "Resources", "Models"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)

    case = cached_phantom(1001, 0, "raw", TWINS["raw"])
    from LowResSegLib.geometry import Volume

    volume = Volume(case.image, case.affine)
    proc, port = start_server(args.repository)
    try:
        url = "http://127.0.0.1:%d" % port
        local = LocalEngine(args.model, args.repository)
        remote = CountingEngine(RemoteEngine(url, args.model))
        segment(volume, local)
        segment(volume, remote)  # warm-up
        times = {"local": [], "remote": []}
        for _ in range(args.repeats):
            for name, engine in (("local", local), ("remote", remote)):
                t0 = time.perf_counter()
                seg = segment(volume, engine, keep_probabilities=False)
                times[name].append(time.perf_counter() - t0)
        remote.sent = remote.received = 0
        same = np.array_equal(segment(volume, remote).labels, segment(volume, local).labels)
        sent, received = remote.sent, remote.received
        ratio = float(np.median(times["remote"]) / np.median(times["local"]))

        chunk = low_res_inputs(prepare_slices(volume, local.card).slices[:32], local.card)
        latencies, errors = [], []
        rss0 = rss_mib(proc.pid)

        def client():
            engine = RemoteEngine(url, args.model)
            for _ in range(args.requests):
                t0 = time.perf_counter()
                try:
                    engine.infer(chunk)
                    latencies.append(time.perf_counter() - t0)
                except Exception as exc:  # counted, reported
                    errors.append(type(exc).__name__)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        t_load = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_load = time.perf_counter() - t_load
        rss1 = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)

    total = sent + received
    lat = np.array(latencies) * 1000.0
    lines = [
        "## Remote inference (edge server over loopback)",
        "",
        "Produced by `python bench/remote.py` on %s: %s, one held-out raw phantom (240×240×155, %d slices), server "
        "and client on this machine (2 CPU cores), median of %d interleaved repeats." % (
            time.strftime("%Y-%m-%d"), args.model, seg.timings["slices"], args.repeats),
        "",
        "| measure | value |",
        "|---|---|",
        "| end to end, local | %.2f s / volume |" % np.median(times["local"]),
        "| end to end, remote (loopback) | %.2f s / volume |" % np.median(times["remote"]),
        "| **remote / local** | **%.2f×** (goal ≤ 1.2×) |" % ratio,
        "| remote labels identical to local | %s |" % ("yes" if same else "NO"),
        "| bytes on the wire per volume | %.1f MB sent + %.1f MB received = %.1f MB |" % (
            sent / 1e6, received / 1e6, total / 1e6),
        "| transfer time implied at 100 Mbit/s / 1 Gbit/s | %.2f s / %.2f s |" % (total * 8 / 1e8, total * 8 / 1e9),
        "| load: %d clients × %d requests of 32 slices | %d errors; p50 %.0f ms, p99 %.0f ms; %.0f requests/s |" % (
            args.clients, args.requests, len(errors), np.percentile(lat, 50) if lat.size else float("nan"),
            np.percentile(lat, 99) if lat.size else float("nan"), len(latencies) / t_load),
        "| server RSS before → after the load | %.0f → %.0f MiB (%+.1f %%) |" % (rss0, rss1, 100 * (rss1 / rss0 - 1)),
        "",
        "Most of the bytes are the float32 256² probabilities the client asks for; sending only labels or "
        "quantised probabilities is the open item of the edge-server issue.",
    ]
    print(replace_section(os.path.join(args.out, "BENCHMARKS.md"), "remote", lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
