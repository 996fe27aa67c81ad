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
  ``coordinate_transformation_mode`` is not one the document lists as supported;
* tensor types: graph inputs/outputs outside ``TRT82_IO_TYPES`` (e.g. UINT8), an operator's
  data tensor outside its "Supported Types" (``TRT82_OP_TYPES``; INT64 and DOUBLE count as the
  INT32 and FP32 TensorRT casts them down to), and a ``Cast`` to a type Cast does not support.

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
    "TRT82_OP_TYPES",
    "TRT82_IO_TYPES",
    "check_tensorrt82",
    "assert_tensorrt82",
]

#: Highest default-domain opset the TensorRT 8.2 ONNX parser supports.
TRT82_MAX_OPSET = 13

#: Every operator marked supported ("Y") in onnx-tensorrt release/8.2-GA docs/operators.md, with the
#: "Supported Types" column of its row (NonMaxSuppression is marked "Y [EXPERIMENTAL]").
_TYPES_TEXT = """
Abs: FP32 FP16 INT32 | Acos: FP32 FP16 | Acosh: FP32 FP16 | Add: FP32 FP16 INT32 | And: BOOL
ArgMax: FP32 FP16 | ArgMin: FP32 FP16 | Asin: FP32 FP16 | Asinh: FP32 FP16 | Atan: FP32 FP16
Atanh: FP32 FP16 | AveragePool: FP32 FP16 INT8 INT32 | BatchNormalization: FP32 FP16
Cast: FP32 FP16 INT32 INT8 BOOL | Ceil: FP32 FP16 | Celu: FP32 FP16 | Clip: FP32 FP16 INT8
Concat: FP32 FP16 INT32 INT8 BOOL | Constant: FP32 FP16 INT32 INT8 BOOL | ConstantOfShape: FP32
Conv: FP32 FP16 INT8 | ConvTranspose: FP32 FP16 INT8 | Cos: FP32 FP16 | Cosh: FP32 FP16 | CumSum: FP32 FP16
DepthToSpace: FP32 FP16 INT32 | DequantizeLinear: INT8 | Div: FP32 FP16 INT32 | Dropout: FP32 FP16
Einsum: FP32 FP16 | Elu: FP32 FP16 INT8 | Equal: FP32 FP16 INT32 | Erf: FP32 FP16 | Exp: FP32 FP16
Expand: FP32 FP16 INT32 BOOL | EyeLike: FP32 FP16 INT32 BOOL | Flatten: FP32 FP16 INT32 BOOL
Floor: FP32 FP16 | Gather: FP32 FP16 INT8 INT32 | GatherElements: FP32 FP16 INT8 INT32
GatherND: FP32 FP16 INT8 INT32 | Gemm: FP32 FP16 INT8 | GlobalAveragePool: FP32 FP16 INT8
GlobalLpPool: FP32 FP16 INT8 | GlobalMaxPool: FP32 FP16 INT8 | Greater: FP32 FP16 INT32
GreaterOrEqual: FP32 FP16 INT32 | GRU: FP32 FP16 | HardSigmoid: FP32 FP16 INT8
Identity: FP32 FP16 INT32 INT8 BOOL | If: FP32 FP16 INT32 BOOL | ImageScaler: FP32 FP16
InstanceNormalization: FP32 FP16 | IsNaN: FP32 FP16 INT32 | LeakyRelu: FP32 FP16 INT8
Less: FP32 FP16 INT32 | LessOrEqual: FP32 FP16 INT32 | Log: FP32 FP16 | LogSoftmax: FP32 FP16
Loop: FP32 FP16 INT32 BOOL | LRN: FP32 FP16 | LSTM: FP32 FP16 | LpNormalization: FP32 FP16
LpPool: FP32 FP16 INT8 | MatMul: FP32 FP16 | Max: FP32 FP16 INT32 | MaxPool: FP32 FP16 INT8
Mean: FP32 FP16 INT32 | Min: FP32 FP16 INT32 | Mul: FP32 FP16 INT32 | Neg: FP32 FP16 INT32
NonMaxSuppression: FP32 FP16 | Not: BOOL | Or: BOOL | Pad: FP32 FP16 INT8 INT32
ParametricSoftplus: FP32 FP16 INT8 | Pow: FP32 FP16 | PRelu: FP32 FP16 INT8 | QuantizeLinear: FP32 FP16
RandomUniform: FP32 FP16 | RandomUniformLike: FP32 FP16 | Range: FP32 FP16 INT32 | ReduceL1: FP32 FP16
ReduceL2: FP32 FP16 | ReduceLogSum: FP32 FP16 | ReduceLogSumExp: FP32 FP16 | ReduceMax: FP32 FP16
ReduceMean: FP32 FP16 | ReduceMin: FP32 FP16 | ReduceProd: FP32 FP16 | ReduceSum: FP32 FP16
ReduceSumSquare: FP32 FP16 | Relu: FP32 FP16 INT8 | Reshape: FP32 FP16 INT32 INT8 BOOL | Resize: FP32 FP16
ReverseSequence: FP32 FP16 | RNN: FP32 FP16 | Round: FP32 FP16 INT8 | ScaledTanh: FP32 FP16 INT8
Scan: FP32 FP16 | Scatter: FP32 FP16 INT8 INT32 | ScatterElements: FP32 FP16 INT8 INT32
ScatterND: FP32 FP16 INT8 INT32 | Selu: FP32 FP16 INT8 | Shape: FP32 FP16 INT32 INT8 BOOL
Sigmoid: FP32 FP16 INT8 | Sign: FP32 FP16 INT8 INT32 | Sin: FP32 FP16 | Sinh: FP32 FP16
Size: FP32 FP16 INT32 INT8 BOOL | Slice: FP32 FP16 INT32 INT8 BOOL | Softmax: FP32 FP16
Softplus: FP32 FP16 INT8 | Softsign: FP32 FP16 INT8 | SpaceToDepth: FP32 FP16 INT32
Split: FP32 FP16 INT32 BOOL | Sqrt: FP32 FP16 | Squeeze: FP32 FP16 INT32 INT8 BOOL | Sub: FP32 FP16 INT32
Sum: FP32 FP16 INT32 | Tan: FP32 FP16 | Tanh: FP32 FP16 INT8 | ThresholdedRelu: FP32 FP16 INT8
Tile: FP32 FP16 INT32 BOOL | TopK: FP32 FP16 | Transpose: FP32 FP16 INT32 INT8 BOOL
Unsqueeze: FP32 FP16 INT32 INT8 BOOL | Upsample: FP32 FP16 | Where: FP32 FP16 INT32 BOOL
"""
TRT82_OP_TYPES = dict(
    (op.strip(), frozenset(types.split()))
    for op, types in (item.split(":") for item in _TYPES_TEXT.replace("\n", " | ").split("|") if item.strip()))

