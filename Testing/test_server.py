"""The edge server as a real process on 127.0.0.1, and RemoteEngine against it (no mocks).

Models are tiny real ONNX graphs (model_factory); the server is `python -m LowResSegLib.server`.
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

from LowResSegLib.engines import LocalEngine, RemoteEngine, RemoteError
from LowResSegLib.geometry import Volume
from LowResSegLib.pipeline import segment

from helpers import cube_phantom
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
    cmd = [sys.executable, "-m", "LowResSegLib.server", "--repository", repo, "--port", "0"] + list(extra)
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
    np.testing.assert_array_equal(remote.labels, local.labels)
    np.testing.assert_allclose(remote.probabilities, local.probabilities, atol=1e-6)
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


def test_bad_requests_get_one_clear_error_and_the_server_keeps_serving(server):
    from LowResSegLib.protocol import encode_request

    infer = server.url + "/v2/models/%s/infer" % MODEL
    body, headers = encode_request([("image", np.zeros((2, 1, 16, 16), np.float32))])
    lying = body.replace(b'"binary_data_size":2048', b'"binary_data_size":4096')
    status, reply = _post(infer, lying, headers)
    assert status == 400 and "does not match" in json.loads(reply.decode())["error"]
    big, big_headers = encode_request([("image", np.zeros((1200, 1, 16, 16), np.float32))])  # 1.2 MB > 1 MB
    status, reply = _post(infer, big, big_headers)
    assert status == 413 and "larger than this server accepts" in json.loads(reply.decode())["error"]
    wrong, wrong_headers = encode_request([("image", np.zeros((2, 1, 32, 32), np.float32))])
    status, reply = _post(infer, wrong, wrong_headers)
    assert status == 400 and "FP32 [N,1,16,16]" in json.loads(reply.decode())["error"]
    for status_reply in (_post(infer, b"{garbage", {}),):
        assert status_reply[0] == 400 and b"Traceback" not in status_reply[1]
    assert get(server.url + "/v2/health/ready")[0] == 200  # still serving
    assert segment(volume(), RemoteEngine(server.url, MODEL)).labels.any()


def test_busy_queue_answers_503_with_retry_after(repo):
    from LowResSegLib.protocol import decode_request, encode_request
    from LowResSegLib.server import HttpError, ModelHost

    host = ModelHost(repo, max_queue=1)
    body, headers = encode_request([("image", np.zeros((1, 1, 16, 16), np.float32))])
    request = decode_request(body, headers["Inference-Header-Content-Length"])
    assert host.slots.acquire(blocking=False)  # one inference in flight fills the queue
    with pytest.raises(HttpError) as err:
        host.infer(MODEL, request)
    assert err.value.status == 503 and err.value.headers == {"Retry-After": "1"}
    host.slots.release()
    outputs, _ = host.infer(MODEL, request)
    assert [n for n, _ in outputs] == ["labels", "probabilities"]


def test_refuses_a_network_address_without_a_token_and_a_loose_token_file(repo, tmp_path):
    out = subprocess.run([sys.executable, "-m", "LowResSegLib.server", "--repository", repo, "--host", "0.0.0.0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert out.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in out.stderr
    loose = tmp_path / "token"
    loose.write_text(TOKEN)
    os.chmod(str(loose), 0o644)
    out = subprocess.run([sys.executable, "-m", "LowResSegLib.server", "--repository", repo, "--token-file",
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
    labels, probs = LocalEngine(MODEL, repo).infer(x)
    np.testing.assert_array_equal(result.as_numpy("labels"), labels)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, atol=1e-6)
    assert result.get_response()["id"] == "42"
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
    from LowResSegLib.engines import RemoteServer

    info = RemoteServer(server.url).probe()
    assert info["name"] == "lowresseg" and info["models"] == [MODEL] and info["ms"] > 0
    with pytest.raises(RemoteError, match="HTTP 401"):
        RemoteServer(secured.url, token="x" * 32).probe()
    assert RemoteServer(secured.url, token=TOKEN).probe()["models"] == [MODEL]
    with pytest.raises(RemoteError, match="cannot reach"):
        RemoteServer("http://127.0.0.1:9").probe()


def test_tls_is_verified_and_a_pinned_ca_is_accepted(repo, tmp_path):
    import shutil as _shutil

    openssl = _shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate (Debian package openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
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


def test_missing_length_and_chunked_bodies_get_411(server):
    infer = "/v2/models/%s/infer" % MODEL
    status, body = _raw(server, "POST", infer, {})
    assert status == 411 and "Content-Length" in body["error"]
    status, body = _raw(server, "POST", infer, {"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n")
    assert status == 411 and "chunked" in body["error"]
    assert get(server.url + "/v2/health/ready")[0] == 200


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
        labels, _ = engine.infer(x)  # the idle keep-alive connection died with the old process
        assert labels.shape == (2, 64, 64)
    finally:
        s.stop()


def test_a_server_that_never_answers_times_out(repo):
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    t0 = time.time()
    with pytest.raises(RemoteError, match="did not answer within 1 s"):
        RemoteEngine("http://127.0.0.1:%d" % listener.getsockname()[1], MODEL, read_timeout=1.0)
    assert time.time() - t0 < 10
    listener.close()


def test_cancel_during_a_remote_run_leaves_no_result_and_the_server_fine(server):
    from LowResSegLib.background import BackgroundRuns

    def cancelling_segment(vol, engine, chunk, progress, cancel):
        def progress_then_cancel(done, total):
            progress(done, total)
            runs.cancel()
        return segment(vol, engine, chunk=chunk, progress=progress_then_cancel, cancel=cancel)

    runs = BackgroundRuns(volume(), [(MODEL, lambda: RemoteEngine(server.url, MODEL))], chunk=2,
                          segment=cancelling_segment)
    events = runs.start().wait(60)
    assert [e.kind for e in events] == ["progress", "cancelled", "finished"]
    assert segment(volume(), RemoteEngine(server.url, MODEL)).labels.any()  # the server is fine


def test_fuzzed_bodies_never_get_a_5xx_and_the_server_survives(server):
    """Random and mutated bodies against the real server: 4xx every time, never 5xx, never a crash."""
    from LowResSegLib.protocol import encode_request

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
