"""The edge inference server: a KServe v2 / Triton-compatible HTTP endpoint for a Jetson Nano.

    python3 -m LowResSegLib.edge.server --repository Resources/Models [--host 127.0.0.1] [--port 8000]
        [--token-file F] [--tls-cert C --tls-key K] [--max-body-mb 64] [--max-queue 4] [--max-batch 8]
        [--providers ...]

It serves a model repository in Triton's layout (our modelstore) with the endpoints of
docs/jetson.md and ../DESIGN §6, so NVIDIA's tritonclient and our RemoteEngine both work, and
Triton can later serve the same folder unchanged. Pre- and post-processing stay on the client:
the server runs the ONNX graph on the low-resolution slices it is sent.

Safety: binds loopback unless told otherwise, and refuses a non-loopback address without a
bearer token (compared with hmac.compare_digest). Bodies are capped before they are read,
declared tensor sizes are checked (LowResSegLib.edge.protocol), a bounded queue answers 503 with
Retry-After instead of swapping, sockets time out (a slow client cannot hold a thread forever),
errors are ``{"error": ...}`` without tracebacks or pixel data, SIGTERM shuts down gracefully,
and every request is logged as one JSON line (method, path, status, bytes, ms; no token, no data).

Python 3.6 (JetPack 4.6) import closure: stdlib, numpy, onnxruntime, LowResSegLib.repository.modelstore,
LowResSegLib.edge.protocol and LowResSegLib.edge.tokens.
"""

import argparse
import gzip
import hmac
import http.server
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import zlib

from LowResSegLib.edge import protocol
from LowResSegLib.repository.modelstore import ModelRepository, ModelStoreError
from LowResSegLib.edge.tokens import read_token

__all__ = ["ModelHost", "make_server", "main"]

LOG = logging.getLogger("lowresseg.server")
SERVER_NAME, SERVER_VERSION = "lowresseg", "0.1.0"
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SOCKET_TIMEOUT_S = 30
COMPRESS_MIN_BYTES = 1024
_KSERVE_TYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(bool)": "BOOL",
                 "tensor(uint8)": "UINT8", "tensor(int8)": "INT8", "tensor(int32)": "INT32", "tensor(int64)": "INT64"}
_MODEL_PATH = re.compile(r"^/v2/models/([A-Za-z0-9][A-Za-z0-9._-]*)(?:/versions/([0-9]+))?(/ready|/config|/infer)?$")


class HttpError(Exception):
    def __init__(self, status, message, headers=None):
        Exception.__init__(self, message)
        self.status, self.message, self.headers = status, message, headers or {}


def _graph_io(session):
    """(inputs, outputs) of a session: [(name, KServe datatype, shape with -1 for the batch)]."""
    return [[(t.name, _KSERVE_TYPES.get(t.type, t.type), [d if isinstance(d, int) else -1 for d in t.shape])
             for t in group] for group in (session.get_inputs(), session.get_outputs())]


