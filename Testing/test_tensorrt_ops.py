"""TensorRT 8.2 (JetPack 4.6 / Jetson Nano) ONNX-parser compatibility checks.

Synthetic graphs exercise the checker; every shipped model
``Resources/Models/<name>/1/model.onnx`` must pass it.
"""

import json
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from LowResSegLib.training.tensorrt_ops import (  # noqa: E402
    TRT82_OP_TYPES,
    TRT82_SUPPORTED_OPS,
    assert_tensorrt82,
    check_tensorrt82,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "Resources" / "Models"


def _model_dirs():
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p for p in MODELS_DIR.iterdir() if p.is_dir() and not p.name.startswith("."))


def _shipped_model_params():
    paths = sorted(MODELS_DIR.glob("*/1/model.onnx"))
    if not paths:
        return [pytest.param(
            None, id="no-shipped-models-yet",
            marks=pytest.mark.skip(
                reason="no Resources/Models/*/1/model.onnx present yet"))]
    return [pytest.param(p, id=p.parent.parent.name) for p in paths]


def _make_model(nodes, inputs, outputs, opset=13, initializers=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + list(extra_opsets)
    return helper.make_model(graph, opset_imports=opsets)


def _conv_relu_model(opset=13):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3, 3], [0.1] * 18)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    return _make_model(nodes, [x], [y], opset=opset, initializers=[w])


def test_supported_list_sanity():
    # Spot checks against onnx-tensorrt release/8.2-GA docs/operators.md.
    for op in ("Conv", "ConvTranspose", "Relu", "MaxPool", "Concat", "Resize", "Sigmoid",
               "Cast", "BatchNormalization", "Add", "Mul", "Clip", "ArgMax", "Where",
               "Unsqueeze", "Squeeze", "Reshape", "Identity", "Greater"):
        assert op in TRT82_SUPPORTED_OPS
    for op in ("NonZero", "Reciprocal", "Mod", "OneHot", "Unique", "RoiAlign"):
        assert op not in TRT82_SUPPORTED_OPS
    assert len(TRT82_SUPPORTED_OPS) == 129


def test_conv_relu_opset13_ok(tmp_path):
    model = _conv_relu_model()
    onnx.checker.check_model(model)
    assert check_tensorrt82(model) == []
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert check_tensorrt82(path) == []
    assert check_tensorrt82(str(path)) == []
    assert_tensorrt82(path)


def test_nonzero_reported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])
    model = _make_model([helper.make_node("NonZero", ["x"], ["y"])], [x], [y])
    problems = check_tensorrt82(model)
    assert len(problems) == 2
    assert "NonZero" in problems[0] and "1 node" in problems[0]
    assert "graph output 'y' is INT64" in problems[1]  # a network output must be a TensorRT type too
    with pytest.raises(ValueError, match="NonZero"):
        assert_tensorrt82(model)


