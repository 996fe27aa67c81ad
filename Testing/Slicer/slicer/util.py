"""Stand-in for ``slicer.util``: arrays in and out of nodes, the .ui loader, message boxes."""

import contextlib
import xml.etree.ElementTree as ET

import numpy as np

messages = []  # (kind, text) of every message box the module showed
confirm_answer = [True]  # what the user answers to confirmOkCancelDisplay (outside testing mode)
pip_failure = [None]  # a message: the next pip_install fails with it, as a failed `pip install` does
slot_errors = []  # exceptions raised by slots: PythonQt prints them and carries on


def arrayFromVolume(volumeNode):
    return volumeNode.array


def addVolumeFromArray(array, ijkToRAS=None, name="volume"):
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.array = np.asarray(array)
    if ijkToRAS is not None:
        node.ijk_to_ras = np.asarray(ijkToRAS, dtype=float)
    return node


def updateSegmentBinaryLabelmapFromArray(narray, segmentationNode, segmentId, referenceVolumeNode=None):
    ref = referenceVolumeNode or segmentationNode.reference
    assert narray.shape == ref.array.shape, (narray.shape, ref.array.shape)  # Slicer needs the reference grid
    segmentationNode.GetSegmentation().GetSegment(segmentId).labelmap = np.array(narray, dtype=np.uint8)


def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode=None):
    return segmentationNode.GetSegmentation().GetSegment(segmentId).labelmap


def getNodesByClass(className, scene=None):
    import slicer

    return list((scene or slicer.mrmlScene).GetNodesByClass(className))


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
    """util.py:2992-3004 and _messageDisplay (3035-3063): in testing mode no box is shown and the
    testing value True is compared with qt.QMessageBox.Ok (1024), so it returns False."""
    import qt
    import slicer

    messages.append(("confirm", text))
    if slicer.app.testingEnabled():
        return True == qt.QMessageBox.Ok  # noqa: E712  (exactly what Slicer computes)
    return confirm_answer[0]


def errorDisplay(text, windowTitle=None, parent=None, **kwargs):
    messages.append(("error", text))


def pip_install(requirements):
    """util.py@v5.8.1 l. 3899-3942: ``PythonSlicer -m pip install ...`` (``_executePythonModule`` l. 3865-3896);
    pip's output goes to the console and the log (``logProcessOutput`` l. 3830-3862), and a failed install
    raises ``subprocess.CalledProcessError`` (l. 3862), whose text is only the command and its exit status.
    5.12.3 delegates to ``slicer/packaging.py`` (util.py@v5.12.3 l. 4326-4335), which raises the same
    (packaging.py l. 528-592; with the progress dialog, ``CalledProcessError(code, "pip install")``)."""
    import subprocess

    if not isinstance(requirements, (str, list)):
        raise ValueError("pip_install requirement input must be string or list")
    messages.append(("pip_install", requirements))
    if pip_failure[0]:
        print(pip_failure[0])  # what pip said: in the console, not in the exception
        args = ["PythonSlicer", "-m", "pip", "install"] + (
            requirements.split() if isinstance(requirements, str) else list(requirements))
        raise subprocess.CalledProcessError(1, args)


@contextlib.contextmanager
def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    """util.py:3279-3320: shows the error (not in testing mode) and raises it again."""
    import slicer

    try:
        yield
    except Exception as exc:
        if show and not slicer.app.testingEnabled():
            messages.append(("error", "%s\n\n%s" % (message, exc) if message is not None else str(exc)))
        raise


class VTKObservationMixin(object):
    """util.py:2790-2860: observers are added on the object itself (obj.AddObserver) and removed by tag."""

    def __init__(self):
        self.observations = []

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        self.observations.append((obj, event, method, obj.AddObserver(event, method, priority)))

    def removeObservers(self, method=None):
        for obj, event, m, tag in list(self.observations):
            if method is None or m == method:
                obj.RemoveObserver(tag)
                self.observations.remove((obj, event, m, tag))


# --------------------------------------------------------------------------- the .ui


