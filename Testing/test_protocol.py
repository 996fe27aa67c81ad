"""KServe v2 messages (LowResSegLib.edge.protocol): round trips, the wire format, and strict refusals."""

import json

import numpy as np
import pytest

from LowResSegLib.edge.protocol import (HEADER_LENGTH, ProtocolError, decode_request, decode_response, encode_request,
                                   encode_response, error_body)

X = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4) / 7.0


def test_binary_request_round_trip_and_wire_format():
    body, headers = encode_request([("image", X)], outputs=["labels", "probabilities"], request_id=7)
    n = int(headers[HEADER_LENGTH])
    doc = json.loads(body[:n].decode())
    assert doc["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [2, 1, 4, 4],
                              "parameters": {"binary_data_size": X.nbytes}}]
    assert doc["outputs"][0] == {"name": "labels", "parameters": {"binary_data": True}} and doc["id"] == "7"
    assert body[n:] == X.astype("<f4").tobytes()  # raw little-endian, right after the JSON
    req = decode_request(body, headers[HEADER_LENGTH])
    np.testing.assert_array_equal(req.input("image"), X)
    assert req.outputs == [("labels", True), ("probabilities", True)] and req.id == "7"


def test_json_data_request_and_binary_output_default():
    body, headers = encode_request([("image", X)], binary=False)
    assert HEADER_LENGTH not in headers
    req = decode_request(body)
    np.testing.assert_array_equal(req.input("image"), X)
    body, headers = encode_request([("image", X)])  # no outputs named: binary_data_output at the top
    assert json.loads(body[:int(headers[HEADER_LENGTH])].decode())["parameters"] == {"binary_data_output": True}


def test_response_round_trip_mixes_binary_and_json_in_list_order():
    labels = (X[:, 0] > 1).astype(np.uint8)
    probs = X[:, 0]
    body, headers = encode_response("m", 1, [("labels", labels), ("probabilities", probs)],
                                    binary_names={"probabilities"}, request_id="r1")
    assert headers["Content-Type"] == "application/octet-stream"
    outs, rid = decode_response(body, headers[HEADER_LENGTH])
    np.testing.assert_array_equal(outs["labels"], labels)
    np.testing.assert_array_equal(outs["probabilities"], probs)
    assert rid == "r1" and outs["labels"].dtype == np.uint8


def _tamper(doc_change=None, tail=None, header_length=None):
    body, headers = encode_request([("image", X)], outputs=["labels"])
    n = int(headers[HEADER_LENGTH])
    doc = json.loads(body[:n].decode())
    if doc_change:
        doc_change(doc)
    head = json.dumps(doc).encode()
    data = body[n:] if tail is None else tail
    return head + data, str(len(head) if header_length is None else header_length)


@pytest.mark.parametrize("make,message,status", [
    (lambda: _tamper(lambda d: d["inputs"][0]["parameters"].update(binary_data_size=12)), "does not match", 400),
    (lambda: _tamper(lambda d: d["inputs"][0].update(datatype="BYTES")), "unknown or unsupported datatype", 400),
    (lambda: _tamper(lambda d: d["inputs"][0].update(datatype="FLOAT")), "unknown or unsupported datatype", 400),
    (lambda: _tamper(lambda d: d["inputs"][0].update(shape=[2, 1, -4, -4])), "non-negative", 400),
    (lambda: _tamper(lambda d: d["inputs"][0].update(shape=[1 << 20, 1 << 20])), "larger than this server", 413),
    (lambda: _tamper(header_length=10 ** 6), "outside the", 400),
    (lambda: _tamper(header_length="abc"), "must be an integer", 400),
    (lambda: _tamper(tail=X.astype("<f4").tobytes()[:-4]), "ends before", 400),
    (lambda: _tamper(tail=X.astype("<f4").tobytes() + b"\0" * 8), "bytes after the last", 400),
    (lambda: _tamper(lambda d: d["inputs"][0].pop("parameters")), "neither data nor", 400),
    (lambda: (b"{not json", None), "not valid JSON", 400),
    (lambda: (b'{"inputs": []}', None), "no inputs", 400),
])
def test_malformed_requests_are_refused_with_a_status(make, message, status):
    body, header_length = make()
    with pytest.raises(ProtocolError, match=message) as err:
        decode_request(body, header_length)
    assert err.value.status == status


def test_error_body_and_error_response():
    assert json.loads(error_body("model not found").decode()) == {"error": "model not found"}
    with pytest.raises(ProtocolError, match="server error: busy"):
        decode_response(error_body("busy"))
