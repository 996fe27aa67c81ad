# Source of TRT82_SUPPORTED_OPS (copied from the document, not guessed):
#   repository: https://github.com/onnx/onnx-tensorrt
#   path:       docs/operators.md
#   tag:        release/8.2-GA
#   commit:     85e79f629fb546a75d61e3027fb259a9529144fe
#               ("TensorRT 8.2 ONNX Parser Release (#776)", 2021-11-23)
#   header:     "TensorRT 8.2 supports operators up to Opset 13."
# The 8.2-GA branch head (f42daeee49f2517a954c5601f0f76bef9ed94b62) differs
# from that tag in this file only by a link (master -> main); the table is the same.
"""Check that an exported ONNX model parses with TensorRT 8.2's ONNX parser.

Target: JetPack 4.6 on a Jetson Nano, which ships TensorRT 8.2. Its ONNX parser
is onnx-tensorrt 8.2, whose support matrix is ``docs/operators.md`` of
https://github.com/onnx/onnx-tensorrt at tag ``release/8.2-GA`` (commit
85e79f629fb546a75d61e3027fb259a9529144fe). That document says "TensorRT 8.2
supports operators up to Opset 13", and its operator table marks each operator
"Y" (supported) or "N" (not supported).

``TRT82_SUPPORTED_OPS`` holds every operator marked "Y" there, in the table's
order (128 marked plain "Y" plus ``NonMaxSuppression``, marked
"Y [EXPERIMENTAL]"). Operators the table marks "N" or does not list at all are
treated as unsupported. Note that the table marks ``Reciprocal`` as "N".

``check_tensorrt82`` reports, as human-readable strings (empty list = OK):

* default-domain operators that are not in ``TRT82_SUPPORTED_OPS`` (with counts);
* a default-domain (``ai.onnx``) opset above 13;
* any operator from a non-default domain (custom ops, ``com.microsoft``, ...);
* ``Resize`` nodes whose ``mode`` is not ``nearest``/``linear``, or whose
  ``coordinate_transformation_mode`` is not one the document lists as supported.

Nodes inside subgraphs (``If``/``Loop``/``Scan`` bodies) are checked too.
``onnx`` is imported only inside the functions, so importing this module is cheap.
"""

from collections import Counter
from typing import Any, List  # noqa: F401  (used in type comments)

__all__ = [
    "TRT82_SUPPORTED_OPS",
    "TRT82_MAX_OPSET",
    "TRT82_RESIZE_MODES",
    "TRT82_RESIZE_COORDINATE_TRANSFORMATION_MODES",
    "check_tensorrt82",
    "assert_tensorrt82",
]

#: Highest default-domain opset the TensorRT 8.2 ONNX parser supports.
TRT82_MAX_OPSET = 13

#: Operators marked supported ("Y") in onnx-tensorrt release/8.2-GA docs/operators.md.
TRT82_SUPPORTED_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan",
    "Atanh", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh",
    "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu",
    "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather",
    "GatherElements", "GatherND", "Gemm", "GlobalAveragePool", "GlobalLpPool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "GRU", "HardSigmoid", "Identity",
    "If", "ImageScaler", "InstanceNormalization", "IsNaN", "LeakyRelu", "Less",
    "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization",
    "LpPool", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg",
    "NonMaxSuppression",  # marked "Y [EXPERIMENTAL]" in the document
    "Not", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
    "QuantizeLinear", "RandomUniform", "RandomUniformLike", "Range", "ReduceL1",
    "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape",
    "Resize", "ReverseSequence", "RNN", "Round", "ScaledTanh", "Scan", "Scatter",
    "ScatterElements", "ScatterND", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Sinh",
    "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt",
    "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK",
    "Transpose", "Unsqueeze", "Upsample", "Where",
})

#: Resize ``mode`` values the document lists as supported.
TRT82_RESIZE_MODES = frozenset({"nearest", "linear"})

#: Resize ``coordinate_transformation_mode`` values the document lists as supported.
TRT82_RESIZE_COORDINATE_TRANSFORMATION_MODES = frozenset({
    "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
    "align_corners",
})

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _load(model_or_path):
    # type: (Any) -> Any
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model_or_path))
    # Only the graph structure is needed: skip external weight files.
    return onnx.load(str(model_or_path), load_external_data=False)


