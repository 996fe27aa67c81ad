"""The real LowResSeg.py (Widget and Logic) against the documented slicer stand-in (Testing/Slicer).

Real parts: the module, the .ui's widget names and classes, LowResSegLib, onnxruntime models made by
model_factory, vtk's matrices, highdicom for the DICOM-SEG, the worker processes. Stand-in: the scene, Qt and
the ``PythonSlicer`` launcher, which starts the interpreter as a child of its own (see Testing/Slicer/README.md).
"""

import os
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
pytest.importorskip("vtk")
sys.path.insert(0, os.path.join(HERE, "Slicer"))
sys.path.insert(0, os.path.join(ROOT, "LowResSeg"))

import slicer  # noqa: E402  (the stand-in)
from DICOMLib import DICOMUtils  # noqa: E402

from LowResSegLib.inference.engines import LocalEngine  # noqa: E402
from LowResSegLib.images.geometry import Volume  # noqa: E402
from LowResSegLib.inference.pipeline import segment  # noqa: E402
from helpers import cube_phantom  # noqa: E402
from model_factory import add_threshold_model  # noqa: E402
from launcher import SilentServer, alive, descendants, launcher_on_path, wait_for  # noqa: E402

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")

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
def module(repo, monkeypatch, tmp_path):
    import qt

    monkeypatch.setenv("LOWRESSEG_MODELS", repo)
    monkeypatch.setenv("LOWRESSEG_CACHE", str(tmp_path / "cache"))  # model-auto calibrations of this test only
    slicer.reset()
    DICOMUtils.imported.clear()
    slicer.util.slot_errors.clear()
    qt.QSettings.store.clear()
    monkeypatch.setattr(qt.QSettings, "path", str(tmp_path / "settings" / "Slicer.ini"))
    launcher_on_path(monkeypatch, str(tmp_path / "slicer-bin"))  # the worker starts through PythonSlicer, as in Slicer
    import LowResSeg

    yield LowResSeg
    assert slicer.util.slot_errors == [], "a slot raised (PythonQt would print it): %s" % slicer.util.slot_errors


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


def pump(widget, timeout=120):
    """Fire the module's QTimer every 20 ms, as Slicer's event loop would, until the runs end.
    Returns the progress bar's values, one per tick."""
    seen, deadline = [], time.monotonic() + timeout
    while widget._timer is not None and widget._timer.active:
        assert time.monotonic() < deadline, "the runs did not end within %d s" % timeout
        widget._timer.fire()
        slicer.app.processEvents()
        seen.append(widget.ui.progressBar.value)
        time.sleep(0.02)
    return seen


def pump_probe(widget, timeout=60):
    """The connection test's timer, as the event loop would fire it, until the test ends."""
    deadline = time.monotonic() + timeout
    while widget._probeTimer is not None and widget._probeTimer.active:
        assert time.monotonic() < deadline, "the connection test did not end within %d s" % timeout
        widget._probeTimer.fire()
        time.sleep(0.02)


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
    runs = widget._runs
    assert runs.process.pid != os.getpid() and runs.process.args[1:3] == ["-m", "LowResSegLib.frontends.worker"]
    assert runs.process.args[0].endswith("PythonSlicer")  # the launcher, as in Slicer
    progress = pump(widget)
    assert any(0 < v for v in progress) and widget.ui.segmentButton.text == "Segment"
    assert widget.ui.progressBar.value == 100
    assert runs.process.poll() is not None and not os.path.exists(runs.folder)  # no process, no file left
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


