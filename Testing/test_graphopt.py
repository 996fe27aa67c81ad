"""The load-time graph rewrite (LowResSegLib.inference.graphopt) on the shipped models: same numbers bit for bit,
only the read output, no pixel shuffle left, still TensorRT 8.2-clean; and the engine uses it."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from LowResSegLib.inference.engines import LocalEngine
from LowResSegLib.inference.graphopt import optimised_model
from LowResSegLib.repository.modelstore import PROBABILITIES_8BIT, ModelRepository
from LowResSegLib.training.tensorrt_ops import check_tensorrt82

MODELS = ["elunet-jhead-32to256", "elunet-jhead-16to256", "elunet-interp-32to256"]


def _inputs(r):
    rng = np.random.default_rng(r)
    x = rng.normal(size=(5, 1, r, r)).astype(np.float32)
    x[0] = 0  # a slice outside the head
    x[1] = np.clip(x[1] * 0.3 + 1.0, 0, 5)  # tissue-like values, as normalised volumes hold
    return x


@pytest.mark.parametrize("name", MODELS)
def test_rewritten_graph_gives_the_shipped_numbers_bit_for_bit(tmp_path, name):
    repo = ModelRepository()
    path = repo.onnx_path(name)
    graph = optimised_model(path, lambda names: PROBABILITIES_8BIT)
    model = onnx.load_from_string(graph)
    assert [o.name for o in model.graph.output] == [PROBABILITIES_8BIT]
    ops = [n.op_type for n in model.graph.node]
    before = [n.op_type for n in onnx.load(path).graph.node]
    shuffles = before.count("DepthToSpace")
    assert (shuffles > 0) == (repo.card(name)["head"] == "jhead")
    assert "DepthToSpace" not in ops and ops.count("ConvTranspose") == before.count("ConvTranspose") + shuffles
    assert len(ops) < len(before)  # the labels' nodes went
    out = tmp_path / "m.onnx"
    out.write_bytes(graph)
    assert check_tensorrt82(str(out)) == []
    x = _inputs(repo.card(name)["input_size"])
    shipped = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rewritten = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    a, = shipped.run([PROBABILITIES_8BIT], {"image": x})
    b, = rewritten.run(None, {"image": x})
    assert a.dtype == b.dtype == np.float16 and a.max() > 0
    np.testing.assert_array_equal(a, b)


def test_local_engine_runs_the_rewrite_and_agrees_with_the_plain_graph():
    fast, plain = LocalEngine("elunet-jhead-32to256"), LocalEngine("elunet-jhead-32to256", optimise=False)
    assert fast.optimised and not plain.optimised and fast.output == plain.output == PROBABILITIES_8BIT
    x = _inputs(32)
    np.testing.assert_array_equal(fast.infer(x), plain.infer(x))


def test_an_engine_asked_for_another_output_keeps_that_one():
    engine = LocalEngine("elunet-jhead-32to256", output="probabilities")
    assert [o.name for o in engine.session.get_outputs()] == ["probabilities"]
    with pytest.raises(ValueError, match="no output 'nope'"):
        LocalEngine("elunet-jhead-32to256", output="nope")