def _iter_nodes(graph, where="graph"):
    """Yield (location, node) for every node, recursing into subgraph attributes."""
    import onnx

    for node in graph.node:
        yield where, node
        for attr in node.attribute:
            label = "{} > {}({}).{}".format(where, node.op_type, node.name or "?", attr.name)
            if attr.type == onnx.AttributeProto.GRAPH:
                for item in _iter_nodes(attr.g, label):
                    yield item
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    for item in _iter_nodes(sub, label):
                        yield item


def _str_attr(node, name, default):
    # type: (Any, str, str) -> str
    for attr in node.attribute:
        if attr.name == name:
            value = attr.s
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return default


def _node_label(node):
    # type: (Any) -> str
    return repr(node.name) if node.name else "<unnamed>"


def check_tensorrt82(model_or_path):
    # type: (Any) -> List[str]
    """Return the reasons TensorRT 8.2's ONNX parser would reject the model.

    ``model_or_path`` is an ``onnx.ModelProto``, serialized model bytes, or a
    path (str / os.PathLike) to a ``.onnx`` file. An empty list means every op
    is on onnx-tensorrt 8.2's supported list and the opset is <= 13.
    """
    model = _load(model_or_path)
    problems = []  # type: List[str]

    default_opset = None
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            default_opset = imp.version

    unsupported = Counter()  # type: Counter
    foreign = Counter()  # type: Counter
    resize_problems = []  # type: List[str]
    has_default_nodes = False

    for _where, node in _iter_nodes(model.graph):
        if node.domain not in _DEFAULT_DOMAINS:
            foreign[(node.domain, node.op_type)] += 1
            continue
        has_default_nodes = True
        if node.op_type not in TRT82_SUPPORTED_OPS:
            unsupported[node.op_type] += 1
        if node.op_type == "Resize":
            mode = _str_attr(node, "mode", "nearest")
            if mode not in TRT82_RESIZE_MODES:
                resize_problems.append(
                    "Resize node {} uses mode={!r}; TensorRT 8.2 supports only {}".format(
                        _node_label(node), mode, sorted(TRT82_RESIZE_MODES)))
            ctm = _str_attr(node, "coordinate_transformation_mode", "half_pixel")
            if ctm not in TRT82_RESIZE_COORDINATE_TRANSFORMATION_MODES:
                resize_problems.append(
                    "Resize node {} uses coordinate_transformation_mode={!r}; "
                    "TensorRT 8.2 supports only {}".format(
                        _node_label(node), ctm,
                        sorted(TRT82_RESIZE_COORDINATE_TRANSFORMATION_MODES)))

    if default_opset is None:
        if has_default_nodes:
            problems.append("model has no opset_import for the default ONNX domain")
    elif default_opset > TRT82_MAX_OPSET:
        problems.append(
            "default-domain opset {} > {} (TensorRT 8.2's ONNX parser supports operators "
            "up to opset {}; export with opset_version<={})".format(
                default_opset, TRT82_MAX_OPSET, TRT82_MAX_OPSET, TRT82_MAX_OPSET))

    for op_type, count in sorted(unsupported.items()):
        problems.append(
            "op {} is not supported by TensorRT 8.2's ONNX parser ({} node{})".format(
                op_type, count, "" if count == 1 else "s"))

    for (domain, op_type), count in sorted(foreign.items()):
        problems.append(
            "op {}::{} is from non-default domain {!r} ({} node{}); "
            "TensorRT 8.2 would need a plugin".format(
                domain, op_type, domain, count, "" if count == 1 else "s"))

    problems.extend(resize_problems)
    return problems


def assert_tensorrt82(model_or_path):
    # type: (Any) -> None
    """Raise ValueError listing every problem found by :func:`check_tensorrt82`."""
    problems = check_tensorrt82(model_or_path)
    if problems:
        raise ValueError(
            "ONNX model is not TensorRT 8.2 compatible:\n  - " + "\n  - ".join(problems))