def test_cancel_kills_the_worker_and_leaves_the_scene_unchanged(module, volume_node):
    node, _ = volume_node
    widget = make_widget(module, node)
    before = list(slicer.mrmlScene.nodes)
    widget.ui.segmentButton.click()
    runs = widget._runs
    widget.ui.segmentButton.click()  # Cancel
    assert runs.process.poll() is not None  # killed at once, not after a chunk
    pump(widget)
    assert slicer.mrmlScene.nodes == before and not os.path.exists(runs.folder)
    assert "Cancelled" in widget.ui.statusLabel.text and widget.ui.segmentButton.text == "Segment"


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def busy_widget(module, node, silent):
    """The module segmenting on a server that never answers: (widget, runs, PIDs of the worker's whole tree)."""
    widget = make_widget(module, node, "low-16to64")
    widget.ui.remoteRadioButton.checked = True
    widget.ui.serverUrlLineEdit.text = silent.url
    before = len(silent.accepted)
    widget.ui.segmentButton.click()
    runs = widget._runs
    tree = wait_for(lambda: len(silent.accepted) > before and [runs.process.pid] + descendants(runs.process.pid))
    assert tree and len(tree) == 2, "the PythonSlicer launcher and its interpreter: %s" % tree
    return widget, runs, tree


@LINUX
def test_cancel_stops_the_interpreter_behind_the_launcher(module, volume_node, silent):
    widget, runs, tree = busy_widget(module, volume_node[0], silent)
    widget.ui.segmentButton.click()  # Cancel
    pump(widget)
    assert wait_for(lambda: not [p for p in tree if alive(p)], timeout=10), [p for p in tree if alive(p)]
    assert not os.path.exists(runs.folder) and seg_nodes() == []


@LINUX
def test_closing_the_scene_and_the_module_stop_the_whole_tree(module, volume_node, silent):
    widget, runs, tree = busy_widget(module, volume_node[0], silent)
    slicer.mrmlScene.Clear(0)  # File > Close Scene
    assert wait_for(lambda: not [p for p in tree if alive(p)], timeout=10), [p for p in tree if alive(p)]
    assert not os.path.exists(runs.folder)
    node = slicer.util.addVolumeFromArray(volume_node[0].array, IJK_TO_RAS, name="FLAIR")
    widget, runs, tree = busy_widget(module, node, silent)
    widget.cleanup()  # the module is closed (Slicer quits)
    assert wait_for(lambda: not [p for p in tree if alive(p)], timeout=10), [p for p in tree if alive(p)]
    assert not os.path.exists(runs.folder) and seg_nodes() == []


def test_a_failure_mid_run_leaves_the_scene_unchanged(module, volume_node):
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64", "zbroken-16to64")
    before = list(slicer.mrmlScene.nodes)
    widget.ui.segmentButton.click()
    pump(widget)
    assert slicer.mrmlScene.nodes == before  # low-16to64 succeeded, but no half of a comparison is kept
    assert widget.ui.statusLabel.text.startswith("Failed, nothing was added to the scene: zbroken-16to64: ")


def side_by_side_views(n):
    return [slicer.app.layoutManager().sliceWidget("LowResSeg%d" % (i + 1)) for i in range(n)]


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
    views = side_by_side_views(2)
    assert all(v.composite.background == node.GetID() and v.composite.linked for v in views)
    slicer.app.processEvents()  # the event loop lays the new views out, then runs what waited for it
    # each view fitted to the volume at its laid-out size (600 x 800), not at a new slice node's 256 x 256
    assert [v.sliceLogic().fits for v in views] == [[(600, 800)], [(600, 800)]]
    standard = [v for cls in ("vtkMRMLSliceNode", "vtkMRMLViewNode") for v in slicer.util.getNodesByClass(cls)
                if not v.GetLayoutName().startswith("LowResSeg")]
    assert sorted(v.GetLayoutName() for v in standard) == ["1", "Green", "Red", "Yellow"]
    for seg, view, other in zip(widget._nodes.values(), views, reversed(views)):
        display = seg.GetDisplayNode()
        assert display.IsDisplayableInView(view.sliceNode.GetID())  # its own view, not the other run's
        assert not display.IsDisplayableInView(other.sliceNode.GetID())
        assert all(display.IsDisplayableInView(v.GetID()) for v in standard)  # still in the 3D and standard views


