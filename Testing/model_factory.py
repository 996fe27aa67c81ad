"""Real model repositories for tests, built in seconds.

* ``add_threshold_model``: a hand-built ONNX graph (Resize linear + threshold) that marks
  bright voxels. With it, a test checks geometry only: the mask must land exactly where
  the bright object is, whatever the orientation.
* ``add_untrained_model``: a real SegModel (random weights, tiny width) exported with the
  project's own exporter, for CLI / file-flow tests that do not judge quality.
Both go through the real modelstore layout (card, config.pbtxt, sha256) and real onnxruntime.
"""

import json
import os

from LowResSegLib.images.intensity import normalization_card
from LowResSegLib.repository.modelstore import CARD_FORMAT_VERSION, sha256_file, triton_config, validate_card

TUMOUR = {
    "index": 1, "name": "Tumour", "color": [230, 60, 40],
    "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
    "type": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"},
}


def _card(name, r, big_r, sha, backbone, head, params_head=0):
    card = {
        "format_version": CARD_FORMAT_VERSION, "name": name, "version": "0.0.1", "task": "test",
        "modality": "MR", "sequence": "FLAIR (test fixture)", "orientation": "axial", "input_size": r,
        "output_size": big_r,
        "classes": [dict(TUMOUR)], "normalization": normalization_card(),
        "backbone": {"name": backbone, "width": 0}, "head": head,
        "params": {"backbone": 0, "head": params_head}, "macs": {"backbone": 0, "head": 0},
        "training": {"data": "none", "command": "test fixture", "seed": 0, "epochs": 0},
        "metrics": {}, "sha256": sha, "intended_use": "tests only",
    }
    return validate_card(card)


def _install(repo, name, onnx_writer, card_fn):
    d = os.path.join(repo, name)
    os.makedirs(os.path.join(d, "1"), exist_ok=True)
    path = os.path.join(d, "1", "model.onnx")
    onnx_writer(path)
    card = card_fn(sha256_file(path))
    with open(os.path.join(d, "lowresseg.json"), "w") as f:
        json.dump(card, f, indent=2)
    with open(os.path.join(d, "config.pbtxt"), "w") as f:
        f.write(triton_config(card))
    return d


def add_threshold_model(repo, name="threshold-16to64", r=16, big_r=64, threshold=1.5, legacy=False):
    """labels = bilinear(image -> R) > threshold (normalised units); probabilities = a sigmoid of it.

    The outputs are those of ``modelstore.graph_outputs``; ``legacy`` gives the layout exported
    before them (UINT8 labels, FP32 probabilities only) that engines must still read.
    """
    import onnx
    from onnx import TensorProto, helper

    def write(path):
        nodes = [
            helper.make_node("Constant", [], ["scales"], value=helper.make_tensor(
                "s", TensorProto.FLOAT, [4], [1.0, 1.0, big_r / r, big_r / r])),
            helper.make_node("Constant", [], ["roi"], value=helper.make_tensor("roi_v", TensorProto.FLOAT, [0], [])),
            helper.make_node("Resize", ["image", "roi", "scales"], ["up"], mode="linear",
                             coordinate_transformation_mode="half_pixel"),
            helper.make_node("Constant", [], ["t"], value=helper.make_tensor("tv", TensorProto.FLOAT, [], [threshold])),
            helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.FLOAT, [], [8.0])),
            helper.make_node("Sub", ["up", "t"], ["centred"]),
            helper.make_node("Mul", ["centred", "k"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probabilities"]),
            helper.make_node("Greater", ["up", "t"], ["mask4"]),
            helper.make_node("Squeeze", ["mask4", "axis1"], ["mask" if legacy else "labels"]),
        ]
        outputs = [helper.make_tensor_value_info("labels", TensorProto.UINT8 if legacy else TensorProto.BOOL,
                                                 ["N", big_r, big_r]),
                   helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1, big_r, big_r])]
        if legacy:
            nodes.append(helper.make_node("Cast", ["mask"], ["labels"], to=TensorProto.UINT8))
        else:
            nodes += [
                helper.make_node("Constant", [], ["c255"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [255.0])),
                helper.make_node("Mul", ["probabilities", "c255"], ["p255"]),
                helper.make_node("Round", ["p255"], ["levels"]),
                helper.make_node("Div", ["levels", "c255"], ["p8"]),
                helper.make_node("Cast", ["p8"], ["probabilities_8bit"], to=TensorProto.FLOAT16),
            ]
            outputs.append(helper.make_tensor_value_info("probabilities_8bit", TensorProto.FLOAT16,
                                                         ["N", 1, big_r, big_r]))
        axis1 = helper.make_tensor("axis1", TensorProto.INT64, [1], [1])
        graph = helper.make_graph(
            nodes, "threshold",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, r, r])],
            outputs, initializer=[axis1])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7
        onnx.checker.check_model(model)
        onnx.save(model, path)

    return _install(repo, name, write, lambda sha: _card(name, r, big_r, sha, "threshold", "interp"))


def add_untrained_model(repo, backbone="elunet", head="jhead", r=16, big_r=64, width=2, seed=0):
    """A real exported SegModel with random weights (quality is not the point)."""
    import torch

    from LowResSegLib.training.export import export_onnx
    from LowResSegLib.training.models import SegModel, model_stats

    torch.manual_seed(seed)
    model = SegModel(backbone, head, r, big_r, width=width).eval()
    stats = model_stats(model)

    def card_fn(sha):
        card = _card(model.name, model.config["input_size"], big_r, sha, backbone, head, stats["params"]["head"])
        card["params"], card["macs"] = stats["params"], stats["macs"]
        return card

    return _install(repo, model.name, lambda p: export_onnx(model, p), card_fn)


def add_ensemble(repo, name, members, **extra):
    """An ensemble card (no graph) naming ``members`` of ``repo``; ``extra`` overrides card fields."""
    from LowResSegLib.repository.modelstore import ENSEMBLE_KIND, ENSEMBLE_RULE

    card = {
        "format_version": CARD_FORMAT_VERSION, "kind": ENSEMBLE_KIND, "name": name, "version": "0.0.1",
        "task": "test", "modality": "MR", "sequence": "FLAIR (test fixture)", "orientation": "axial",
        "classes": [dict(TUMOUR)], "ensemble": {"members": list(members), "rule": ENSEMBLE_RULE},
        "intended_use": "tests only",
    }
    card.update(extra)
    d = os.path.join(repo, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "lowresseg.json"), "w") as f:
        json.dump(card, f, indent=2)
    return d
