"""The real LowResSeg.py (Widget and Logic) against the documented slicer stand-in (Testing/Slicer).

Real parts: the module, the .ui's widget names and classes, LowResSegLib, onnxruntime models made by
model_factory, vtk's matrices, highdicom for the DICOM-SEG. Stand-in: the scene and Qt (see README).
"""

import os
import shutil
import sys
import threading

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
pytest.importorskip("vtk")
sys.path.insert(0, os.path.join(HERE, "Slicer"))
sys.path.insert(0, os.path.join(ROOT, "LowResSeg"))

import slicer  # noqa: E402  (the stand-in)
from DICOMLib import DICOMUtils  # noqa: E402

from LowResSegLib.engines import LocalEngine  # noqa: E402
from LowResSegLib.geometry import Volume  # noqa: E402
from LowResSegLib.pipeline import segment  # noqa: E402
from helpers import cube_phantom  # noqa: E402
from model_factory import add_threshold_model  # noqa: E402

SHAPE = (10, 40, 48)
BRAIN = (slice(1, 9), slice(4, 36), slice(4, 44))
CUBE = (slice(3, 7), slice(10, 22), slice(26, 38))
IJK_TO_RAS = np.array([[-0.9, 0, 0, 20.0], [0, 0.8, 0, -30.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slicer-models"))
    add_threshold_model(root, "low-16to64", r=16, big_r=64, threshold=2.5)
    add_threshold_model(root, "high-32to64", r=32, big_r=64, threshold=2.5)
    add_threshold_model(root, "zbroken-16to64", r=16, big_r=64, threshold=2.5)
    with open(os.path.join(root, "zbroken-16to64", "1", "model.onnx"), "ab") as f:
        f.write(b"tampered")  # its sha256 no longer matches the card: fails when the worker loads it
    return root


@pytest.fixture
def module(repo, monkeypatch):
    monkeypatch.setenv("LOWRESSEG_MODELS", repo)
    slicer.reset()
    DICOMUtils.imported.clear()
    import LowResSeg

    return LowResSeg


@pytest.fixture
def volume_node():
    img, truth = cube_phantom(SHAPE, BRAIN, CUBE)
    node = slicer.util.addVolumeFromArray(img.astype(np.float32), IJK_TO_RAS, name="FLAIR")
    return node, truth


def make_widget(module, node, model=None, *compare):
    """The module's widget on ``node``; ``model`` chosen and ``compare`` ticked as a user would."""
    widget = module.LowResSegWidget()
    widget.setup()
    widget.ui.inputSelector.setCurrentNode(node)
    if model:
        widget.ui.modelSelector.setCurrentIndex(widget.ui.modelSelector.findText(model))
    for item in widget.ui.compareList.items:
        if item.text() in compare:
            item.setCheckState(2)  # qt.Qt.Checked
    return widget


def pump(widget, timeout=60):
    """Let the worker finish, then fire the QTimer as Slicer's event loop would."""
    runs = widget._runs
    if runs is not None:
        runs._thread.join(timeout)
    while widget._timer is not None and widget._timer.active:
        widget._timer.fire()


def seg_nodes():
    return slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")


def test_segment_makes_a_new_node_on_the_input_grid_and_never_touches_others(module, volume_node, repo):
    node, truth = volume_node
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my edits")
    mine_id = mine.GetSegmentation().AddEmptySegment("", "edited", (0, 1, 0))
    mine.GetSegmentation().GetSegment(mine_id).labelmap = truth.copy()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    sh.SetItemParent(sh.GetItemByDataNode(node), 7)  # the volume's study

    assert module._bundle_root() == ROOT  # loaded from the repository: LowResSegLib and Resources found there
    widget = make_widget(module, node)
    assert widget.ui.modelSelector.currentText == "high-32to64"  # the first listed (no recommended model here)
    widget.ui.modelSelector.setCurrentIndex(widget.ui.modelSelector.findText("low-16to64"))
    widget.ui.segmentButton.click()
    assert widget.ui.segmentButton.text == "Cancel"
    pump(widget)
    assert widget.ui.segmentButton.text == "Segment" and widget.ui.progressBar.value == 100
    new = [n for n in seg_nodes() if n is not mine]
    assert len(new) == 1 and new[0].GetName() == "FLAIR \u00b7 low-16to64" and new[0].reference is node
    segment_ = new[0].GetSegmentation().GetSegment(new[0].GetSegmentation().GetNthSegmentID(0))
    direct = segment(Volume.from_ras(node.array.astype(np.float32), IJK_TO_RAS),
                     LocalEngine("low-16to64", repo)).labels
    np.testing.assert_array_equal(segment_.labelmap, direct)
    assert segment_.labelmap[truth > 0].mean() > 0.9  # on the right voxels of the (k, j, i) grid
    assert "SCT^108369006^Neoplasm" in segment_.tags["TerminologyEntry"]
    assert sh.GetItemParent(sh.GetItemByDataNode(new[0])) == 7
    np.testing.assert_array_equal(mine.GetSegmentation().GetSegment(mine_id).labelmap, truth)  # untouched
    assert widget.ui.resultsTable.rows == 1 and widget.ui.resultsTable.cells[(0, 0)] == "low-16to64"
    assert not widget.ui.testConnectionButton.enabled  # remote: wired by the edge-server release
    assert widget.ui.resultsTable.cells[(0, 5)] == ""  # "FLAIR", a tumour of a plausible size: nothing to say

    widget.ui.segmentButton.click()  # the same model again: a second node, a distinct name
    pump(widget)
    assert sorted(n.GetName() for n in seg_nodes()) == ["FLAIR \u00b7 low-16to64", "FLAIR \u00b7 low-16to64_1",
                                                         "my edits"]
    widget.cleanup()


def test_cancel_leaves_the_scene_unchanged(module, volume_node, monkeypatch):
    import LowResSegLib.pipeline as pipeline

    node, _ = volume_node
    release = threading.Event()

    def held_segment(*args, **kwargs):
        release.wait(30)  # the user clicks Cancel while the model runs
        return segment(*args, **kwargs)

    monkeypatch.setattr(pipeline, "segment", held_segment)
    widget = make_widget(module, node)
    before = list(slicer.mrmlScene.nodes)
    widget.ui.segmentButton.click()
    widget.ui.segmentButton.click()  # Cancel
    release.set()
    pump(widget)
    assert slicer.mrmlScene.nodes == before
    assert "Cancelled" in widget.ui.statusLabel.text and widget.ui.segmentButton.text == "Segment"


def test_a_failure_mid_run_leaves_the_scene_unchanged(module, volume_node):
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64", "zbroken-16to64")
    before = list(slicer.mrmlScene.nodes)
    widget.ui.segmentButton.click()
    pump(widget)
    assert slicer.mrmlScene.nodes == before  # low-16to64 succeeded, but no half of a comparison is kept
    assert widget.ui.statusLabel.text.startswith("Failed, nothing was added to the scene: zbroken-16to64: ")


def test_compare_makes_a_node_per_model_and_a_linked_side_by_side_layout(module, volume_node):
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64", "high-32to64")
    widget.ui.segmentButton.click()
    pump(widget)
    nodes = seg_nodes()
    assert sorted(n.GetName() for n in nodes) == ["FLAIR \u00b7 high-32to64", "FLAIR \u00b7 low-16to64"]
    assert widget.ui.resultsTable.rows == 2 and widget.ui.referenceSelector.items == ["low-16to64", "high-32to64"]
    widget.ui.sideBySideButton.click()
    layout = slicer.app.layoutManager().GetLayoutNode()
    assert layout.arrangement in layout.descriptions and layout.descriptions[layout.arrangement].count("<view") == 2
    views = [slicer.app.layoutManager().sliceWidget("LowResSeg%d" % (n + 1)) for n in range(2)]
    assert all(v.composite.background == node.GetID() and v.composite.linked for v in views)
    shown = sorted(n.GetDisplayNode().only_in_view for n in nodes)
    assert shown == sorted(v.sliceNode.GetID() for v in views)


def test_export_writes_a_dicom_seg_on_the_volume_source_files(module, tmp_path):
    from LowResSegLib.dicomseg import read_dicom_seg
    from LowResSegLib.dicomsynth import write_mr_series
    from LowResSegLib.io import read_volume

    img, truth = cube_phantom(SHAPE, BRAIN, CUBE)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ IJK_TO_RAS
    files = write_mr_series(Volume(img, lps), str(tmp_path / "mr"), seed=5)
    vol = read_volume(str(tmp_path / "mr"))
    node = slicer.util.addVolumeFromArray(vol.array, vol.ijk_to_ras, name="FLAIR from DICOM")
    uids = vol.meta["sop_instance_uids"]
    node.SetAttribute("DICOM.instanceUIDs", " ".join(reversed(uids)))  # any order: matched by position
    slicer.dicomDatabase.files.update(zip(uids, vol.meta["files"]))
    widget = make_widget(module, node)
    widget.ui.segmentButton.click()
    pump(widget)
    widget.ui.resultsTable.selected = 0
    widget.ui.exportDicomSegButton.click()
    assert len(DICOMUtils.imported) == 1, slicer.util.messages
    folder = DICOMUtils.imported[0]
    (seg_file,) = os.listdir(folder)
    source = [slicer.dicomDatabase.fileForInstance(u) for u in reversed(uids)]
    back = read_dicom_seg(os.path.join(folder, seg_file), vol.meta["files"])
    seg = widget._segmentations[widget.ui.modelSelector.currentText]
    np.testing.assert_array_equal(back, seg.labels)
    assert set(source) == set(files)
    shutil.rmtree(folder)

    other = slicer.util.addVolumeFromArray(img.astype(np.float32), IJK_TO_RAS, name="case7_t1ce")
    widget.ui.inputSelector.setCurrentNode(other)
    widget.ui.segmentButton.click()
    pump(widget)
    assert "looks like T1 (by its name)" in widget.ui.resultsTable.cells[(0, 5)]  # the library's warning, per run
    widget.ui.exportDicomSegButton.click()
    assert slicer.util.messages[-1][0] == "error" and "was not loaded from DICOM" in slicer.util.messages[-1][1]
    assert len(DICOMUtils.imported) == 1


def test_remote_processing_and_test_connection(module, volume_node, repo, tmp_path):
    """Remote: the same masks from a real server process; Test connection says what it found or why not."""
    import qt
    from test_server import TOKEN, start_server

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    os.chmod(str(token_file), 0o600)
    server = start_server(repo, "--token-file", str(token_file))
    try:
        node, _ = volume_node
        widget = make_widget(module, node, "low-16to64")
        widget.ui.remoteRadioButton.checked = True
        widget.ui.remoteRadioButton.emit("toggled", True)
        assert widget.ui.testConnectionButton.enabled
        widget.ui.serverUrlLineEdit.text = server.url
        widget.ui.tokenLineEdit.text = "wrong-token-wrong-token"
        widget.ui.testConnectionButton.click()
        assert widget.ui.remoteStatusLabel.text.startswith("Connection failed: the server refused the token")
        widget.ui.tokenLineEdit.text = TOKEN
        widget.ui.testConnectionButton.click()
        # the tampered model is skipped by the server (and said in its log); the other two are served
        assert widget.ui.remoteStatusLabel.text.startswith("Connected to lowresseg 0.1.0: 2 model(s) (high-32to64, low")
        assert qt.QSettings().value("LowResSeg/ServerURL") == server.url  # remembered for next time
        widget.ui.segmentButton.click()
        pump(widget)
        (new,) = seg_nodes()
        labelmap = new.GetSegmentation().GetSegment(new.GetSegmentation().GetNthSegmentID(0)).labelmap
        local = segment(Volume.from_ras(node.array.astype(np.float32), IJK_TO_RAS), LocalEngine("low-16to64", repo))
        np.testing.assert_array_equal(labelmap, local.labels)
    finally:
        server.stop()
    assert not any(TOKEN in line for line in server.log)