def test_side_by_side_again_with_more_runs(module, volume_node):
    """vtkMRMLLayoutNode::AddLayoutDescription keeps the first XML of an id: a second comparison with more
    runs must replace it, or the third view does not exist."""
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64", "high-32to64")
    widget.ui.segmentButton.click()
    pump(widget)
    widget.ui.sideBySideButton.click()  # two views
    widget.ui.segmentButton.click()  # the same pair again: four runs' nodes in the scene
    pump(widget)
    widget.logic.showSideBySide(node, seg_nodes()[:3])  # three side by side
    layout = slicer.app.layoutManager().GetLayoutNode()
    assert layout.descriptions[layout.arrangement].count("<view") == 3
    views = side_by_side_views(3)
    assert all(v is not None and v.composite.background == node.GetID() for v in views)
    fourth = seg_nodes()[3].GetDisplayNode()  # a run outside this comparison: in none of its views
    assert not any(fourth.IsDisplayableInView(v.sliceNode.GetID()) for v in views)
    assert fourth.IsDisplayableInView("vtkMRMLSliceNodeRed")


def test_views_made_later_show_the_runs_as_the_comparison_says(module, volume_node):
    """A layout shown after the comparison (here: a second 3-D view and a new slice view) makes new view nodes:
    every run appears there, and the comparison's views still show their own run only."""
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64", "high-32to64")
    widget.ui.segmentButton.click()
    pump(widget)
    widget.ui.sideBySideButton.click()
    layout = slicer.app.layoutManager().GetLayoutNode()
    later = ('<layout type="horizontal"><item><view class="vtkMRMLViewNode" singletontag="2"/></item>'
             '<item><view class="vtkMRMLSliceNode" singletontag="Red+"/></item></layout>')
    layout.AddLayoutDescription(501, later)
    layout.SetViewArrangement(501)  # the layout manager adds the missing view nodes to the scene
    made = [v for cls in ("vtkMRMLViewNode", "vtkMRMLSliceNode") for v in slicer.util.getNodesByClass(cls)
            if v.GetLayoutName() in ("2", "Red+")]
    assert len(made) == 2
    runs = list(widget._nodes.values())
    for seg in runs:
        assert all(seg.GetDisplayNode().IsDisplayableInView(v.GetID()) for v in made)
    views = [slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeLowResSeg%d" % i) for i in (1, 2)]
    assert [[seg.GetDisplayNode().IsDisplayableInView(v.GetID()) for v in views] for seg in runs] == \
        [[True, False], [False, True]]


def dicom_loaded_node(tmp_path):
    """A volume node as Slicer's DICOM module loads one: instance UIDs attribute, files in the database."""
    from LowResSegLib.images.dicomsynth import write_mr_series
    from LowResSegLib.images.io import read_volume

    img, truth = cube_phantom(SHAPE, BRAIN, CUBE)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ IJK_TO_RAS
    files = write_mr_series(Volume(img, lps), str(tmp_path / "mr"), seed=5)
    vol = read_volume(str(tmp_path / "mr"))
    node = slicer.util.addVolumeFromArray(vol.array, vol.ijk_to_ras, name="FLAIR from DICOM")
    uids = vol.meta["sop_instance_uids"]
    node.SetAttribute("DICOM.instanceUIDs", " ".join(reversed(uids)))  # any order: matched by position
    slicer.dicomDatabase.files.update(zip(uids, vol.meta["files"]))
    return node, vol, files


def segmented_widget(module, node):
    """The module after one run on ``node``, that run selected in the results table."""
    widget = make_widget(module, node)
    widget.ui.segmentButton.click()
    pump(widget)
    widget.ui.resultsTable.selected = 0
    return widget


def test_export_writes_a_dicom_seg_into_the_database(module, tmp_path):
    import pydicom

    from LowResSegLib.results.dicomseg import read_dicom_seg

    node, vol, files = dicom_loaded_node(tmp_path)
    widget = segmented_widget(module, node)
    widget.ui.exportDicomSegButton.click()
    assert len(DICOMUtils.imported) == 1, slicer.util.messages
    staging, copied = DICOMUtils.imported[0]
    assert copied and not os.path.exists(staging)  # the database holds its own copy; no temporary folder is left
    stored = widget.ui.statusLabel.text.split(": ", 1)[1]
    assert stored.startswith(slicer.dicomDatabase.databaseDirectory)
    uid = str(pydicom.dcmread(stored, stop_before_pixels=True).SOPInstanceUID)
    assert slicer.dicomDatabase.fileForInstance(uid) == stored
    back = read_dicom_seg(stored, vol.meta["files"])
    seg = widget._segmentations[widget.ui.modelSelector.currentText]
    np.testing.assert_array_equal(back, seg.labels)

    img, _ = cube_phantom(SHAPE, BRAIN, CUBE)
    other = slicer.util.addVolumeFromArray(img.astype(np.float32), IJK_TO_RAS, name="case7_t1ce")
    widget.ui.inputSelector.setCurrentNode(other)
    widget.ui.segmentButton.click()
    pump(widget)
    assert "looks like T1 (by its name)" in widget.ui.resultsTable.cells[(0, 5)]  # the library's warning, per run
    widget.ui.exportDicomSegButton.click()
    assert slicer.util.messages[-1][0] == "error" and "was not loaded from DICOM" in slicer.util.messages[-1][1]
    assert len(DICOMUtils.imported) == 1
    slicer.util.slot_errors.clear()  # tryWithErrorDisplay showed it and raised it again, as in Slicer


def test_export_says_so_when_the_database_does_not_take_the_seg(module, tmp_path):
    """DICOMUtils.importDicom catches everything and returns False: the module must not report success."""
    node, _, _ = dicom_loaded_node(tmp_path)
    widget = segmented_widget(module, node)
    slicer.dicomDatabase.isOpen = False  # e.g. the database folder is gone
    widget.ui.exportDicomSegButton.click()
    kind, text = slicer.util.messages[-1]
    assert kind == "error" and "did not take the DICOM-SEG" in text
    kept = text.split("the file is kept at ", 1)[1]
    assert os.path.isfile(kept)  # nothing is lost
    assert "added to the DICOM database" not in widget.ui.statusLabel.text
    slicer.util.slot_errors.clear()


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
        # the probe runs in the worker process: the panel says so and stays usable meanwhile
        assert widget.ui.remoteStatusLabel.text == "Testing the connection to %s..." % server.url
        assert not widget.ui.testConnectionButton.enabled and widget._probe.process.args[0].endswith("PythonSlicer")
        pump_probe(widget)
        assert widget.ui.remoteStatusLabel.text.startswith("Connection failed: the server refused the token")
        assert widget.ui.testConnectionButton.enabled
        widget.ui.tokenLineEdit.text = TOKEN
        widget.ui.testConnectionButton.click()
        pump_probe(widget)
        # the tampered model is skipped by the server (and said in its log); the other two are served
        assert widget.ui.remoteStatusLabel.text.startswith("Connected to lowresseg 0.1.0: 2 model(s) (high-32to64, low")
        assert qt.QSettings().value("LowResSeg/ServerURL") == server.url  # remembered for next time
        assert not any(TOKEN in str(v) for v in qt.QSettings.store.values())  # the token is not in Slicer.ini
        token_path = qt.QSettings().value("LowResSeg/TokenFile")
        assert oct(os.stat(token_path).st_mode & 0o777) == "0o600" and open(token_path).read().strip() == TOKEN
        assert make_widget(module, node).ui.tokenLineEdit.text == TOKEN  # read back from the file next time
        widget.ui.segmentButton.click()
        pump(widget)
        (new,) = seg_nodes()
        labelmap = new.GetSegmentation().GetSegment(new.GetSegmentation().GetNthSegmentID(0)).labelmap
        local = segment(Volume.from_ras(node.array.astype(np.float32), IJK_TO_RAS), LocalEngine("low-16to64", repo))
        np.testing.assert_array_equal(labelmap, local.labels)
    finally:
        server.stop()
    assert not any(TOKEN in line for line in server.log)


def test_the_panel_opens_and_keeps_the_model_in_the_parameter_node(module, volume_node):
    """Slicer's parameterNodeWrapper refuses a plain QComboBox bound to a str (no Choice annotation):
    the model combo box is kept in step with the parameter node by the module itself."""
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64")
    assert widget._parameterNode.model == "low-16to64" and widget._parameterNode.inputVolume is node
    widget.ui.modelSelector.setCurrentIndex(widget.ui.modelSelector.findText("high-32to64"))
    assert widget._parameterNode.model == "high-32to64"
    again = make_widget(module, node)  # the module panel opened again on the same scene: the choice is kept
    assert again.ui.modelSelector.currentText == "high-32to64"


def test_the_old_ui_binding_fails_as_it_does_in_slicer(module, volume_node, tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "Resources", "UI", "LowResSeg.ui")) as f:
        ui = f.read()
    bound = ui.replace('<widget class="QComboBox" name="modelSelector">', '<widget class="QComboBox" '
                       'name="modelSelector">\n<property name="SlicerParameterName" stdset="0"><string>model</string>'
                       '</property>', 1)
    assert bound != ui
    (tmp_path / "Resources" / "UI").mkdir(parents=True)
    (tmp_path / "Resources" / "UI" / "LowResSeg.ui").write_text(bound)
    monkeypatch.setattr(module, "_bundle_root", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match="requires the Choice annotation"):
        make_widget(module, volume_node[0])