#: Operators marked supported ("Y"): the keys of the table above.
TRT82_SUPPORTED_OPS = frozenset(TRT82_OP_TYPES)

#: "TensorRT supports the following ONNX data types: DOUBLE, FLOAT32, FLOAT16, INT8, and BOOL", with
#: "limited support for INT32, INT64, and DOUBLE" (INT64 is cast down to INT32, DOUBLE to FLOAT).
#: Network inputs and outputs must be one of these; UINT8 and the other types are not.
TRT82_IO_TYPES = frozenset({"FP32", "FP16", "INT8", "INT32", "BOOL"})
_CAST_DOWN = {"INT64": "INT32", "FP64": "FP32"}

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


_CHECK_OUTPUT = frozenset({"Constant", "ConstantOfShape", "RandomUniform", "RandomUniformLike", "Range"})
_DATA_INPUT = {"Where": 1}  # Where's first input is the BOOL condition; its data is the second


def _type_names():
    import onnx

    names = {"FLOAT": "FP32", "FLOAT16": "FP16", "DOUBLE": "FP64"}
    return {v: names.get(k, k) for k, v in onnx.TensorProto.DataType.items()}


def _tensor_types(model):
    """Element type name of every tensor whose type ONNX shape inference knows."""
    import onnx

    names = _type_names()
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph inference cannot handle still gets the op checks
        pass
    graph = model.graph
    types = {t.name: names[t.data_type] for t in graph.initializer}
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = names[v.type.tensor_type.elem_type]
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = names[attr.t.data_type]
    return types


def _dtype_problems(model):
    """Tensor types TensorRT 8.2 cannot take: at the network's inputs/outputs and per operator."""
    names = _type_names()
    types = _tensor_types(model)
    problems = []  # type: List[str]
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        init = {t.name for t in model.graph.initializer}
        for v in values:
            t = types.get(v.name)
            if v.name not in init and t is not None and t not in TRT82_IO_TYPES:
                problems.append("graph %s %r is %s; TensorRT 8.2 network inputs and outputs must be one of %s"
                                % (kind, v.name, t, ", ".join(sorted(TRT82_IO_TYPES))))
    for _where, node in _iter_nodes(model.graph):
        allowed = TRT82_OP_TYPES.get(node.op_type)
        if node.domain not in _DEFAULT_DOMAINS or allowed is None:
            continue
        if node.op_type in _CHECK_OUTPUT:
            tensor = node.output[0] if node.output else ""
        else:
            i = _DATA_INPUT.get(node.op_type, 0)
            tensor = node.input[i] if len(node.input) > i else ""
        t = types.get(tensor)
        if t is not None and _CAST_DOWN.get(t, t) not in allowed:
            problems.append("%s node %s works on a %s tensor (%r); TensorRT 8.2 supports %s only on %s"
                            % (node.op_type, _node_label(node), t, tensor, node.op_type, ", ".join(sorted(allowed))))
        if node.op_type == "Cast":
            to = [names.get(a.i) for a in node.attribute if a.name == "to"]
            if to and _CAST_DOWN.get(to[0], to[0]) not in allowed:
                problems.append("Cast node %s casts to %s; TensorRT 8.2 casts only to %s"
                                % (_node_label(node), to[0], ", ".join(sorted(allowed))))
    return problems


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
    problems.extend(_dtype_problems(model))
    return problems


def assert_tensorrt82(model_or_path):
    # type: (Any) -> None
    """Raise ValueError listing every problem found by :func:`check_tensorrt82`."""
    problems = check_tensorrt82(model_or_path)
    if problems:
        raise ValueError(
            "ONNX model is not TensorRT 8.2 compatible:\n  - " + "\n  - ".join(problems))
