"""Real torch -> real ONNX -> real onnxruntime: parity, layout, TensorRT 8.2 compatibility."""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from LowResSegLib.repository.modelstore import ModelRepository
from LowResSegLib.training.export import export_onnx
from LowResSegLib.training.models import ExportWrapper, SegModel
from LowResSegLib.training.tensorrt_ops import check_tensorrt82


@pytest.mark.parametrize("head,r", [("jhead", 16), ("interp", 16), ("full", 64)])
def test_torch_onnxruntime_parity(tmp_path, head, r):
    torch.manual_seed(1)
    model = SegModel("elunet", head, r, 64, width=2).eval()
    if head == "jhead":  # make the learned head non-trivial (it is zero-initialised)
        with torch.no_grad():
            for p in model.head.parameters():
                p.normal_(0, 0.3)
    x = torch.randn(5, 1, model.config["input_size"], model.config["input_size"])  # batch 5 != export batch 2
    with torch.no_grad():  # centre the logits so both labels occur and the label check means something
        bias = model.head.fuse[1].bias if head == "jhead" else model.backbone.out.bias
        bias -= model(x)[-1].median()
    path = str(tmp_path / "m.onnx")
    export_onnx(model, path)
    with torch.no_grad():
        labels_t, probs_t, _ = ExportWrapper(model).eval()(x)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    labels_o, probs_o, p8_o = sess.run(["labels", "probabilities", "probabilities_8bit"], {"image": x.numpy()})
    assert labels_o.dtype == np.bool_ and labels_o.shape == (5, 64, 64)
    assert probs_o.dtype == np.float32 and probs_o.shape == (5, 1, 64, 64)
    np.testing.assert_allclose(probs_o, probs_t.numpy(), atol=1e-4)
    # the 8-bit output: multiples of 1/255 (to FP16 precision), within half a step of FP32
    assert p8_o.dtype == np.float16 and p8_o.shape == probs_o.shape
    levels = p8_o.astype(np.float64) * 255
    assert np.abs(levels - np.round(levels)).max() < 0.13
    assert np.abs(p8_o.astype(np.float32) - probs_o).max() <= 0.5 / 255 + 5e-4
    # identical labels except where torch itself sits on the threshold
    undecided = np.abs(probs_t.numpy()[:, 0] - 0.5) < 1e-5
    assert np.array_equal(labels_o[~undecided], labels_t.numpy()[~undecided])
    assert 0.1 < labels_o.mean() < 0.9


def test_exported_graph_is_opset13_and_tensorrt82_clean(tmp_path):
    model = SegModel("elunet", "jhead", 16, 64, width=2)
    path = str(tmp_path / "m.onnx")
    export_onnx(model, path)
    m = onnx.load(path)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) <= 13
    assert check_tensorrt82(path) == []
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["labels", "probabilities", "probabilities_8bit"]
    types = [o.type.tensor_type.elem_type for o in m.graph.output]
    assert types == [onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16]
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch


def test_export_run_writes_triton_layout(tiny_repo, tiny_run):
    repo = ModelRepository(tiny_repo)
    name = "elunet-jhead-16to64"
    assert repo.names() == [name]
    card = repo.card(name)
    assert card["input_size"] == 16 and card["output_size"] == 64
    assert card["params"]["head"] == 52
    assert card["training"]["command"] == "lowresseg train (test)"
    assert card["training"]["seed"] == 0 and card["training"]["epochs"] >= 1
    assert card["classes"][0]["type"]["value"] == "108369006"
    assert card["intended_use"] == "research use, not for diagnosis"
    cfg = open(os.path.join(tiny_repo, name, "config.pbtxt")).read()
    assert 'platform: "onnxruntime_onnx"' in cfg and "TYPE_UINT8" not in cfg and "dims: [ 1, 16, 16 ]" in cfg
    path = repo.onnx_path(name)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    labels, probs, p8 = sess.run(None, {"image": np.zeros((3, 1, 16, 16), np.float32)})
    assert labels.shape == (3, 64, 64) and probs.shape == p8.shape == (3, 1, 64, 64)
    for line in ('{ name: "labels" data_type: TYPE_BOOL dims: [ 64, 64 ] }',
                 '{ name: "probabilities" data_type: TYPE_FP32 dims: [ 1, 64, 64 ] }',
                 '{ name: "probabilities_8bit" data_type: TYPE_FP16 dims: [ 1, 64, 64 ] }'):
        assert line in cfg  # config.pbtxt says what the graph returns, as Triton checks