def test_the_panel_works_with_slicer_58s_connect_gui_that_returns_no_tag(module, volume_node, monkeypatch):
    """Slicer 5.8.1's connectGui returns None, so disconnectGui(None) does nothing: the panel must not rely on the
    tag (Close Scene, a new parameter node, the model kept in it)."""
    from slicer import parameterNodeWrapper

    monkeypatch.setattr(parameterNodeWrapper, "SLICER_VERSION", [5, 8])
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64")
    assert widget._parameterNodeGuiTag is None and widget._parameterNode.model == "low-16to64"
    slicer.mrmlScene.Clear(0)
    assert widget._parameterNode is not None and widget._parameterNode.inputVolume is None
    widget.ui.modelSelector.setCurrentIndex(widget.ui.modelSelector.findText("high-32to64"))
    assert widget._parameterNode.model == "high-32to64"
    widget.cleanup()


def test_closing_the_scene_forgets_the_runs(module, volume_node):
    node, _ = volume_node
    widget = make_widget(module, node, "low-16to64", "high-32to64")
    widget.ui.segmentButton.click()
    pump(widget)
    assert widget._nodes and widget.ui.resultsTable.rows == 2
    slicer.mrmlScene.Clear(0)  # File > Close Scene
    assert widget._nodes == {} and widget._segmentations == {} and widget._volumeNode is None
    assert widget.ui.resultsTable.rows == 0 and widget.ui.referenceSelector.items == []
    widget.ui.sideBySideButton.click()
    assert slicer.util.messages[-1] == ("error", "Segment first; then the runs can be shown side by side.")
    assert widget._parameterNode is not None and widget._parameterNode.inputVolume is None  # a new parameter node