def test_unsupported_ops_counted_including_subgraphs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    then_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])
    else_out = helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])
    then_g = helper.make_graph([helper.make_node("Reciprocal", ["x"], ["t"])], "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [else_out])
    nodes = [
        helper.make_node("Reciprocal", ["x"], ["r"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    problems = check_tensorrt82(_make_model(nodes, [x, c], [y]))
    assert problems == [p for p in problems if "Reciprocal" in p]
    assert len(problems) == 1 and "2 nodes" in problems[0]


def test_opset17_reported():
    problems = check_tensorrt82(_conv_relu_model(opset=17))
    assert len(problems) == 1
    assert "opset 17" in problems[0]


def test_non_default_domain_reported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    node = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
    model = _make_model([node], [x], [y],
                        extra_opsets=[helper.make_opsetid("com.example", 1)])
    problems = check_tensorrt82(model)
    assert len(problems) == 1 and "com.example" in problems[0]


@pytest.mark.parametrize("mode, ctm, ok", [
    ("nearest", "asymmetric", True),
    ("linear", "half_pixel", True),
    ("linear", "align_corners", True),
    ("cubic", "half_pixel", False),
    ("linear", "tf_crop_and_resize", False),
])
def test_resize_modes(mode, ctm, ok):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up",
                            mode=mode, coordinate_transformation_mode=ctm)
    problems = check_tensorrt82(_make_model([node], [x], [y], initializers=[scales]))
    if ok:
        assert problems == []
    else:
        assert len(problems) == 1 and "Resize" in problems[0]
        assert (mode if mode != "linear" else ctm) in problems[0]


def test_type_table_sanity():
    # Spot checks against the "Supported Types" column of the same document.
    assert set(TRT82_OP_TYPES) == TRT82_SUPPORTED_OPS
    assert TRT82_OP_TYPES["Cast"] == {"FP32", "FP16", "INT32", "INT8", "BOOL"}
    assert TRT82_OP_TYPES["ConstantOfShape"] == {"FP32"} and TRT82_OP_TYPES["Not"] == {"BOOL"}
    assert TRT82_OP_TYPES["Round"] == {"FP32", "FP16", "INT8"}
    assert not any("UINT8" in t for t in TRT82_OP_TYPES.values())


def _labels_model(out_type, cast_to=None):
    """Greater -> (Cast) -> labels: the tail of a segmentation graph."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [helper.make_node("Greater", ["x", "zero"], ["mask" if cast_to else "labels"], name="gt")]
    if cast_to:
        nodes.append(helper.make_node("Cast", ["mask"], ["labels"], name="cast", to=cast_to))
    y = helper.make_tensor_value_info("labels", out_type, [1, 4])
    return _make_model(nodes, [x], [y], initializers=[zero])


def test_uint8_labels_rejected_bool_and_int32_accepted():
    problems = check_tensorrt82(_labels_model(TensorProto.UINT8, cast_to=TensorProto.UINT8))
    assert len(problems) == 2
    assert "graph output 'labels' is UINT8" in problems[0]
    assert "Cast node 'cast' casts to UINT8" in problems[1]
    assert check_tensorrt82(_labels_model(TensorProto.BOOL)) == []
    assert check_tensorrt82(_labels_model(TensorProto.INT32, cast_to=TensorProto.INT32)) == []
    assert check_tensorrt82(_labels_model(TensorProto.FLOAT16, cast_to=TensorProto.FLOAT16)) == []


def test_operator_on_unsupported_type_reported():
    # Sigmoid on FP32 is fine; on an INT32 tensor it is not (FP32, FP16, INT8 only); a UINT8 input is caught too
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    problems = check_tensorrt82(_make_model(nodes, [x], [y]))
    assert problems == ["Sigmoid node 'sig' works on a INT32 tensor ('x'); TensorRT 8.2 supports Sigmoid only on "
                        "FP16, FP32, INT8"]
    u = helper.make_tensor_value_info("u", TensorProto.UINT8, [4])
    problems = check_tensorrt82(_make_model([helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT)], [u], [y]))
    assert any("graph input 'u' is UINT8" in p for p in problems)
    assert any("Cast node <unnamed> works on a UINT8 tensor" in p for p in problems)


def test_int64_shape_arithmetic_counts_as_int32():
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape: INT64 tensors TensorRT casts down to INT32
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])
    idx = helper.make_tensor("idx", TensorProto.INT64, [], [0])
    minus1 = helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "idx"], ["n"]),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    assert check_tensorrt82(_make_model(nodes, [x], [y], initializers=[idx, minus1, axes])) == []


def test_every_model_dir_has_onnx():
    """Every shipped model but an ensemble (a card naming other models, no graph of its own) has its graph."""
    from LowResSegLib.repository.modelstore import CARD_FILE, is_ensemble

    graphs = [d for d in _model_dirs() if not is_ensemble(json.load(open(str(d / CARD_FILE))))]
    assert len(graphs) >= 5
    missing = [d.name for d in graphs if not (d / "1" / "model.onnx").is_file()]
    assert not missing, "Resources/Models dirs without 1/model.onnx: {}".format(missing)


@pytest.mark.parametrize("model_path", _shipped_model_params())
def test_shipped_model_tensorrt82(model_path):
    problems = check_tensorrt82(model_path)
    assert not problems, "{}:\n".format(model_path) + "\n".join(problems)