class _Widget(object):
    """A plain double of a Qt widget: properties as attributes, signals as recorded slots."""

    def __init__(self, name, cls, properties=None):
        self.objectName, self.className = name, cls
        self.text, self.toolTip, self.enabled, self.value, self.checked = "", "", True, 0, False
        self.placeholderText = ""
        self._slots, self._properties = {}, dict(properties or {})

    def property(self, name):
        """A dynamic property from the .ui (``stdset="0"``, e.g. SlicerParameterName), or None as in Qt."""
        return self._properties.get(name)

    def connect(self, signal, slot):
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def disconnect(self, signal, slot):
        slots = self._slots.get(signal.split("(")[0], [])
        if slot in slots:
            slots.remove(slot)

    def emit(self, signal, *args):
        import inspect
        import traceback

        for slot in list(self._slots.get(signal, [])):
            params = [p for p in inspect.signature(slot).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
            varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(slot).parameters.values())
            try:
                slot(*(args if varargs else args[:len(params)]))  # PythonQt drops arguments a slot does not take
            except Exception as exc:  # PythonQt prints a slot's exception and returns to the event loop
                traceback.print_exc()
                slot_errors.append(exc)

    def click(self):
        self.emit("clicked", False)

    def setMRMLScene(self, scene):
        self.scene = scene

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)


class _ComboBox(_Widget):
    def __init__(self, name, cls, properties=None):
        _Widget.__init__(self, name, cls, properties)
        self.items, self.index = [], -1

    def addItem(self, text):
        self.items.append(text)
        if self.index < 0:
            self.setCurrentIndex(0)

    def clear(self):
        had = bool(self.items)
        self.items, self.index = [], -1
        if had:
            self.emit("currentIndexChanged", -1)  # as QComboBox::clear does

    def findText(self, text):
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index):
        if index != self.index:
            self.index = index
            self.emit("currentIndexChanged", index)

    @property
    def currentIndex(self):
        return self.index

    @currentIndex.setter
    def currentIndex(self, index):
        self.setCurrentIndex(index)

    @property
    def currentText(self):
        return self.items[self.index] if 0 <= self.index < len(self.items) else ""


class _NodeComboBox(_Widget):
    def __init__(self, name, cls, properties=None):
        _Widget.__init__(self, name, cls, properties)
        self.node = None

    def currentNode(self):
        return self.node

    def setCurrentNode(self, node):
        if node is not self.node:
            self.node = node
            self.emit("currentNodeChanged", node)


class _ListWidget(_Widget):
    def __init__(self, name, cls, properties=None):
        _Widget.__init__(self, name, cls, properties)
        self.items = []

    def addItem(self, item):
        self.items.append(item)

    @property
    def count(self):
        return len(self.items)

    def item(self, row):
        return self.items[row]


class _TableWidget(_Widget):
    def __init__(self, name, cls, properties=None):
        _Widget.__init__(self, name, cls, properties)
        self.cells, self.rows, self.columns, self.headers, self.selected = {}, 0, 0, [], -1

    def setColumnCount(self, n):
        self.columns = n

    def setHorizontalHeaderLabels(self, labels):
        self.headers = list(labels)

    def setRowCount(self, n):
        self.rows = n
        self.cells = {k: v for k, v in self.cells.items() if k[0] < n}

    def setItem(self, row, column, item):
        self.cells[(row, column)] = item.text()

    def currentRow(self):
        return self.selected


_DOUBLES = {"QComboBox": _ComboBox, "qMRMLNodeComboBox": _NodeComboBox, "QListWidget": _ListWidget,
            "QTableWidget": _TableWidget}


class _UI(_Widget):
    def __init__(self, path):
        root = ET.parse(path).getroot().find("widget")
        _Widget.__init__(self, root.get("name"), root.get("class"))
        self.children = {w.get("name"): _DOUBLES.get(w.get("class"), _Widget)(w.get("name"), w.get("class"),
                                                                               _dynamic_properties(w))
                         for w in root.iter("widget") if w is not root}


def _dynamic_properties(element):
    return {p.get("name"): p.findtext("string") for p in element.findall("property") if p.get("stdset") == "0"}


def loadUI(path):
    return _UI(path)


def childWidgetVariables(widget):
    class Namespace(object):
        pass

    ns = Namespace()
    for name, child in widget.children.items():
        setattr(ns, name, child)
    return ns