def test_closing_the_scene_during_a_run_adds_nothing_to_the_new_scene(module, volume_node):
    node, _ = volume_node
    widget = make_widget(module, node)
    widget.ui.segmentButton.click()
    runs = widget._runs
    slicer.mrmlScene.Clear(0)
    assert runs.process.poll() is not None and not os.path.exists(runs.folder)
    pump(widget)
    assert seg_nodes() == [] and widget.ui.segmentButton.text == "Segment"


def test_a_failed_package_install_is_one_clear_message(module):
    """slicer.util.pip_install raises subprocess.CalledProcessError (pip's reason went to the console)."""
    slicer.util.pip_failure[0] = "ERROR: Could not find a version that satisfies the requirement onnxruntime"
    assert module.ensure_packages((("surely_not_installed_pkg", "onnxruntime"),), "Segmentation") is False
    kind, text = slicer.util.messages[-1]
    assert kind == "error" and text.startswith("Could not install onnxruntime: pip stopped with exit status 1 (its "
                                               "messages are in the Python console")
    assert ("pip_install", ["onnxruntime"]) in slicer.util.messages
    slicer.util.pip_failure[0] = None  # pip "succeeds" but the package is still not importable
    assert module.ensure_packages((("surely_not_installed_pkg", "onnxruntime"),), "Segmentation") is False
    assert slicer.util.messages[-1] == ("error", "onnxruntime was installed but cannot be imported yet: restart "
                                                 "Slicer and try again.")


