"""Exact rewrites of a model graph at load time: the file and its sha256 stay as shipped.

Profiled per node (``bench/speed.py``, docs/BENCHMARKS.md), the J-head's extra time at 256²
is mostly memory-bound layout work, and onnxruntime runs every node of a graph whatever
outputs a caller asks for. So, when a :class:`LocalEngine` loads a model, it runs a copy that

* returns only the output the engine reads (``labels`` and the nodes only it needs go);
* does each pixel shuffle (``DepthToSpace``, blocksize 2) as a ``ConvTranspose`` with a 2×2
  identity kernel and stride 2, which onnxruntime runs faster. Every output pixel is one
  input value times 1.0 plus zeros, so the numbers are bit for bit those of the shipped graph
  (Testing/test_graphopt.py); the ops stay TensorRT 8.2-clean.

This needs the ``onnx`` package; without it the shipped graph runs as it is (same numbers,
a little slower). Python 3.9+.
"""

import numpy as np

__all__ = ["optimised_model", "have_onnx"]


def have_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def optimised_model(path, choose):
    """Serialized ONNX of ``path`` rewritten as the module docstring says, or None without ``onnx``.

    ``choose(output names)`` returns the one output to keep (it may raise for a graph without a usable one).
    """
    if not have_onnx():
        return None
    import onnx

    model = onnx.load(path)
    _keep_only(model.graph, [choose([v.name for v in model.graph.output])])
    model = onnx.shape_inference.infer_shapes(model)
    _pixel_shuffle_as_conv_transpose(model.graph)
    return model.SerializeToString()


def _keep_only(graph, outputs):
    """Drop graph outputs not in ``outputs``, then every node and initializer nothing needs."""
    missing = [o for o in outputs if o not in [v.name for v in graph.output]]
    if missing:
        raise ValueError("the graph has no output %s" % ", ".join(missing))
    kept_outputs = [v for v in graph.output if v.name in outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    needed = set(outputs)
    nodes = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop bodies) read outer names
                for g in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                    needed.update(i for n in g.node for i in n.input)
    del graph.node[:]
    graph.node.extend(reversed(nodes))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _channels(graph, name):
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        if v.name == name:
            dims = v.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None


def _pixel_shuffle_as_conv_transpose(graph):
    from onnx import helper, numpy_helper

    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        cin = _channels(graph, node.input[0]) if node.op_type == "DepthToSpace" else None
        if node.op_type != "DepthToSpace" or attrs.get("blocksize") != 2 or not cin or cin % 4:
            nodes.append(node)
            continue
        c = cin // 4
        mode = attrs.get("mode", b"DCR")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        weight = np.zeros((cin, c, 2, 2), np.float32)
        for a in range(2):
            for b in range(2):
                for k in range(c):
                    weight[(a * 2 + b) * c + k if mode == "DCR" else k * 4 + a * 2 + b, k, a, b] = 1.0
        wname = node.name + "/identity_kernel"
        graph.initializer.append(numpy_helper.from_array(weight, wname))
        nodes.append(helper.make_node("ConvTranspose", [node.input[0], wname], list(node.output),
                                      name=node.name + "/as_conv_transpose", kernel_shape=[2, 2], strides=[2, 2]))
    del graph.node[:]
    graph.node.extend(nodes)
