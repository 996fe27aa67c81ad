"""The Slicer stand-in (Testing/Slicer) raises where real Slicer raises: its rules are written from Slicer's
source (v5.8.1; see Testing/Slicer/README.md), so a module that passes against it is not merely name-compatible."""

import os
import sys
import typing

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
pytest.importorskip("vtk")
sys.path.insert(0, os.path.join(HERE, "Slicer"))

import slicer  # noqa: E402  (the stand-in)
from DICOMLib import DICOMUtils  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402


@pytest.fixture(autouse=True)
def fresh():
    slicer.reset()


def ui_with(*widgets):
    """A .ui-like namespace of widget doubles: (name, class, SlicerParameterName)."""
    ns = type("UI", (), {})()
    for name, cls, param in widgets:
        double = slicer.util._DOUBLES.get(cls, slicer.util._Widget)
        setattr(ns, name, double(name, cls, {"SlicerParameterName": param} if param else {}))
    return ns


def wrap(**annotations):
    cls = type("Params", (), {"__annotations__": annotations})
    return parameterNodeWrapper(cls)(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))


def test_a_plain_combo_box_cannot_hold_a_str():
    with pytest.raises(RuntimeError, match="ComboBoxToStringableConnector requires the Choice annotation"):
        wrap(model=str).connectGui(ui_with(("modelSelector", "QComboBox", "model")))


def test_a_choice_refills_the_combo_box_and_refuses_other_values():
    params = wrap(model=typing.Annotated[str, Choice(["a", "b"])])
    ui = ui_with(("modelSelector", "QComboBox", "model"))
    ui.modelSelector.addItem("from the module")
    params.connectGui(ui)
    assert ui.modelSelector.items == ["a", "b"] and params.model == "a"
    ui.modelSelector.setCurrentIndex(1)
    assert params.model == "b"
    with pytest.raises(ValueError, match="Unable to find value c in choices"):
        params.model = "c"


def test_node_selectors_take_node_types_only():
    params = wrap(inputVolume=slicer.vtkMRMLScalarVolumeNode)
    ui = ui_with(("inputSelector", "qMRMLNodeComboBox", "inputVolume"))
    params.connectGui(ui)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    ui.inputSelector.setCurrentNode(node)
    assert params.inputVolume is node
    with pytest.raises(RuntimeError, match="Unable to create GUI connector from datatype"):
        wrap(name=str).connectGui(ui_with(("inputSelector", "qMRMLNodeComboBox", "name")))


def test_widget_and_type_pairs_follow_slicers_connectors():
    wrap(url=str).connectGui(ui_with(("urlEdit", "QLineEdit", "url")))
    wrap(on=bool).connectGui(ui_with(("box", "QCheckBox", "on")))
    wrap(n=typing.Annotated[int, WithinRange(0, 9)]).connectGui(ui_with(("s", "QSlider", "n")))
    with pytest.raises(RuntimeError, match="QSlider where the int type is unbounded"):
        wrap(n=int).connectGui(ui_with(("s", "QSlider", "n")))
    with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
        wrap(n=int).connectGui(ui_with(("urlEdit", "QLineEdit", "n")))
    with pytest.raises(ValueError, match="Cannot find a param with the given name: nope"):
        wrap(url=str).connectGui(ui_with(("urlEdit", "QLineEdit", "nope")))
    wrap(url=str).connectGui(ui_with(("label", "QLabel", None)))  # no SlicerParameterName: not connected


def test_the_layout_node_keeps_a_registered_description():
    layout = slicer.app.layoutManager().GetLayoutNode()
    assert layout.SetLayoutDescription(5, "<layout/>") is False  # Set refuses an unregistered id
    assert layout.AddLayoutDescription(5, "<layout>one</layout>") is True
    assert layout.AddLayoutDescription(5, "<layout>two</layout>") is False  # Add refuses a registered one
    assert layout.GetLayoutDescription(5) == "<layout>one</layout>"
    assert layout.SetLayoutDescription(5, "<layout>two</layout>") is True
    assert layout.GetLayoutDescription(5) == "<layout>two</layout>"


def test_closing_the_scene_fires_its_events_and_keeps_the_views():
    seen = []
    scene = slicer.mrmlScene
    scene.AddObserver(scene.StartCloseEvent, lambda caller, event: seen.append(("start", len(scene.nodes))))
    scene.AddObserver(scene.EndCloseEvent, lambda caller, event: seen.append(("end", len(scene.nodes))))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "s")
    node.CreateDefaultDisplayNodes()
    scene.Clear(0)
    assert seen == [("start", 5), ("end", 4)]  # the four standard views are singletons
    assert node.GetDisplayNode() is None  # a node that left the scene resolves no display node