def test_the_category_is_slicers_own_segmentation_category(module):
    calls = []
    real = module.translate
    module.translate = lambda context, text: calls.append((context, text)) or text
    try:
        parent = type("Parent", (), {})()
        module.LowResSeg(parent)
    finally:
        module.translate = real
    assert parent.categories == ["Segmentation"] and ("qSlicerAbstractCoreModule", "Segmentation") in calls


def test_a_token_left_in_the_settings_by_an_older_version_is_removed(module, volume_node):
    import qt

    qt.QSettings().setValue("LowResSeg/Token", "an-old-token-in-plain-text")
    make_widget(module, volume_node[0])
    assert not qt.QSettings().contains("LowResSeg/Token")


def test_the_self_test_fails_when_a_step_cannot_run(module, monkeypatch):
    """In testing mode confirmOkCancelDisplay returns False (True != QMessageBox.Ok): the self-test
    must fail where it cannot run a step, not return as if it passed."""
    slicer.reset(testing=True)
    assert slicer.util.confirmOkCancelDisplay("install?") is False  # as in Slicer
    test = module.LowResSegTest()
    with pytest.raises(AssertionError, match="DICOM module"):
        test.test_export_dicom_seg()  # the stand-in has no slicer.modules.dicom
    slicer.modules.dicom = object()
    monkeypatch.setattr(module, "_DICOM_PACKAGES", (("surely_not_installed_pkg", "highdicom"),))
    slicer.util.pip_failure[0] = "no network"
    try:
        with pytest.raises(AssertionError, match="could not install highdicom"):
            test.test_export_dicom_seg()
    finally:
        del slicer.modules.dicom


