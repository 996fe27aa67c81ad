"""Stand-in for ``slicer.util``: arrays in and out of nodes, the .ui loader, message boxes."""

import contextlib
import xml.etree.ElementTree as ET

import numpy as np

messages = []  # (kind, text) of every message box the module showed
confirm_answer = [True]  # what the next confirmOkCancelDisplay returns


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


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
    messages.append(("confirm", text))
    return confirm_answer[0]


def errorDisplay(text, windowTitle=None, parent=None, **kwargs):
    messages.append(("error", text))


def pip_install(requirements):
    messages.append(("pip_install", requirements))


@contextlib.contextmanager
def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    try:
        yield
    except Exception as exc:
        messages.append(("error", "%s %s" % (message, exc)))


class VTKObservationMixin(object):
    def __init__(self):
        self.observations = []

    def addObserver(self, obj, event, method):
        self.observations.append((obj, event, method))

    def removeObservers(self, method=None):
        self.observations = []


# --------------------------------------------------------------------------- the .ui


class _Widget(object):
    """A plain double of a Qt widget: properties as attributes, signals as recorded slots."""

    def __init__(self, name, cls):
        self.objectName, self.className = name, cls
        self.text, self.toolTip, self.enabled, self.value, self.checked = "", "", True, 0, False
        self._slots = {}

    def connect(self, signal, slot):
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def emit(self, signal, *args):
        import inspect

        for slot in self._slots.get(signal, []):
            params = [p for p in inspect.signature(slot).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
            varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(slot).parameters.values())
            slot(*(args if varargs else args[:len(params)]))  # PythonQt drops arguments a slot does not take

    def click(self):
        self.emit("clicked", False)

    def setMRMLScene(self, scene):
        self.scene = scene


class _ComboBox(_Widget):
    def __init__(self, name, cls):
        _Widget.__init__(self, name, cls)
        self.items, self.index = [], -1

    def addItem(self, text):
        self.items.append(text)
        if self.index < 0:
            self.setCurrentIndex(0)

    def clear(self):
        self.items, self.index = [], -1

    def findText(self, text):
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index):
        self.index = index
        self.emit("currentIndexChanged", index)

    @property
    def currentText(self):
        return self.items[self.index] if 0 <= self.index < len(self.items) else ""


class _NodeComboBox(_Widget):
    def __init__(self, name, cls):
        _Widget.__init__(self, name, cls)
        self.node = None

    def currentNode(self):
        return self.node

    def setCurrentNode(self, node):
        self.node = node


class _ListWidget(_Widget):
    def __init__(self, name, cls):
        _Widget.__init__(self, name, cls)
        self.items = []

    def addItem(self, item):
        self.items.append(item)

    @property
    def count(self):
        return len(self.items)

    def item(self, row):
        return self.items[row]


class _TableWidget(_Widget):
    def __init__(self, name, cls):
        _Widget.__init__(self, name, cls)
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
        self.children = {w.get("name"): _DOUBLES.get(w.get("class"), _Widget)(w.get("name"), w.get("class"))
                         for w in root.iter("widget") if w is not root}


def loadUI(path):
    return _UI(path)


def childWidgetVariables(widget):
    class Namespace(object):
        pass

    ns = Namespace()
    for name, child in widget.children.items():
        setattr(ns, name, child)
    return ns