def test_testing_mode_dialogs_and_import_dicom_as_in_slicer(tmp_path):
    assert slicer.util.confirmOkCancelDisplay("?") is True  # the user's answer
    slicer.reset(testing=True)
    assert slicer.util.confirmOkCancelDisplay("?") is False  # True == QMessageBox.Ok is False
    slicer.dicomDatabase.isOpen = False
    assert DICOMUtils.importDicom(str(tmp_path)) is False  # errors are caught, as in Slicer
    assert not hasattr(slicer, "packaging")


# --------------------------------------------------------------------------- issue 29: where Slicer was kinder here


def test_pip_install_fails_with_calledprocesserror_as_slicer_does(capsys):
    """util.py@v5.8.1 l. 3830-3862 (and slicer/packaging.py@v5.12.3): pip's reason goes to the console; the
    exception is CalledProcessError, whose text is only the command and its exit status."""
    import subprocess

    slicer.util.pip_failure[0] = "ERROR: No matching distribution found for onnxruntime"
    with pytest.raises(subprocess.CalledProcessError) as raised:
        slicer.util.pip_install(["onnxruntime"])
    assert raised.value.returncode == 1 and "No matching distribution" not in str(raised.value)
    assert "No matching distribution" in capsys.readouterr().out
    assert not isinstance(raised.value, RuntimeError)  # an `except RuntimeError` does not catch it


def test_without_a_main_window_there_is_no_layout_manager():
    """qSlicerMainWindow.cxx@v5.8.1 l. 290 is the only caller of setLayoutManager."""
    assert slicer.app.layoutManager() is not None
    slicer.reset(testing=True, mainWindow=False)
    assert slicer.app.layoutManager() is None


def test_node_added_event_carries_the_node_only_to_callbacks_that_ask_for_it():
    """vtkMRMLScene::NodeAdded (vtkMRMLScene.cxx@v5.8.1 l. 1473-1475) passes the node as call data; VTK's Python
    observers get it only with a CallDataType (vtk.calldata_type)."""
    import vtk

    seen = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def with_data(caller, event, node):
        seen.append(("with", node.GetName()))

    slicer.mrmlScene.AddObserver(slicer.mrmlScene.NodeAddedEvent, with_data)
    slicer.mrmlScene.AddObserver(slicer.mrmlScene.NodeAddedEvent, lambda caller, event: seen.append(("without",)))
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    assert seen == [("with", "v"), ("without",)]


def test_new_views_have_their_size_only_after_the_event_loop_ran():
    """A new slice node is 256 x 256 (vtkMRMLSliceNode.cxx@v5.8.1 l. 69-71) until its view is laid out and
    resized (qMRMLSliceWidget.cxx l. 71-72); a single-shot timer runs from the event loop, after the layout."""
    import qt

    layout = slicer.app.layoutManager().GetLayoutNode()
    layout.AddLayoutDescription(7, '<layout type="horizontal"><item><view class="vtkMRMLSliceNode" '
                                   'singletontag="A"/></item><item><view class="vtkMRMLSliceNode" '
                                   'singletontag="B"/></item></layout>')
    layout.SetViewArrangement(7)
    view = slicer.app.layoutManager().sliceWidget("A")
    assert view.mrmlSliceNode().GetDimensions()[:2] == (256, 256)
    ran = []
    qt.QTimer.singleShot(0, lambda: ran.append(view.mrmlSliceNode().GetDimensions()[:2]))
    view.sliceLogic().FitSliceToAll()
    assert ran == [] and view.sliceLogic().fits == [(256, 256)]
    slicer.app.processEvents()
    assert ran == [(600, 800)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_the_pythonslicer_launcher_starts_the_interpreter_as_its_child_and_forwards_no_signal(tmp_path):
    """CTKAppLauncher (Base/ctkAppLauncher.cpp@v0.1.31 l. 667-723): QProcess::start, no signal handling, the
    child's exit code. Killing the launcher leaves the interpreter running."""
    import signal
    import subprocess

    from launcher import alive, descendants, install_launcher, wait_for

    launcher = install_launcher(str(tmp_path / "bin"))
    assert subprocess.run([launcher, "-c", "import sys; sys.exit(7)"]).returncode == 7
    out = subprocess.run([launcher, "-c", "import os; print(os.getppid())"], stdout=subprocess.PIPE,
                         universal_newlines=True)
    assert out.returncode == 0 and int(out.stdout) != os.getpid()  # its parent is the launcher, not us
    proc = subprocess.Popen([launcher, "-c", "import time; time.sleep(60)"])
    try:
        interpreter = wait_for(lambda: descendants(proc.pid))
        assert len(interpreter) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM  # the launcher died of it ...
        assert alive(interpreter[0])  # ... and the interpreter was not told
    finally:
        for pid in descendants(proc.pid) + (interpreter or []):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