class ModelHost(object):
    """The repository's models, each with one onnxruntime session, and the bounded inference queue."""

    def __init__(self, repository, providers=None, max_queue=4, max_batch=8):
        import onnxruntime as ort

        self.repo = ModelRepository(repository)
        available = ort.get_available_providers()
        wanted = providers or [p for p in PROVIDER_ORDER if p in available]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ValueError("execution provider(s) %s not available here (available: %s)"
                             % (", ".join(missing), ", ".join(available)))
        self.providers = wanted
        self.sessions, self.cards, self.io, self.skipped = {}, {}, {}, {}
        for name in self.repo.names():
            try:
                card = self.repo.card(name)
                path = self.repo.onnx_path(name)  # sha256 checked against the card
            except ModelStoreError as exc:  # one damaged model must not take the others down
                self.skipped[name] = str(exc)
                LOG.warning(json.dumps({"event": "model-skipped", "model": name, "reason": str(exc)}))
                continue
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            # idle onnxruntime threads must not spin: between runs the same cores decode, compress and send
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(path, sess_options=opts, providers=self.providers)
            self.sessions[name], self.cards[name] = session, card
            self.io[name] = _graph_io(session)
        if not self.cards:
            raise ValueError("no usable model in %s%s" % (self.repo.root, (": " + "; ".join(self.skipped.values()))
                                                           if self.skipped else ""))
        self.slots = threading.BoundedSemaphore(max(1, int(max_queue)))
        self.max_batch = max(1, int(max_batch))  # slices per session.run: bounds the activation memory
        self.device = threading.Lock()  # one inference at a time on the (one) GPU

    def card(self, name):
        if name not in self.cards:
            raise HttpError(404, "unknown model %r (served: %s)" % (name, ", ".join(sorted(self.cards)) or "none"))
        return self.cards[name]

    def tensors(self, name):
        """(inputs, outputs) of the model's graph, as ``_graph_io`` read them at start."""
        self.card(name)  # 404 for an unknown name
        return self.io[name]

    def metadata(self, name):
        inputs, outputs = self.tensors(name)
        return {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": n, "datatype": t, "shape": s} for n, t, s in inputs],
                "outputs": [{"name": n, "datatype": t, "shape": s} for n, t, s in outputs]}

    def config(self, name):
        """Triton's ModelConfig as JSON, with the model card in ``parameters`` (what /config returns)."""
        card = self.card(name)
        inputs, outputs = self.tensors(name)
        return {"name": name, "platform": "onnxruntime_onnx", "max_batch_size": 64,
                "input": [{"name": n, "data_type": "TYPE_" + t, "dims": s[1:]} for n, t, s in inputs],
                "output": [{"name": n, "data_type": "TYPE_" + t, "dims": s[1:]} for n, t, s in outputs],
                "parameters": {"lowresseg": {"string_value": json.dumps(card, sort_keys=True)}}}

    def infer(self, name, request):
        import numpy as np

        card = self.card(name)
        r = card["input_size"]
        image = request.input("image")
        if image.dtype != np.float32 or image.ndim != 4 or image.shape[1:] != (1, r, r) or image.shape[0] < 1:
            raise HttpError(400, "input 'image' must be FP32 [N,1,%d,%d], got %s %s"
                            % (r, r, image.dtype, list(image.shape)))
        known = [n for n, _, _ in self.tensors(name)[1]]
        asked = request.outputs or [(n, bool(request.parameters.get("binary_data_output", False))) for n in known]
        for n, _ in asked:
            if n not in known:
                raise HttpError(400, "model %s has no output %r (outputs: %s)" % (name, n, ", ".join(known)))
        names = [n for n, _ in asked]
        if not self.slots.acquire(blocking=False):
            raise HttpError(503, "the server is busy (inference queue full); retry shortly", {"Retry-After": "1"})
        try:
            with self.device:
                parts = [self._run(name, names, image[i:i + self.max_batch])
                         for i in range(0, image.shape[0], self.max_batch)]
        finally:
            self.slots.release()
        values = [parts[0][k] if len(parts) == 1 else np.concatenate([p[k] for p in parts]) for k in range(len(names))]
        return list(zip(names, values)), {n for n, binary in asked if binary}

    def _run(self, name, names, image):
        import numpy as np

        try:
            return self.sessions[name].run(names, {"image": np.ascontiguousarray(image)})
        except Exception as exc:  # onnxruntime reports a failed allocation as a generic Fail
            if isinstance(exc, MemoryError) or "allocate memory" in str(exc):
                LOG.warning(json.dumps({"event": "out-of-memory", "model": name, "slices": int(image.shape[0])}))
                raise HttpError(503, "the server ran out of memory running %d slices of %s at once; restart it with "
                                     "a smaller --max-batch (now %d)" % (image.shape[0], name, self.max_batch))
            raise


