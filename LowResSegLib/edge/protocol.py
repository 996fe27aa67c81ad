"""KServe v2 (Open Inference Protocol) infer messages, as NVIDIA's tritonclient.http speaks them.

Both sides use this module: :class:`LowResSegLib.inference.engines.RemoteEngine` encodes requests and
decodes responses, the edge server (Python 3.6 on a Jetson Nano) does the reverse. A body is
the JSON header, then, with the binary tensor extension, the raw little-endian tensors in the
order they are listed, each announced by ``parameters.binary_data_size``; the length of the
JSON is sent in the ``Inference-Header-Content-Length`` header.

Everything read from the wire is checked before any array is made: known datatypes only,
shapes of non-negative integers within ``max_elements``, declared sizes equal to
``shape × itemsize``, a header length within the body, and no bytes left over. A violation is a
:class:`ProtocolError` carrying the HTTP status to answer (400, or 413 for too large).

Python 3.6+ and numpy only (no dataclasses, no dict-order assumptions).
"""

import json

import numpy as np

__all__ = ["ProtocolError", "DATATYPES", "HEADER_LENGTH", "InferRequest", "encode_request", "decode_request",
           "encode_response", "decode_response", "error_body", "datatype_of"]

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {  # KServe v2 name -> little-endian numpy dtype (BYTES is not used by LowResSeg models)
    "BOOL": "|b1", "UINT8": "|u1", "INT8": "|i1", "UINT16": "<u2", "INT16": "<i2", "UINT32": "<u4",
    "INT32": "<i4", "UINT64": "<u8", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_BY_KIND = {np.dtype(v).newbyteorder("<") if np.dtype(v).itemsize > 1 else np.dtype(v): k
            for k, v in DATATYPES.items()}
MAX_DIMS = 8
DEFAULT_MAX_ELEMENTS = 1 << 28  # 256 M elements (1 GiB of FP32): far above any LowResSeg request


class ProtocolError(ValueError):
    """A malformed or oversized message; ``status`` is the HTTP code to answer with."""

    def __init__(self, message, status=400):
        ValueError.__init__(self, message)
        self.status = status


def datatype_of(array):
    """The KServe datatype name of a numpy array."""
    dt = np.asarray(array).dtype
    key = dt.newbyteorder("<") if dt.itemsize > 1 else dt
    if key not in _BY_KIND:
        raise ProtocolError("numpy dtype %s has no KServe v2 datatype" % dt)
    return _BY_KIND[key]


def _dtype(datatype):
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError("unknown or unsupported datatype %r (known: %s)" % (datatype, ", ".join(sorted(DATATYPES))))
    return np.dtype(DATATYPES[datatype])


def _shape(shape, max_elements, what):
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise ProtocolError("%s: shape must be a list of at most %d dimensions" % (what, MAX_DIMS))
    n = 1
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ProtocolError("%s: shape %r must hold non-negative integers" % (what, shape))
        n *= d
        if n > max_elements:
            raise ProtocolError("%s: shape %r is larger than this server accepts (%d elements)"
                                % (what, shape, max_elements), status=413)
    return tuple(shape), n


def _header_and_tail(body, header_length):
    if header_length is None:
        header, tail = body, b""
    else:
        try:
            header_length = int(header_length)
        except (TypeError, ValueError):
            raise ProtocolError("%s must be an integer" % HEADER_LENGTH)
        if not 0 < header_length <= len(body):
            raise ProtocolError("%s %d is outside the %d-byte body" % (HEADER_LENGTH, header_length, len(body)))
        header, tail = body[:header_length], body[header_length:]
    try:
        doc = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the JSON header of the request is not valid JSON")
    if not isinstance(doc, dict):
        raise ProtocolError("the JSON header must be an object")
    return doc, tail


def _read_tensors(items, tail, max_elements, what):
    """Arrays for ``items`` (inputs or outputs) from JSON ``data`` or the binary tail, in list order."""
    if not isinstance(items, list):
        raise ProtocolError("%s must be a list" % what)
    arrays, offset = [], 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("every %s entry needs a name" % what)
        name = item["name"]
        dtype = _dtype(item.get("datatype"))
        shape, n = _shape(item.get("shape"), max_elements, "%s %s" % (what, name))
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("%s %s: parameters must be an object" % (what, name))
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size != n * dtype.itemsize:
                raise ProtocolError("%s %s: binary_data_size %r does not match shape %r x %d bytes"
                                    % (what, name, size, list(shape), dtype.itemsize))
            if offset + size > len(tail):
                raise ProtocolError("%s %s: the body ends before its %d binary bytes" % (what, name, size))
            array = np.frombuffer(tail, dtype=dtype, count=n, offset=offset).reshape(shape)
            offset += size
        elif "data" in item:
            try:
                array = np.asarray(item["data"], dtype=dtype)
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError("%s %s: data does not fit datatype %s" % (what, name, item.get("datatype")))
            if array.size != n:
                raise ProtocolError("%s %s: %d values for shape %r" % (what, name, array.size, list(shape)))
            array = array.reshape(shape)
        else:
            raise ProtocolError("%s %s has neither data nor binary_data_size" % (what, name))
        arrays.append((name, array))
    if offset != len(tail):
        raise ProtocolError("%d bytes after the last binary tensor" % (len(tail) - offset))
    return arrays


class InferRequest(object):
    """A decoded request: ``inputs`` [(name, array)] in list order; ``outputs`` [(name, binary?)]."""

    def __init__(self, inputs, outputs, request_id=None, parameters=None):
        self.inputs, self.outputs, self.id, self.parameters = inputs, outputs, request_id, parameters or {}

    def input(self, name):
        for n, a in self.inputs:
            if n == name:
                return a
        raise ProtocolError("the request has no input named %r" % name)


def _tensor_entry(name, array, binary):
    array = np.asarray(array)
    entry = {"name": name, "datatype": datatype_of(array), "shape": [int(d) for d in array.shape]}
    if binary:
        entry["parameters"] = {"binary_data_size": int(array.nbytes)}
    else:
        entry["data"] = array.ravel().tolist()
    return entry


def _encode(doc, tensors, binary):
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    headers = {}
    if binary and tensors:
        headers[HEADER_LENGTH] = str(len(header))
        body = header + b"".join(np.ascontiguousarray(a, dtype=np.asarray(a).dtype.newbyteorder("<")).tobytes()
                                 for _, a in tensors)
    else:
        body = header
    return body, headers


def encode_request(inputs, outputs=None, binary=True, request_id=None):
    """(body, extra headers) for ``inputs`` [(name, array)]; ``outputs`` names, asked for as binary."""
    doc = {"inputs": [_tensor_entry(n, a, binary) for n, a in inputs]}
    if request_id is not None:
        doc["id"] = str(request_id)
    if outputs:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": bool(binary)}} for n in outputs]
    elif binary:
        doc["parameters"] = {"binary_data_output": True}
    return _encode(doc, inputs, binary)


def decode_request(body, header_length=None, max_elements=DEFAULT_MAX_ELEMENTS):
    """An :class:`InferRequest` from a body (and its ``Inference-Header-Content-Length``)."""
    doc, tail = _header_and_tail(body, header_length)
    inputs = _read_tensors(doc.get("inputs"), tail, max_elements, "input")
    if not inputs:
        raise ProtocolError("the request has no inputs")
    names = [n for n, _ in inputs]
    if len(set(names)) != len(names):
        raise ProtocolError("input names repeat: %s" % names)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("parameters must be an object")
    default_binary = bool(params.get("binary_data_output", False))
    outputs = []
    for item in doc.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("every requested output needs a name")
        p = item.get("parameters") or {}
        outputs.append((item["name"], bool(p.get("binary_data", default_binary)) if isinstance(p, dict)
                        else default_binary))
    request_id = doc.get("id")
    return InferRequest(inputs, outputs, None if request_id is None else str(request_id), params)


def encode_response(model_name, model_version, outputs, binary_names=(), request_id=None):
    """(body, extra headers) for ``outputs`` [(name, array)]; names in ``binary_names`` go binary."""
    binary = [(n, a) for n, a in outputs if n in binary_names]
    doc = {"model_name": model_name, "model_version": str(model_version),
           "outputs": [_tensor_entry(n, a, n in binary_names) for n, a in outputs]}
    if request_id is not None:
        doc["id"] = request_id
    body, headers = _encode(doc, binary, True)
    if binary:
        headers["Content-Type"] = "application/octet-stream"
    return body, headers


def decode_response(body, header_length=None, max_elements=DEFAULT_MAX_ELEMENTS):
    """(outputs {name: array}, id) from a response body; a server ``error`` raises ProtocolError."""
    doc, tail = _header_and_tail(body, header_length)
    if "error" in doc:
        raise ProtocolError("server error: %s" % doc["error"], status=502)
    arrays = _read_tensors(doc.get("outputs"), tail, max_elements, "output")
    return dict(arrays), doc.get("id")


def error_body(message):
    """The body of an error reply: ``{"error": message}`` and nothing else (no traceback, no pixels)."""
    return json.dumps({"error": str(message)}).encode("utf-8")
