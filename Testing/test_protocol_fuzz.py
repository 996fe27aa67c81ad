"""Property test of the request parser: any bytes give an InferRequest or a ProtocolError, nothing else."""

import json

import numpy as np
from hypothesis import given, settings, strategies as st

from LowResSegLib.edge.protocol import ProtocolError, decode_request, encode_request

GOOD, HEADERS = encode_request([("image", np.zeros((2, 1, 4, 4), np.float32))], outputs=["labels"])


def _decode(body, length):
    try:
        req = decode_request(body, length, max_elements=1 << 16)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500
        return None
    for _, array in req.inputs:  # whatever is accepted is consistent
        assert isinstance(array, np.ndarray)
    return req


@settings(max_examples=1200, deadline=None)
@given(st.binary(max_size=400), st.one_of(st.none(), st.integers(-10, 500), st.text(max_size=5)))
def test_random_bytes(body, length):
    _decode(body, length)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=8),
       st.integers(-3, 3))
def test_mutated_valid_requests(flips, shift):
    body = bytearray(GOOD)
    for pos, value in flips:
        body[pos] = value
    _decode(bytes(body), int(HEADERS["Inference-Header-Content-Length"]) + shift)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=20))
def test_any_json_header(doc):
    _decode(json.dumps({"inputs": doc}).encode(), None)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "X"]),
       st.lists(st.integers(-2, 4), max_size=3),
       st.lists(st.one_of(st.integers(-(10 ** 30), 10 ** 30), st.floats(allow_nan=True), st.text(max_size=3),
                          st.booleans(), st.none()), max_size=12))
def test_structured_tensors_with_any_values(datatype, shape, data):
    """Found an OverflowError once (a 10**30 in an INT8 tensor): any value must be a 4xx, never a crash."""
    doc = {"inputs": [{"name": "image", "datatype": datatype, "shape": shape, "data": data}]}
    _decode(json.dumps(doc).encode(), None)
