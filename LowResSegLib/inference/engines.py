"""Engines run a model's ONNX graph on a batch of prepared slices.

Pre- and post-processing live in :mod:`LowResSegLib.inference.pipeline`, one implementation
for every engine, so a local and a remote run of the same model agree exactly.
"""

import json
import os

import numpy as np

from LowResSegLib.repository.modelstore import PROBABILITY_OUTPUTS, ModelRepository

#: Largest decompressed reply accepted from a server (a gzip bomb must not exhaust memory).
MAX_REPLY_BYTES = 1 << 30


class Engine(object):
    """``card`` (the model card) and ``infer(batch[N,1,r,r] float32) -> probabilities [N,K,R,R]``.

    ``output`` is the graph output read: ``probabilities_8bit`` when the graph has it, so a local
    and a remote run read the same tensor and give identical labels. ``infer`` returns it in its own
    type (FP16 for ``probabilities_8bit``): the pipeline converts only the windows it resamples;
    converting every slice to FP32 cost 40-47 ms per 240x240x155 volume, about a tenth of jhead-32's graph.
    """

    card = None
    output = None

    def infer(self, batch):
        raise NotImplementedError

    def check_batch(self, batch):
        r = self.card["input_size"]
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (1, r, r):
            raise ValueError("model %s expects slices [N,1,%d,%d], got %s" % (self.card["name"], r, r, batch.shape))
        return batch


def choose_output(available, wanted, where):
    """``wanted`` if the graph has it, else the preferred probability output it has."""
    if wanted is not None:
        if wanted not in available:
            raise ValueError("%s has no output %r (outputs: %s)" % (where, wanted, ", ".join(available)))
        return wanted
    for name in PROBABILITY_OUTPUTS:
        if name in available:
            return name
    raise ValueError("%s returns none of %s; re-export it with `lowresseg export`"
                     % (where, ", ".join(PROBABILITY_OUTPUTS)))


class LocalEngine(Engine):
    """onnxruntime in this process; CUDA when the installed onnxruntime offers it.

    ``optimise``: run the exact load-time rewrite of :mod:`LowResSegLib.inference.graphopt` (when ``onnx``
    is installed; ``optimised`` says whether it ran).
    """

    def __init__(self, name, repository=None, threads=0, providers=None, output=None, optimise=True):
        import onnxruntime as ort

        from LowResSegLib.inference.graphopt import optimised_model

        repo = ModelRepository(repository)
        self.card = repo.card(name)
        path = repo.onnx_path(name)  # verifies the sha256 first
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        # numpy pre/post-processing runs between chunks: threads that spin-wait for the next
        # run steal those cores (measured: ~35 % slower end to end on 2 cores; docs/BENCHMARKS.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.path, self.threads = os.path.abspath(path), int(threads or 0)
        where = "model %s" % name
        graph = optimised_model(path, lambda names: choose_output(names, output, where)) if optimise else None
        self.optimised = graph is not None  # see LowResSegLib.inference.graphopt: same numbers, less work
        self.session = ort.InferenceSession(graph if graph is not None else path, sess_options=opts,
                                            providers=providers)
        self.output = choose_output([o.name for o in self.session.get_outputs()], output, where)

    def infer(self, batch):
        probs, = self.session.run([self.output], {"image": self.check_batch(batch)})
        return probs


class RemoteError(RuntimeError):
    """The edge server could not run the request; the message says why and what to do."""