def accepted_encoding(header):
    """'gzip' or 'deflate' when an Accept-Encoding header allows it (gzip preferred), else None."""
    allowed = {}
    for part in (header or "").split(","):
        token, _, params = part.strip().partition(";")
        q = 1.0
        m = re.search(r"q\s*=\s*([0-9.]+)", params)
        if m:
            try:
                q = float(m.group(1))
            except ValueError:
                q = 0.0
        allowed[token.strip().lower()] = q
    for name in ("gzip", "deflate"):
        if allowed.get(name, 0.0) > 0:
            return name
    return None


def compress(body, encoding):
    """Level 1: on a Nano's CPU speed matters more than the last few per cent of size."""
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1)
    return zlib.compress(body, 1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "%s/%s" % (SERVER_NAME, SERVER_VERSION)
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, fmt, *args):  # the stdlib's own lines: replaced by one JSON line per request
        pass

    def _reply(self, status, body, headers=None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._sent = (status, len(body))

    def _json(self, status, doc, headers=None):
        self._reply(status, json.dumps(doc).encode("utf-8"), headers)

    def _authorised(self):
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8"), token)

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise HttpError(411, "chunked request bodies are not accepted; send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HttpError(411, "a Content-Length header is required")
        if length < 0:
            raise HttpError(400, "Content-Length must not be negative")
        if length > self.server.max_body:
            if length <= 4 * self.server.max_body:  # read and drop it, so the client hears the 413, not a reset
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                self._body_read = left == 0
            raise HttpError(413, "request body of %d bytes is larger than this server accepts (%d bytes)"
                            % (length, self.server.max_body))
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) != length:
            self.close_connection = True
            raise HttpError(400, "the request body ended after %d of %d bytes" % (len(body), length))
        encoding = self.headers.get("Content-Encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            try:
                body = d.decompress(body, self.server.max_body + 1)
            except zlib.error:
                raise HttpError(400, "the %s body could not be decompressed" % encoding)
            if len(body) > self.server.max_body or d.unconsumed_tail:
                raise HttpError(413, "the decompressed body is larger than this server accepts")
        elif encoding != "identity":
            raise HttpError(400, "unsupported Content-Encoding %r" % encoding)
        return body

    def _route(self):
        host = self.server.host
        path = self.path.split("?", 1)[0]
        if not self._authorised():
            raise HttpError(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="lowresseg"'})
        if self.command == "GET":
            if path == "/v2/health/live":
                return self._json(200, {"live": True})
            if path == "/v2/health/ready":
                return self._json(200, {"ready": True})
            if path == "/v2":
                return self._json(200, {"name": SERVER_NAME, "version": SERVER_VERSION,
                                        "extensions": ["binary_tensor_data", "model_configuration",
                                                       "model_repository"]})
            m = _MODEL_PATH.match(path)
            if m and m.group(3) != "/infer":
                name, version, what = m.groups()
                if version not in (None, "1"):
                    raise HttpError(404, "model %s has no version %s (versions: 1)" % (name, version))
                if what == "/ready":
                    host.card(name)
                    return self._json(200, {"name": name, "ready": True})
                if what == "/config":
                    return self._json(200, host.config(name))
                return self._json(200, host.metadata(name))
            raise HttpError(404, "no such endpoint: GET %s" % path)
        if self.command == "POST" and path == "/v2/repository/index":  # Triton's model repository extension
            self._body()
            return self._json(200, [{"name": n, "version": "1", "state": "READY"} for n in sorted(host.cards)])
        if self.command == "POST":
            m = _MODEL_PATH.match(path)
            if not (m and m.group(3) == "/infer"):
                raise HttpError(404, "no such endpoint: POST %s" % path)
            name, version, _ = m.groups()
            if version not in (None, "1"):
                raise HttpError(404, "model %s has no version %s (versions: 1)" % (name, version))
            host.card(name)
            body = self._body()
            try:
                request = protocol.decode_request(body, self.headers.get(protocol.HEADER_LENGTH),
                                                  self.server.max_elements)
                outputs, binary = host.infer(name, request)
            except protocol.ProtocolError as exc:
                raise HttpError(exc.status, str(exc))
            out_body, headers = protocol.encode_response(name, 1, outputs, binary, request.id)
            ctype = headers.pop("Content-Type", "application/json")
            encoding = accepted_encoding(self.headers.get("Accept-Encoding"))
            if encoding and len(out_body) >= COMPRESS_MIN_BYTES:
                out_body, headers["Content-Encoding"] = compress(out_body, encoding), encoding
            return self._reply(200, out_body, headers, ctype)
        raise HttpError(405, "method %s is not supported" % self.command)

    def _handle(self):
        t0 = time.time()
        self._sent, self._body_read = (0, 0), False
        try:
            self._route()
        except HttpError as exc:
            headers = dict(exc.headers)
            if self.command in ("POST", "PUT", "PATCH") and not self._body_read:
                self.close_connection = True  # an unread body must not be taken for the next request
                headers["Connection"] = "close"
            self._json(exc.status, {"error": exc.message}, headers)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # never a traceback to the client; the type only in the log
            LOG.error(json.dumps({"event": "internal-error", "type": type(exc).__name__}))
            self.close_connection = True
            try:
                self._json(500, {"error": "internal server error"})
            except OSError:
                pass
        LOG.info(json.dumps({"method": self.command, "path": self.path.split("?", 1)[0], "status": self._sent[0],
                             "bytes": self._sent[1], "ms": round(1000 * (time.time() - t0), 1),
                             "client": self.client_address[0]}))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # the others get 405 from _route


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(repository, host="127.0.0.1", port=8000, token=None, tls_cert=None, tls_key=None,
                max_body_mb=64, max_queue=4, providers=None, socket_timeout=SOCKET_TIMEOUT_S, max_batch=8):
    """A ready (not yet serving) server; refuses a non-loopback address without a token."""
    if not _is_loopback(host) and not token:
        raise ValueError("refusing to listen on %s without a token: anyone on the network could use it; pass "
                         "--token-file (see docs/jetson.md) or bind 127.0.0.1" % host)
    model_host = ModelHost(repository, providers, max_queue, max_batch)
    handler = type("TimedHandler", (Handler,), {"timeout": float(socket_timeout)})
    server = Server((host, port), handler)
    server.host = model_host
    server.token = token.encode("utf-8") if token else None
    server.max_body = int(max_body_mb * 1024 * 1024)
    server.max_elements = server.max_body // 4
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
        context.load_cert_chain(tls_cert, tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def build_parser():
    ap = argparse.ArgumentParser(prog="lowresseg serve",
                                 description="KServe v2 / Triton-compatible inference server for LowResSeg models")
    ap.add_argument("--repository", required=True, help="model repository folder (Triton layout)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--token-file", help="file holding the bearer token (mode 600); required off loopback")
    ap.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (default 64 MB)")
    ap.add_argument("--max-queue", type=int, default=4, help="inferences waiting or running before 503 (default 4)")
    ap.add_argument("--max-batch", type=int, default=8,
                    help="slices per onnxruntime run; a larger request runs in parts (default 8: a 256² model at "
                         "batch 32 needs more than 2 GB)")
    ap.add_argument("--providers", nargs="+", help="onnxruntime providers (default: TensorRT, CUDA, CPU as available)")
    ap.add_argument("--socket-timeout", type=float, default=SOCKET_TIMEOUT_S,
                    help="seconds a connection may stay silent mid-request or idle (default %d)" % SOCKET_TIMEOUT_S)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        token = read_token(args.token_file) if args.token_file else None
        server = make_server(args.repository, args.host, args.port, token, args.tls_cert, args.tls_key,
                             args.max_body_mb, args.max_queue, args.providers, args.socket_timeout, args.max_batch)
    except (ValueError, OSError, ModelStoreError) as exc:
        print("lowresseg serve: error: %s" % exc, file=sys.stderr)
        return 2
    LOG.info(json.dumps({"event": "start", "host": args.host, "port": server.server_address[1],
                         "tls": bool(args.tls_cert), "token": bool(token), "providers": server.host.providers,
                         "max_batch": args.max_batch, "models": sorted(server.host.cards)}))

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        LOG.info(json.dumps({"event": "stop"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