def test_a_package_is_looked_up_not_imported(module, tmp_path, monkeypatch):
    """Whether a package is there is found without importing it into Slicer's process."""
    (tmp_path / "lowresseg_heavy_pkg.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module.missing_packages((("lowresseg_heavy_pkg", "heavy"), ("surely_not_installed_pkg", "nope"))) == \
        ["nope"]
    assert "lowresseg_heavy_pkg" not in sys.modules


def test_the_self_test_runs_without_a_main_window(module, monkeypatch):
    """Slicer --no-main-window: slicer.app.layoutManager() is None; side by side is skipped with a note, and
    the panel says why when asked for it."""
    monkeypatch.delenv("LOWRESSEG_MODELS")
    slicer.reset(testing=True, mainWindow=False)
    assert slicer.app.layoutManager() is None
    test = module.LowResSegTest()
    test.setUp()
    test.test_compare_two_models()
    with pytest.raises(RuntimeError, match="needs Slicer's main window"):
        module.LowResSegLogic().showSideBySide(None, [])


def test_ctest_finds_the_self_test_as_slicer_runs_it(module):
    """ctest runs slicer.testing.runUnitTest(paths, "LowResSeg") (Base/Python/slicer/testing.py@v5.8.1 l. 14-28):
    unittest.TestLoader().loadTestsFromName on the module; it must find every step of the self-test."""
    import unittest

    suite = unittest.TestLoader().loadTestsFromName("LowResSeg")
    found = sorted(t.id() for group in suite for t in group)
    assert found == ["LowResSeg.LowResSegTest.test_compare_two_models", "LowResSeg.LowResSegTest.test_export_dicom_seg",
                     "LowResSeg.LowResSegTest.test_segment_blob"]


def test_the_self_test_runs_on_the_shipped_models(module, monkeypatch):
    """The module's own self-test (segment, compare side by side), its models run in the worker process."""
    monkeypatch.delenv("LOWRESSEG_MODELS")
    slicer.reset(testing=True)
    test = module.LowResSegTest()
    test.setUp()
    test.test_segment_blob()
    test.setUp()
    test.test_compare_two_models()


def test_export_also_stores_the_seg_in_the_pacs(module, tmp_path):
    """The export step sends the SEG to a real Orthanc (DICOMweb STOW-RS), into the volume's study."""
    import pydicom
    import qt
    from orthanc_server import PASSWORD, USER, Orthanc, orthanc_missing

    if orthanc_missing():
        pytest.skip(orthanc_missing())
    node, vol, files = dicom_loaded_node(tmp_path)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload(files)
        widget = segmented_widget(module, node)
        widget.ui.sendToPacsCheckBox.checked = True
        widget.ui.pacsUrlLineEdit.text = server.url
        widget.ui.pacsCredentialsLineEdit.text = "%s:wrong-password" % USER
        widget.ui.exportDicomSegButton.click()
        kind, text = slicer.util.messages[-1]
        assert kind == "error" and "storing it in the PACS failed" in text and "wrong-password" not in text
        assert len(DICOMUtils.imported) == 1  # the local export itself went through
        slicer.util.slot_errors.clear()

        widget.ui.pacsCredentialsLineEdit.text = "%s:%s" % (USER, PASSWORD)
        widget.ui.exportDicomSegButton.click()
        assert "stored in the PACS, study %s" % study in widget.ui.statusLabel.text, slicer.util.messages[-1]
        segs = server.instances_by_modality().get("SEG", [])
        assert len(segs) == 1 and segs[0]["StudyInstanceUID"] == study
        assert not any(PASSWORD in str(v) for v in qt.QSettings.store.values())  # only the file's path
        path = qt.QSettings().value("LowResSeg/PacsCredentialsFile")
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        again = make_widget(module, node)
        assert (again.ui.pacsUrlLineEdit.text, again.ui.pacsCredentialsLineEdit.text) == (server.url,
                                                                                          "%s:%s" % (USER, PASSWORD))
    finally:
        server.stop()


def test_auto_picks_the_model_in_the_worker_and_says_why(module, volume_node):
    """The Fastest / Balanced / Best quality entries: the worker times each model on this engine and runs
    the one that fits; the status line says which and why."""
    node, _ = volume_node
    widget = make_widget(module, node, "Auto: fastest")
    assert widget.ui.modelSelector.items[:3] == ["Auto: fastest", "Auto: balanced", "Auto: best quality"]
    assert "picks the fastest model" in widget.ui.modelCardLabel.text
    widget.ui.segmentButton.click()
    pump(widget)
    (new,) = seg_nodes()
    chosen = new.GetName().split(" \u00b7 ")[1]
    assert chosen in ("low-16to64", "high-32to64")  # the tampered model cannot load, so it is not offered
    assert "Auto chose %s: the fastest on this engine" % chosen in widget.ui.statusLabel.text
    assert widget.ui.resultsTable.cells[(0, 0)] == chosen