class RemoteServer(object):
    """One edge server (ours or NVIDIA Triton) over KServe v2: connection, auth, errors.

    ``url``: ``http(s)://host:port``. ``token`` is sent as ``Authorization: Bearer``; TLS
    certificates are always verified, against ``ca_file`` when given (a pinned self-signed CA).
    One keep-alive connection; GETs are retried once on a dropped connection, inference
    requests never (they are not idempotent for a busy server).
    """

    def __init__(self, url, token=None, ca_file=None, connect_timeout=5.0, read_timeout=120.0):
        from urllib.parse import urlsplit

        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("server URL %r must look like http://host:port or https://host:port" % url)
        self.url, self.token = url, token
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ca_file, self._timeouts = ca_file, (float(connect_timeout), float(read_timeout))
        self._conn = None

    def _connection(self):
        import http.client
        import ssl

        if self._conn is None:
            if self._scheme == "https":
                context = ssl.create_default_context(cafile=self._ca_file)
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeouts[0], context=context)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeouts[0])
            conn.connect()
            conn.sock.settimeout(self._timeouts[1])
            self._conn = conn
        return self._conn

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method, path, body=None, headers=None):
        """(status, response, body bytes); transport failures raise RemoteError."""
        import http.client
        import socket
        import ssl

        headers = dict(headers or {})
        headers["Accept-Encoding"] = "gzip"  # the 8-bit probabilities compress ~30x (docs/jetson.md)
        if self.token:
            headers["Authorization"] = "Bearer %s" % self.token
        attempts = 2  # a GET may always be retried; a POST only when a reused keep-alive connection was stale
        for attempt in range(attempts):
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                if reply.getheader("Connection", "").lower() == "close":
                    self.close()
                return reply.status, reply, self._decoded(reply, data)
            except ssl.SSLError as exc:
                self.close()
                raise RemoteError("TLS with %s failed (%s); check the server certificate or pass its CA file"
                                  % (self.url, exc.reason or exc))
            except socket.timeout:
                self.close()
                raise RemoteError("%s did not answer within %.0f s; the server may be overloaded or unreachable"
                                  % (self.url, self._timeouts[1]))
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                # a server restart leaves our idle connection dead: the request never reached it, so one
                # retry on a fresh connection is safe even for an inference
                stale = reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                                                    BrokenPipeError))
                if attempt + 1 == attempts or not (method == "GET" or stale):
                    raise RemoteError("cannot reach %s (%s); check the URL, the network and that the server runs"
                                      % (self.url, exc))

    def _decoded(self, reply, data):
        """The body after its Content-Encoding, bounded by MAX_REPLY_BYTES."""
        import zlib

        encoding = (reply.getheader("Content-Encoding") or "identity").lower()
        if encoding == "identity":
            return data
        if encoding not in ("gzip", "deflate"):
            raise RemoteError("%s answered with Content-Encoding %r, which LowResSeg cannot read" % (self.url, encoding))
        d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            out = d.decompress(data, MAX_REPLY_BYTES)
        except zlib.error:
            raise RemoteError("the %s answer from %s is corrupt" % (encoding, self.url))
        if d.unconsumed_tail:
            raise RemoteError("the answer from %s inflates beyond %d MB; refusing it" % (self.url, MAX_REPLY_BYTES >> 20))
        return out

    def check(self, status, data):
        """Raise RemoteError with a message for the user unless ``status`` is 200."""
        if status == 200:
            return
        try:
            message = json.loads(data.decode("utf-8")).get("error", "")
        except (ValueError, UnicodeDecodeError, AttributeError):
            message = ""
        hint = {401: "the server refused the token: check the token you gave (or give one)",
                404: "the server does not serve this model",
                413: "the request is larger than the server accepts: use a smaller chunk",
                503: "the server is busy; try again in a moment"}.get(status, "server error")
        raise RemoteError("%s (HTTP %d%s)" % (hint, status, ": " + message if message else ""))

    def get_json(self, path):
        status, _, data = self.request("GET", path)
        self.check(status, data)
        return json.loads(data.decode("utf-8"))

    def probe(self):
        """What a "Test connection" button shows: server name and version, its models, round-trip ms."""
        import time

        t0 = time.perf_counter()
        meta = self.get_json("/v2")
        ms = 1000.0 * (time.perf_counter() - t0)
        status, _, data = self.request("POST", "/v2/repository/index", b"{}", {"Content-Type": "application/json"})
        self.check(status, data)
        models = sorted(m["name"] for m in json.loads(data.decode("utf-8")) if m.get("state", "READY") == "READY")
        return {"name": meta.get("name"), "version": meta.get("version"), "models": models, "ms": ms}


class RemoteEngine(Engine):
    """A model on an edge server; ``segment()`` works with it unchanged. The card comes from /config."""

    def __init__(self, url, model, token=None, ca_file=None, connect_timeout=5.0, read_timeout=120.0, server=None,
                 output=None):
        self.server = server or RemoteServer(url, token, ca_file, connect_timeout, read_timeout)
        self.url, self.model = self.server.url, model
        self.card, outputs = self._card()
        self.output = choose_output(outputs, output, "model %s on %s" % (model, self.url))

    def close(self):
        self.server.close()

    def _card(self):
        from LowResSegLib.repository.modelstore import validate_card

        config = self.server.get_json("/v2/models/%s/config" % self.model)
        try:
            card = json.loads(config["parameters"]["lowresseg"]["string_value"])
            outputs = [o["name"] for o in config.get("output", [])]
        except (ValueError, KeyError, TypeError):
            raise RemoteError("model %s on %s has no LowResSeg model card in its config" % (self.model, self.url))
        return validate_card(card, "model card of %r from %s" % (self.model, self.url)), outputs

    # ------------------------------------------------------------------ inference

    def infer(self, batch):
        from LowResSegLib.edge import protocol

        body, headers = protocol.encode_request([("image", self.check_batch(batch))], outputs=[self.output])
        status, reply, data = self.server.request("POST", "/v2/models/%s/infer" % self.model, body, headers)
        self.server.check(status, data)
        try:
            outputs, _ = protocol.decode_response(data, reply.getheader(protocol.HEADER_LENGTH))
            return outputs[self.output]
        except (protocol.ProtocolError, KeyError) as exc:
            raise RemoteError("the server's answer could not be read (%s)" % exc)