def test_export_refuses_to_replace_without_overwrite(tiny_run, tiny_repo):
    from LowResSegLib.training.export import export_run

    card_path = os.path.join(tiny_repo, "elunet-jhead-16to64", "lowresseg.json")
    before = open(card_path).read()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(tiny_run[0], tiny_repo)
    assert open(card_path).read() == before
    assert not [d for d in os.listdir(tiny_repo) if d.startswith(".")]  # no staging folder left


def test_training_run_is_resumable(tiny_run):
    from LowResSegLib.training.trainer import train

    out, cfg = tiny_run
    rows = open(os.path.join(out, "metrics.csv")).read().strip().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(dict(cfg), progress=False)
    state = train(dict(cfg, epochs=2, resume=True), progress=False)
    assert state["epoch"] == 2
    rows = open(os.path.join(out, "metrics.csv")).read().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    info = json.load(open(os.path.join(out, "run.json")))
    assert info["name"] == "elunet-jhead-16to64" and info["params"]["head"] == 52


def test_stop_after_ends_a_run_that_resume_finishes_on_the_same_schedule(tiny_run, tmp_path):
    """--stop-after splits a run across sessions (a GPU lease, say) without changing it: the
    learning-rate schedule is that of --epochs, and the resumed run ends where one straight run ends."""
    import csv

    import torch

    from LowResSegLib.training.trainer import train

    _, cfg = tiny_run
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train(dict(cfg, epochs=3, out=straight), progress=False)
    state = train(dict(cfg, epochs=3, stop_after=1, out=split), progress=False)
    assert state["epoch"] == 1 and "--stop-after" in state["stopped"] and "--resume" in state["stopped"]
    state = train(dict(cfg, epochs=3, out=split, resume=True), progress=False)
    assert state["epoch"] == 3 and state["stopped"] == "epochs done"
    lrs = [[row["lr"] for row in csv.DictReader(open(os.path.join(d, "metrics.csv")))] for d in (straight, split)]
    assert lrs[0] == lrs[1] and len(set(lrs[0])) == 3
    a = torch.load(os.path.join(straight, "last.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(split, "last.pt"), weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_volume_calibration_picks_the_threshold_whose_median_volume_is_right():
    """Issue 28: the median signed volume error is nearest 0 at the chosen threshold; ties go to 0.5."""
    import numpy as np

    from LowResSegLib.training.calibrate import choose_threshold

    grid = (0.3, 0.4, 0.5, 0.6)
    # every case is over-called by 20 % at 0.5 and right at 0.6
    volumes = {c: (100.0 * (c + 1), np.array([1.5, 1.35, 1.2, 1.0]) * 100.0 * (c + 1)) for c in range(5)}
    t, stats = choose_threshold(volumes, grid)
    assert t == 0.6 and stats["median_signed_error"] == 0.0 and stats["median_signed_error_at_0.5"] == 0.2
    flat = {c: (10.0, np.array([10.0, 10.0, 10.0, 10.0])) for c in range(3)}
    assert choose_threshold(flat, grid)[0] == 0.5
    with pytest.raises(ValueError, match="no tumour case"):
        choose_threshold({}, grid)


def test_exported_card_carries_its_calibration_and_inference_uses_it(tiny_run, tmp_path):
    import numpy as np

    from LowResSegLib.inference.engines import LocalEngine
    from LowResSegLib.images.geometry import Volume
    from LowResSegLib.inference.pipeline import segment
    from LowResSegLib.repository.modelstore import ModelCardError, card_threshold, validate_card
    from LowResSegLib.training.export import export_run

    run_dir, cfg = tiny_run
    final = export_run(run_dir, str(tmp_path / "repo"))
    card = json.load(open(os.path.join(final, "lowresseg.json")))
    cal = card["calibration"]
    assert 0.1 <= cal["threshold"] <= 0.9 and cal["cases"] >= 1 and cal["method"] == "median-volume-v1"
    assert card_threshold(card) == cal["threshold"] and card_threshold({}) == 0.5
    bad = dict(card, calibration={"threshold": 1.5})
    with pytest.raises(ModelCardError, match="calibration.threshold"):
        validate_card(bad)
    # the pipeline thresholds at the card's number: a lower threshold never labels less
    engine = LocalEngine(os.path.basename(final), repository=str(tmp_path / "repo"), threads=1)
    rng = np.random.default_rng(0)
    image = rng.normal(1.0, 0.05, (6, 64, 64)).astype(np.float32)
    image[2:5, 14:30, 20:40] += 1.5
    counts = []
    for t in (0.2, 0.8):
        engine.card["calibration"] = {"threshold": t}
        seg = segment(Volume(image, np.eye(4)), engine, keep_probabilities=True)
        labels, prob = seg.labels, seg.probabilities
        assert np.array_equal(labels > 0, prob > t)
        counts.append(int(labels.sum()))
    assert counts[0] >= counts[1]


def test_cli_export_warns_when_the_threshold_is_at_the_grid_edge(tiny_run, tmp_path, monkeypatch):
    """A threshold at the end of the calibration grid means the volumes are far off: export says so."""
    import subprocess
    import sys

    from LowResSegLib.training import calibrate

    run_dir, _ = tiny_run
    volumes = {"c": (10.0, np.linspace(30.0, 21.0, len(calibrate.GRID)))}  # over-called at every threshold
    assert calibrate.choose_threshold(volumes)[0] == calibrate.GRID[-1]
    out = subprocess.run([sys.executable, "-c",
                          "import sys, numpy as np\n"
                          "from LowResSegLib.training import calibrate\n"
                          "calibrate.case_volumes = lambda model, cache: {'c': (10.0, np.linspace(30.0, 21.0, len(calibrate.GRID)))}\n"
                          "from LowResSegLib.frontends.cli import main\n"
                          "sys.exit(main(['export', sys.argv[1], '--repository', sys.argv[2]]))",
                          run_dir, str(tmp_path / "repo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True)
    assert out.returncode == 0, out.stdout
    assert "warning: the volume threshold 0.90 is at the end of the calibration grid" in out.stdout


def test_final_checkpoint_exports_the_last_epochs_kept_weights(tiny_run, tmp_path):
    """``--checkpoint final``: the moving average of the last epoch with --ema (the raw weights without), the card
    saying which weights it carries and that epoch's validation Dice. Breaks if final fell back to best.pt, or
    exported the raw weights of an --ema run."""
    from LowResSegLib.training.export import export_run, load_run
    from LowResSegLib.training.trainer import train

    cfg = dict(tiny_run[1], out=str(tmp_path / "ema"), epochs=2, ema=0.9)
    train(cfg, progress=False)
    last = torch.load(os.path.join(cfg["out"], "last.pt"), map_location="cpu", weights_only=False)
    model, _, ck = load_run(cfg["out"], "final")
    for name, value in model.state_dict().items():
        assert torch.equal(value, last["ema"]["model"][name]), name
    assert any(not torch.equal(last["ema"]["model"][k], last["model"][k])
               for k in last["model"] if last["model"][k].dtype.is_floating_point)  # the two differ: the check bites
    rows = open(os.path.join(cfg["out"], "metrics.csv")).read().split()
    assert ck["epoch"] == 2 and ck["val_dice"] == float(rows[-1].split(",")[4])

    plain, _, _ = load_run(tiny_run[0], "final")  # a run without --ema: its raw weights
    raw = torch.load(os.path.join(tiny_run[0], "last.pt"), map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(v, raw[k]) for k, v in plain.state_dict().items())

    path = export_run(cfg["out"], str(tmp_path / "repo"), checkpoint="final", calibrate=False)
    card = json.load(open(os.path.join(path, "lowresseg.json")))
    assert card["training"]["weights_kept"] == "final" and card["training"]["epochs"] == 2
    assert card["metrics"]["val_dice_at_output_size"] == round(ck["val_dice"], 4)


def test_export_under_another_name_sits_beside_the_first(tiny_run, tmp_path):
    """``--name``: a second model of one configuration (an ensemble's member) beside the first; the folder, the
    card and Triton's config all carry the name, and the repository loads both."""
    from LowResSegLib.training.export import export_run

    repo = str(tmp_path / "repo")
    export_run(tiny_run[0], repo, calibrate=False)
    path = export_run(tiny_run[0], repo, calibrate=False, name="elunet-jhead-16to64-member")
    assert os.path.basename(path) == "elunet-jhead-16to64-member"
    r = ModelRepository(repo)
    assert r.names() == ["elunet-jhead-16to64", "elunet-jhead-16to64-member"]
    assert r.card("elunet-jhead-16to64-member")["name"] == "elunet-jhead-16to64-member"
    assert 'name: "elunet-jhead-16to64-member"' in open(os.path.join(path, "config.pbtxt")).read()
    with pytest.raises(ValueError, match="lower-case"):
        export_run(tiny_run[0], repo, calibrate=False, name="../escape")
