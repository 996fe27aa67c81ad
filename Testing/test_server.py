"""The edge server as a real process on 127.0.0.1, and RemoteEngine against it (no mocks).

Models are tiny real ONNX graphs (model_factory); the server is `python -m LowResSegLib.edge.server`.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from LowResSegLib.inference.engines import LocalEngine, RemoteEngine, RemoteError
from LowResSegLib.images.geometry import Volume
from LowResSegLib.inference.pipeline import segment

from helpers import cube_phantom, self_signed_cert
from model_factory import add_threshold_model

MODEL = "threshold-16to64"
TOKEN = "0123456789abcdef0123456789abcdef"
SHAPE, BRAIN, CUBE = (8, 40, 48), (slice(1, 7), slice(4, 36), slice(4, 44)), (slice(3, 6), slice(10, 22), slice(26, 38))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("server-models"))
    add_threshold_model(root, MODEL, r=16, big_r=64, threshold=2.5)
    return root


class Running(object):
    def __init__(self, proc, port, log_lines):
        self.proc, self.port, self.log = proc, port, log_lines
        self.url = "http://127.0.0.1:%d" % port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        rest = self.proc.stderr.read()
        self.log.extend(rest.splitlines())
        return self.proc.returncode


def start_server(repo, *extra):
    cmd = [sys.executable, "-m", "LowResSegLib.edge.server", "--repository", repo, "--port", "0"] + list(extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if '"event": "start"' in line:
            return Running(proc, json.loads(line)["port"], lines)
    proc.kill()
    raise AssertionError("server did not start: %s" % "\n".join(lines + [proc.stderr.read()]))


@pytest.fixture(scope="module")
def server(repo):
    s = start_server(repo, "--max-body-mb", "1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def secured(repo, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(str(token_file), 0o600)
    s = start_server(repo, "--token-file", str(token_file))
    yield s
    s.stop()


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def volume():
    img, _ = cube_phantom(SHAPE, BRAIN, CUBE)
    return Volume(img.astype(np.float32), np.diag([0.9, 0.8, 3.0, 1.0]))


def test_endpoints_answer_as_kserve_v2(server):
    assert get(server.url + "/v2/health/live")[0] == 200 and get(server.url + "/v2/health/ready")[0] == 200
    status, meta = get(server.url + "/v2")
    assert status == 200 and "binary_tensor_data" in meta["extensions"]
    status, model = get(server.url + "/v2/models/%s" % MODEL)
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 16, 16]}]
    assert model["outputs"] == [{"name": "labels", "datatype": "BOOL", "shape": [-1, 64, 64]},
                                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1, 64, 64]},
                                {"name": "probabilities_8bit", "datatype": "FP16", "shape": [-1, 1, 64, 64]}]
    status, config = get(server.url + "/v2/models/%s/versions/1/config" % MODEL)
    assert json.loads(config["parameters"]["lowresseg"]["string_value"])["name"] == MODEL
    assert get(server.url + "/v2/models/%s/ready" % MODEL)[0] == 200
    status, err = get(server.url + "/v2/models/nope/ready")
    assert status == 404 and "unknown model 'nope'" in err["error"] and set(err) == {"error"}


def test_remote_segmentation_equals_local(server, repo):
    engine = RemoteEngine(server.url, MODEL)
    assert engine.card == LocalEngine(MODEL, repo).card
    remote = segment(volume(), engine, chunk=3)  # several requests over one keep-alive connection
    local = segment(volume(), LocalEngine(MODEL, repo))
    assert engine.output == "probabilities_8bit" == LocalEngine(MODEL, repo).output
    np.testing.assert_array_equal(remote.labels, local.labels)
    np.testing.assert_array_equal(remote.probabilities, local.probabilities)
    assert remote.labels.any()


def test_token_is_required_and_checked(secured):
    assert get(secured.url + "/v2/health/live")[0] == 401
    status, err = get(secured.url + "/v2", token="wrong" * 8)
    assert status == 401 and set(err) == {"error"}
    with pytest.raises(RemoteError, match="refused the token.*HTTP 401"):
        RemoteEngine(secured.url, MODEL, token="not-the-token-at-all")
    engine = RemoteEngine(secured.url, MODEL, token=TOKEN)
    assert segment(volume(), engine).labels.any()
    assert not any(TOKEN in line for line in secured.log)


def _post(url, body, headers):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_busy_queue_answers_503_with_retry_after(repo):
    from LowResSegLib.edge.protocol import decode_request, encode_request
    from LowResSegLib.edge.server import HttpError, ModelHost

    host = ModelHost(repo, max_queue=1)
    body, headers = encode_request([("image", np.zeros((1, 1, 16, 16), np.float32))])
    request = decode_request(body, headers["Inference-Header-Content-Length"])
    assert host.slots.acquire(blocking=False)  # one inference in flight fills the queue
    with pytest.raises(HttpError) as err:
        host.infer(MODEL, request)
    assert err.value.status == 503 and err.value.headers == {"Retry-After": "1"}
    host.slots.release()
    outputs, _ = host.infer(MODEL, request)
    assert [n for n, _ in outputs] == ["labels", "probabilities", "probabilities_8bit"]


def test_a_large_request_runs_in_parts_of_max_batch_with_the_same_result(repo):
    from LowResSegLib.edge.protocol import decode_request, encode_request
    from LowResSegLib.edge.server import ModelHost

    x = np.random.default_rng(3).uniform(0, 4, (7, 1, 16, 16)).astype(np.float32)
    body, headers = encode_request([("image", x)])
    request = decode_request(body, headers["Inference-Header-Content-Length"])
    whole = dict(ModelHost(repo, max_batch=64).infer(MODEL, request)[0])
    parts = dict(ModelHost(repo, max_batch=3).infer(MODEL, request)[0])  # 3 + 3 + 1 slices
    assert whole["labels"].shape == (7, 64, 64) and whole["labels"].any() and not whole["labels"].all()
    for name in whole:
        np.testing.assert_array_equal(parts[name], whole[name])


def test_refuses_a_network_address_without_a_token_and_a_loose_token_file(repo, tmp_path):
    out = subprocess.run([sys.executable, "-m", "LowResSegLib.edge.server", "--repository", repo, "--host", "0.0.0.0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert out.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in out.stderr
    loose = tmp_path / "token"
    loose.write_text(TOKEN)
    os.chmod(str(loose), 0o644)
    out = subprocess.run([sys.executable, "-m", "LowResSegLib.edge.server", "--repository", repo, "--token-file",
                          str(loose)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         timeout=60)
    assert out.returncode == 2 and "chmod 600" in out.stderr


def test_sigterm_stops_gracefully_and_a_dead_server_is_a_clear_client_error(repo):
    s = start_server(repo)
    engine = RemoteEngine(s.url, MODEL)
    assert s.stop() == 0
    records = [json.loads(l) for l in s.log if l.startswith("{")]
    assert records[-1] == {"event": "stop"}
    assert any(r.get("path") == "/v2/models/%s/config" % MODEL and r["status"] == 200 and "ms" in r
               for r in records)
    with pytest.raises(RemoteError, match="cannot reach http://127.0.0.1"):
        engine.infer(np.zeros((1, 1, 16, 16), np.float32))


def test_nvidia_tritonclient_works_unchanged(server, repo):
    """NVIDIA's own client (binary tensors, keep-alive, its own framing) against our server."""
    import tritonclient.http as httpclient  # the [dev] extra installs it: a missing client fails, not skips
    client = httpclient.InferenceServerClient(url="127.0.0.1:%d" % server.port)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL)["inputs"][0]["shape"] == [-1, 1, 16, 16]
    config = client.get_model_config(MODEL)
    assert json.loads(config["parameters"]["lowresseg"]["string_value"])["input_size"] == 16
    x = np.random.default_rng(0).uniform(0, 4, (3, 1, 16, 16)).astype(np.float32)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("labels", binary_data=True),
               httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(MODEL, [inp], outputs=outputs, request_id="42")
    labels, probs, probs_8bit = LocalEngine(MODEL, repo, optimise=False).session.run(None, {"image": x})
    np.testing.assert_array_equal(result.as_numpy("labels"), labels)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, atol=1e-6)
    assert result.get_response()["id"] == "42"
    # what RemoteEngine asks for, compressed both ways as tritonclient does it
    result = client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("probabilities_8bit")],
                          request_compression_algorithm="gzip", response_compression_algorithm="gzip")
    assert result.as_numpy("probabilities_8bit").dtype == np.float16
    np.testing.assert_array_equal(result.as_numpy("probabilities_8bit"), probs_8bit)
    assert client.get_server_metadata()["name"] == "lowresseg"
    json_in = httpclient.InferInput("image", list(x.shape), "FP32")
    json_in.set_data_from_numpy(x, binary_data=False)  # JSON "data", not the binary extension
    result = client.infer(MODEL, [json_in], outputs=[httpclient.InferRequestedOutput("labels", binary_data=False)])
    np.testing.assert_array_equal(result.as_numpy("labels"), labels)
    with pytest.raises(Exception, match="unknown model"):
        client.infer("no-such-model", [inp])


def test_lowresseg_serve_is_the_same_server(repo):
    from helpers import installed_tool

    exe = installed_tool("lowresseg")
    out = subprocess.run([exe, "serve", "--repository", repo, "--host", "192.0.2.1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert out.returncode == 2 and "refusing to listen on 192.0.2.1 without a token" in out.stderr


def test_probe_shows_server_models_and_round_trip(server, secured):
    from LowResSegLib.inference.engines import RemoteServer

    info = RemoteServer(server.url).probe()
    assert info["name"] == "lowresseg" and info["models"] == [MODEL] and info["ms"] > 0
    with pytest.raises(RemoteError, match="HTTP 401"):
        RemoteServer(secured.url, token="x" * 32).probe()
    assert RemoteServer(secured.url, token=TOKEN).probe()["models"] == [MODEL]
    with pytest.raises(RemoteError, match="cannot reach"):
        RemoteServer("http://127.0.0.1:9").probe()


def test_tls_is_verified_and_a_pinned_ca_is_accepted(repo, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    s = start_server(repo, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        url = "https://127.0.0.1:%d" % s.port
        with pytest.raises(RemoteError, match="TLS with https://127.0.0.1:.* failed .*CA file"):
            RemoteEngine(url, MODEL)  # a self-signed certificate is not trusted by default, never skipped
        engine = RemoteEngine(url, MODEL, ca_file=str(cert))
        assert segment(volume(), engine).labels.any()
    finally:
        s.stop()


def test_a_slow_client_is_dropped_and_others_are_served_meanwhile(repo):
    """Slowloris: half a request, then silence. The server drops it after --socket-timeout."""
    import socket

    s = start_server(repo, "--socket-timeout", "1")
    try:
        slow = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        slow.sendall(b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{" % MODEL.encode())
        assert get(s.url + "/v2/health/ready")[0] == 200  # served while the slow one hangs
        t0 = time.time()
        while slow.recv(4096):  # whatever the server says, it must then close the connection
            pass
        assert time.time() - t0 < 8  # closed by the server after ~1 s, not by our own 10 s timeout
        slow.close()
    finally:
        s.stop()



@pytest.mark.parametrize("path", ["/v2/models/../config", "/v2/models/%2e%2e/config", "/v2/models/-bad",
                                  "/v2/models/x/versions/2", "/v2/models/%s/versions/abc/ready" % MODEL,
                                  "/v2/models/%s/infer" % MODEL, "/etc/passwd"])
def test_odd_paths_and_names_get_404_and_nothing_else(server, path):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", path)
    reply = conn.getresponse()
    body = json.loads(reply.read().decode())
    assert reply.status == 404 and set(body) == {"error"}, (path, reply.status, body)
    conn.close()


def _raw(server, method, path, headers, body=b""):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, json.loads(data.decode())


def _image_request(x=None, outputs=None, edit=None, tail=None):
    """A real binary infer request, optionally with its JSON header edited or its binary tail replaced."""
    from LowResSegLib.edge.protocol import encode_request

    x = np.zeros((2, 1, 16, 16), np.float32) if x is None else x
    body, headers = encode_request([("image", x)], outputs=outputs)
    n = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(body[:n].decode())
    if edit:
        edit(doc)
    head = json.dumps(doc).encode()
    body = head + (body[n:] if tail is None else tail)
    return body, {"Inference-Header-Content-Length": str(len(head)), "Content-Length": str(len(body))}


def _with(body_headers, **extra):
    body, headers = body_headers
    headers = dict(headers, **{k.replace("_", "-"): v for k, v in extra.items()})
    return body, headers


def _bomb():
    import zlib

    body, headers = _image_request()
    packed = zlib.compress(body + b" " * (3 << 20), 9)  # inflates to 3 MB > the 1 MB cap
    return packed, dict(headers, **{"Content-Encoding": "deflate", "Content-Length": str(len(packed))})


INFER = "/v2/models/%s/infer" % MODEL
X2 = np.zeros((2, 1, 16, 16), np.float32)
# (kind, method, path, (body, headers), status, words in the error)
BAD_REQUESTS = [
    ("malformed JSON", "POST", INFER, (b"{garbage", {"Content-Length": "8"}), 400, "not valid JSON"),
    ("JSON not an object", "POST", INFER, (b"[1, 2]", {"Content-Length": "6"}), 400, "must be an object"),
    ("header length beyond the body", "POST", INFER,
     _with(_image_request(), Inference_Header_Content_Length="999999"), 400, "outside the"),
    ("header length not a number", "POST", INFER,
     _with(_image_request(), Inference_Header_Content_Length="abc"), 400, "must be an integer"),
    ("binary size mismatch", "POST", INFER,
     _image_request(edit=lambda d: d["inputs"][0]["parameters"].update(binary_data_size=4096)), 400, "does not match"),
    ("binary data cut short", "POST", INFER, _image_request(tail=X2.tobytes()[:-4]), 400, "ends before"),
    ("bytes after the last tensor", "POST", INFER, _image_request(tail=X2.tobytes() + b"\0" * 8), 400,
     "after the last"),
    ("unknown datatype", "POST", INFER, _image_request(edit=lambda d: d["inputs"][0].update(datatype="FP8")), 400,
     "unknown or unsupported datatype"),
    ("wrong dtype for the model", "POST", INFER, _image_request(x=X2.astype(np.float64)), 400, "must be FP32"),
    ("wrong slice size for the model", "POST", INFER, _image_request(x=np.zeros((2, 1, 32, 32), np.float32)), 400,
     "FP32 [N,1,16,16]"),
    ("negative dimension", "POST", INFER, _image_request(edit=lambda d: d["inputs"][0].update(shape=[2, 1, -16, -16])),
     400, "non-negative"),
    ("huge declared shape", "POST", INFER,
     _image_request(edit=lambda d: d["inputs"][0].update(shape=[1 << 20, 1 << 20])), 413, "larger than"),
    ("wrong input name", "POST", INFER, _image_request(edit=lambda d: d["inputs"][0].update(name="img")), 400, "image"),
    ("no inputs", "POST", INFER, (b'{"inputs": []}', {"Content-Length": "14"}), 400, "no inputs"),
    ("unknown output", "POST", INFER, _image_request(outputs=["masks"]), 400, "has no output 'masks'"),
    ("oversized body", "POST", INFER, _image_request(x=np.zeros((1200, 1, 16, 16), np.float32)), 413,
     "larger than this server accepts"),
    ("missing Content-Length", "POST", INFER, (b"", {}), 411, "Content-Length"),
    ("chunked body", "POST", INFER, (b"5\r\nhello\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}), 411, "chunked"),
    ("negative Content-Length", "POST", INFER, (b"", {"Content-Length": "-5"}), 400, "negative"),
    ("unsupported Content-Encoding", "POST", INFER, _with(_image_request(), Content_Encoding="br"), 400,
     "unsupported Content-Encoding"),
    ("corrupt gzip body", "POST", INFER, (b"\x1f\x8b not gzip", {"Content-Encoding": "gzip", "Content-Length": "11"}),
     400, "could not be decompressed"),
    ("gzip bomb", "POST", INFER, _bomb(), 413, "decompressed body is larger"),
    ("unknown model", "POST", "/v2/models/nope/infer", _image_request(), 404, "unknown model 'nope'"),
    ("unknown version", "POST", "/v2/models/%s/versions/7/infer" % MODEL, _image_request(), 404, "no version 7"),
    ("GET on infer", "GET", INFER, (b"", {}), 404, "no such endpoint"),
    ("unsupported method", "DELETE", "/v2/models/%s" % MODEL, (b"", {}), 405, "not supported"),
]


@pytest.mark.parametrize("kind,method,path,request_,status,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_each_kind_of_bad_request_gets_its_4xx_and_the_server_keeps_serving(server, kind, method, path, request_,
                                                                           status, words):
    body, headers = request_
    got, reply = _raw(server, method, path, headers, body)
    assert (got, set(reply)) == (status, {"error"}), (kind, got, reply)
    assert words in reply["error"] and "Traceback" not in reply["error"], (kind, reply)
    assert get(server.url + "/v2/health/ready")[0] == 200


def test_there_are_at_least_20_kinds_of_bad_request():
    assert len({b[0] for b in BAD_REQUESTS}) >= 20


def test_a_truncated_body_gets_400_and_the_server_keeps_serving(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\"" % INFER.encode())
        sock.shutdown(socket.SHUT_WR)  # the client goes away after 9 of 100 bytes
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400") and b"ended after 9 of 100 bytes" in reply
    assert segment(volume(), RemoteEngine(server.url, MODEL)).labels.any()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_restarted_server_serves_the_next_call(repo):
    port = str(_free_port())
    s = start_server(repo, "--port", port)
    engine = RemoteEngine(s.url, MODEL)
    x = np.zeros((2, 1, 16, 16), np.float32)
    engine.infer(x)
    s.stop()
    s = start_server(repo, "--port", port)
    try:
        probs = engine.infer(x)  # the idle keep-alive connection died with the old process
        assert probs.shape == (2, 1, 64, 64)
    finally:
        s.stop()


def _fake_server(serve):
    """A loopback socket whose connections ``serve(listener)`` handles in a thread (a broken or hostile server)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    return listener


def test_a_server_that_never_answers_times_out(repo):
    accepted = []
    listener = _fake_server(lambda l: accepted.append(l.accept()))
    t0 = time.time()
    with pytest.raises(RemoteError, match="did not answer within 1 s"):
        RemoteEngine("http://127.0.0.1:%d" % listener.getsockname()[1], MODEL, read_timeout=1.0)
    assert time.time() - t0 < 10
    listener.close()


def test_cancel_during_a_remote_run_leaves_no_result_and_the_server_fine(server):
    """The worker process is killed mid-request stream (Cancel in Slicer): the server keeps serving."""
    from LowResSegLib.frontends.background import BackgroundRuns

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    img, _ = cube_phantom((150,) + SHAPE[1:], (slice(1, 149),) + BRAIN[1:], CUBE)
    tall = Volume(img.astype(np.float32), np.diag([0.9, 0.8, 3.0, 1.0]))  # 150 requests: still running at Cancel
    runs = BackgroundRuns(tall, [MODEL], {"kind": "remote", "url": server.url, "token": None}, chunk=1,
                          pythonpath=[root]).start()
    seen = []
    while not any(e.kind == "progress" for e in seen):
        seen += runs.wait(0.02)
        assert not runs.finished, seen
    runs.cancel()
    assert [e.kind for e in runs.poll()] == ["cancelled", "finished"] and "result" not in [e.kind for e in seen]
    assert segment(volume(), RemoteEngine(server.url, MODEL)).labels.any()  # the server is fine


def test_fuzzed_bodies_never_get_a_5xx_and_the_server_survives(server):
    """Random and mutated bodies against the real server: 4xx every time, never 5xx, never a crash."""
    from LowResSegLib.edge.protocol import encode_request

    rng = np.random.default_rng(0)
    good, headers = encode_request([("image", np.zeros((1, 1, 16, 16), np.float32))])
    statuses = []
    for n in range(150):
        body = bytearray(good)
        for _ in range(int(rng.integers(1, 6))):
            body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
        if n % 5 == 0:
            body = bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
        length = headers["Inference-Header-Content-Length"] if n % 3 else str(int(rng.integers(-5, 400)))
        status, reply = _post(server.url + "/v2/models/%s/infer" % MODEL, bytes(body),
                              {"Inference-Header-Content-Length": length})
        statuses.append(status)
        assert status < 500, (n, status, reply[:200])
    assert get(server.url + "/v2/health/ready")[0] == 200 and 400 in statuses


def test_replies_are_gzipped_only_when_asked_and_cost_few_bytes(server):
    import http.client
    import gzip

    x = np.zeros((8, 1, 16, 16), np.float32)
    x[:, :, 4:9, 5:11] = 4.0  # a lesion on an empty background, as slices mostly are
    body, headers = _image_request(x=x, outputs=["probabilities_8bit"])
    sizes = {}
    for accept in (None, "gzip", "deflate;q=0.5, gzip;q=0", "br"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.putrequest("POST", INFER, skip_accept_encoding=True)
        for k, v in dict(headers, **({"Accept-Encoding": accept} if accept else {})).items():
            conn.putheader(k, v)
        conn.endheaders(body)
        reply = conn.getresponse()
        data = reply.read()
        conn.close()
        assert reply.status == 200
        sizes[accept] = (reply.getheader("Content-Encoding"), len(data))
        if accept == "gzip":
            raw = gzip.decompress(data)
    assert sizes[None][0] is None and sizes["br"][0] is None and sizes["br"][1] == sizes[None][1]
    assert sizes["gzip"][0] == "gzip" and sizes["deflate;q=0.5, gzip;q=0"][0] == "deflate"
    assert len(raw) == sizes[None][1] and sizes["gzip"][1] < sizes[None][1] / 5


def test_a_remote_volume_crosses_the_wire_compressed_with_the_same_labels(server, repo):
    engine = RemoteEngine(server.url, MODEL)
    received = []
    request = engine.server.request

    def counting(method, path, body=None, headers=None):
        status, reply, data = request(method, path, body, headers)
        received.append((int(reply.getheader("Content-Length")), len(data), reply.getheader("Content-Encoding")))
        return status, reply, data

    engine.server.request = counting
    remote = segment(volume(), engine, chunk=4)
    wire, decoded = sum(r[0] for r in received), sum(r[1] for r in received)
    assert all(r[2] == "gzip" for r in received) and wire < decoded / 5
    np.testing.assert_array_equal(remote.labels, segment(volume(), LocalEngine(MODEL, repo)).labels)


def test_a_model_exported_before_the_8bit_output_still_works(tmp_path):
    repo = str(tmp_path)
    add_threshold_model(repo, "legacy-16to64", r=16, big_r=64, threshold=2.5, legacy=True)
    add_threshold_model(repo, MODEL, r=16, big_r=64, threshold=2.5)
    s = start_server(repo)
    try:
        old, new = RemoteEngine(s.url, "legacy-16to64"), RemoteEngine(s.url, MODEL)
        assert old.output == LocalEngine("legacy-16to64", repo).output == "probabilities"
        exact = segment(volume(), old)
        assert exact.labels.any()
        np.testing.assert_array_equal(exact.labels, segment(volume(), LocalEngine("legacy-16to64", repo)).labels)
        coarse = segment(volume(), new)  # same graph, read through the 8-bit output
        assert np.abs(coarse.probabilities - exact.probabilities).max() <= 0.5 / 255 + 5e-4
        with pytest.raises(ValueError, match="has no output 'probabilities_8bit'"):
            RemoteEngine(s.url, "legacy-16to64", output="probabilities_8bit")
    finally:
        s.stop()


def _one_reply_server(reply):
    """Answers any request with the raw bytes ``reply``."""
    def serve(listener):
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(reply)
            conn.close()

    return _fake_server(serve)


@pytest.mark.parametrize("encoding,payload,message", [
    ("gzip", b"\x1f\x8bnot really", "is corrupt"),
    ("br", b"whatever", "cannot read"),
    ("deflate", None, "inflates beyond"),
])
def test_a_bad_compressed_reply_is_a_clear_client_error(monkeypatch, encoding, payload, message):
    import zlib

    import LowResSegLib.inference.engines as engines

    if payload is None:  # a reply that inflates past the client's cap
        monkeypatch.setattr(engines, "MAX_REPLY_BYTES", 1 << 16)
        payload = zlib.compress(b"{" + b" " * (1 << 20) + b"}", 9)
    head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
            "Content-Length: %d\r\nConnection: close\r\n\r\n" % (encoding, len(payload))).encode()
    listener = _one_reply_server(head + payload)
    try:
        with pytest.raises(RemoteError, match=message):
            RemoteEngine("http://127.0.0.1:%d" % listener.getsockname()[1], MODEL)
    finally:
        listener.close()
