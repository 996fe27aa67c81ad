"""Stand-in for the ``slicer`` package: scene, nodes, subject hierarchy, layout, DICOM database.

Each behaviour is written from Slicer's source (tag v5.8.1) and says where; see ../README.md.
``slicer.packaging`` is not modelled: Slicer's ``slicer/__init__.py`` never imports it (5.8.1 to 5.12.3),
5.8.1 and 5.10.0 have no such module, and in 5.12.3 ``slicer.util.pip_install`` imports it itself.
"""

import itertools
import os
import re
import shutil
import tempfile

import numpy as np
import vtk  # the real wheel: vtkMatrix4x4 as Slicer has it

from slicer import util  # noqa: F401  (slicer.util.X, as in Slicer)

_ids = itertools.count(1)


class _Observable(object):
    """VTK observers: ``AddObserver(event, callback)`` returns a tag; ``callback(caller, event)``."""

    def __init__(self):
        self._observers = {}

    def AddObserver(self, event, callback, priority=0.0):
        tag = next(_ids)
        self._observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag):
        self._observers.pop(tag, None)

    def InvokeEvent(self, event, calldata=None):
        """VTK's Python observers get the call data only when the callback says its type (the
        ``CallDataType`` attribute that ``vtk.calldata_type`` sets: vtkmodules/util/misc.py)."""
        for ev, callback in list(self._observers.values()):
            if ev == event:
                if getattr(callback, "CallDataType", None) is not None:
                    callback(self, event, calldata)
                else:
                    callback(self, event)


class vtkMRMLNode(_Observable):
    className = "vtkMRMLNode"
    singleton = False

    def __init__(self, name=""):
        _Observable.__init__(self)
        self._name, self._id, self._attributes = name, "%s%d" % (self.className, next(_ids)), {}
        self.scene = None

    def GetName(self):
        return self._name

    def GetID(self):
        return self._id

    def GetScene(self):
        return self.scene

    def GetAttribute(self, key):
        return self._attributes.get(key)

    def SetAttribute(self, key, value):
        self._attributes[key] = value

    def RemoveAttribute(self, key):
        self._attributes.pop(key, None)

    def IsA(self, className):
        return any(getattr(c, "className", None) == className for c in type(self).__mro__)


Node = vtkMRMLNode


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    className = "vtkMRMLScriptedModuleNode"


class vtkMRMLScalarVolumeNode(vtkMRMLNode):
    className = "vtkMRMLScalarVolumeNode"

    def __init__(self, name=""):
        vtkMRMLNode.__init__(self, name)
        self.array = None
        self.ijk_to_ras = np.eye(4)

    def GetIJKToRASMatrix(self, matrix):
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(self.ijk_to_ras[r, c]))

    def SetSpacing(self, *spacing):
        directions = self.ijk_to_ras[:3, :3] / np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)
        self.ijk_to_ras[:3, :3] = directions * np.array(spacing, dtype=float)


class _AbstractViewNode(vtkMRMLNode):
    """View nodes are scene singletons whose tag is their layout name (vtkMRMLAbstractViewNode)."""

    className = "vtkMRMLAbstractViewNode"
    singleton = True

    def __init__(self, layoutName):
        vtkMRMLNode.__init__(self, layoutName)
        self._id = "%s%s" % (self.className, layoutName)
        self.layoutName = layoutName

    def GetLayoutName(self):
        return self.layoutName

    def GetSingletonTag(self):
        return self.layoutName


class vtkMRMLSliceNode(_AbstractViewNode):
    """Dimensions start at 256 x 256 (vtkMRMLSliceNode.cxx@v5.8.1 l. 69-71) and follow the view's size only
    once Qt has laid the view out (qMRMLSliceWidget.cxx l. 71-72: ``resized`` -> ``ResizeSliceNode``)."""

    className = "vtkMRMLSliceNode"

    def __init__(self, layoutName):
        _AbstractViewNode.__init__(self, layoutName)
        self.dimensions = (256, 256, 1)

    def GetDimensions(self):
        return self.dimensions


class vtkMRMLViewNode(_AbstractViewNode):
    className = "vtkMRMLViewNode"


class Segment(object):
    def __init__(self, name, color):
        self.name, self.color, self.tags, self.labelmap = name, tuple(color), {}, None

    def SetTag(self, key, value):
        self.tags[key] = value

    @staticmethod
    def GetTerminologyEntryTagName():
        return "TerminologyEntry"


class Segmentation(object):
    def __init__(self):
        self.segments = {}

    def AddEmptySegment(self, segmentId, name, color):
        segmentId = segmentId or "Segment_%d" % (len(self.segments) + 1)
        self.segments[segmentId] = Segment(name, color)
        return segmentId

    def GetSegment(self, segmentId):
        return self.segments[segmentId]

    def GetNthSegmentID(self, n):
        return list(self.segments)[n]


class DisplayNode(object):
    """vtkMRMLDisplayNode's view list: shown in every view while it is empty (IsDisplayableInView)."""

    def __init__(self):
        self.viewNodeIDs = []

    def SetViewNodeIDs(self, viewNodeIDs):
        assert isinstance(viewNodeIDs, (list, tuple)) and all(isinstance(v, str) for v in viewNodeIDs)
        self.viewNodeIDs = list(viewNodeIDs)

    def GetViewNodeIDs(self):
        return tuple(self.viewNodeIDs)

    def GetNumberOfViewNodeIDs(self):
        return len(self.viewNodeIDs)

    def RemoveAllViewNodeIDs(self):
        self.viewNodeIDs = []

    def IsDisplayableInView(self, viewNodeID):
        return not self.viewNodeIDs or viewNodeID in self.viewNodeIDs


class vtkMRMLSegmentationNode(vtkMRMLNode):
    className = "vtkMRMLSegmentationNode"

    def __init__(self, name=""):
        vtkMRMLNode.__init__(self, name)
        self.segmentation, self.display, self.reference = Segmentation(), None, None

    def CreateDefaultDisplayNodes(self):
        self.display = DisplayNode()

    def GetDisplayNode(self):
        # display nodes are node references, resolved through the scene: none once the node left it
        return self.display if self.scene is not None else None

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode):
        self.reference = volumeNode

    def GetSegmentation(self):
        return self.segmentation


class vtkMRMLSubjectHierarchyNode(object):
    """Items are ints; 0 is 'none', as in Slicer."""

    _instance = None

    def __init__(self):
        self.items, self.parents = {}, {}

    @classmethod
    def GetSubjectHierarchyNode(cls, scene):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def GetItemByDataNode(self, node):
        return self.items.setdefault(node.GetID(), len(self.items) + 100)

    def GetItemParent(self, item):
        return self.parents.get(item, 0)

    def SetItemParent(self, item, parent):
        self.parents[item] = parent


_STATE_EVENT, _START_EVENT, _END_EVENT, _CLOSE_STATE = 0x2000, 0x0100, 0x0200, 0x0004  # vtkMRMLScene.h


class Scene(_Observable):
    """vtkMRMLScene: Clear(0) keeps singletons (view nodes) and fires StartCloseEvent, then EndCloseEvent."""

    StartCloseEvent = _STATE_EVENT | _START_EVENT | _CLOSE_STATE
    EndCloseEvent = _STATE_EVENT | _END_EVENT | _CLOSE_STATE
    NodeAddedEvent = 0x2001  # vtkMRMLScene.h@v5.8.1 l. 671-674
    _classes = {c.className: c for c in (vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLScriptedModuleNode,
                                         vtkMRMLSliceNode, vtkMRMLViewNode)}

    def __init__(self):
        _Observable.__init__(self)
        self.nodes = []

    def AddNode(self, node):
        """vtkMRMLScene.cxx@v5.8.1 l. 1338, 1473-1475: NodeAddedEvent with the node as call data."""
        node.scene = self
        self.nodes.append(node)
        self.InvokeEvent(self.NodeAddedEvent, node)
        return node

    def AddNewNodeByClass(self, className, name=""):
        return self.AddNode(self._classes[className](name or className))

    def RemoveNode(self, node):
        self.nodes.remove(node)
        node.scene = None

    def GetNodeByID(self, nodeId):
        return next((n for n in self.nodes if n.GetID() == nodeId), None)

    def GenerateUniqueName(self, base):
        names = {n.GetName() for n in self.nodes}
        if base not in names:
            return base
        return next("%s_%d" % (base, i) for i in itertools.count(1) if "%s_%d" % (base, i) not in names)

    def GetNodesByClass(self, className):
        return [n for n in self.nodes if isinstance(n, self._classes.get(className, ()) or ())]

    def GetNumberOfNodesByClass(self, className):
        return len(self.GetNodesByClass(className))

    def GetFirstNodeByClass(self, className):
        found = self.GetNodesByClass(className)
        return found[0] if found else None

    def Clear(self, removeSingletons=0):
        self.InvokeEvent(self.StartCloseEvent)
        for node in list(self.nodes):
            if removeSingletons or not node.singleton:
                self.RemoveNode(node)
        vtkMRMLSubjectHierarchyNode._instance = None
        self.InvokeEvent(self.EndCloseEvent)


class LayoutNode(object):
    """vtkMRMLLayoutNode.cxx:207-268: Add refuses a registered id (keeps the old XML), Set refuses a new one."""

    def __init__(self):
        self.descriptions, self.arrangement = {}, None

    def IsLayoutDescription(self, layoutId):
        return layoutId in self.descriptions

    def AddLayoutDescription(self, layoutId, xml):
        if self.IsLayoutDescription(layoutId):
            return False
        self.descriptions[layoutId] = xml
        return True

    def SetLayoutDescription(self, layoutId, xml):
        if not self.IsLayoutDescription(layoutId):
            return False
        self.descriptions[layoutId] = xml
        if layoutId == self.arrangement:
            self.SetViewArrangement(layoutId)  # the layout manager rebuilds the shown layout
        return True

    def GetLayoutDescription(self, layoutId):
        return self.descriptions.get(layoutId, "")

    def SetViewArrangement(self, layoutId):
        assert layoutId in self.descriptions, "unregistered layout %r" % (layoutId,)
        self.arrangement = layoutId
        app.layoutManager().arrange(self.descriptions[layoutId])


class SliceCompositeNode(object):
    def __init__(self):
        self.background, self.linked = None, False

    def SetBackgroundVolumeID(self, nodeId):
        self.background = nodeId

    def SetLinkedControl(self, linked):
        self.linked = bool(linked)


class SliceLogic(object):
    """FitSliceToAll fits to the slice node's dimensions as they are now (vtkMRMLSliceLogic.cxx@v5.8.1
    l. 1814-1841): ``fits`` records them, one entry per call."""

    def __init__(self, sliceNode):
        self.sliceNode, self.fits = sliceNode, []

    def FitSliceToAll(self, *args):
        self.fits.append(tuple(self.sliceNode.GetDimensions()[:2]))


class SliceWidget(object):
    def __init__(self, sliceNode):
        self.name, self.sliceNode = sliceNode.GetLayoutName(), sliceNode
        self.composite, self.logic = SliceCompositeNode(), SliceLogic(sliceNode)

    def mrmlSliceCompositeNode(self):
        return self.composite

    def mrmlSliceNode(self):
        return self.sliceNode

    def sliceLogic(self):
        return self.logic


class LayoutManager(object):
    """qSlicerLayoutManager: showing a layout makes (or reuses) the singleton view node of each of its views
    (vtkMRMLLayoutLogic::CreateMissingViews, vtkMRMLLayoutLogic.cxx@v5.8.1 l. 1975-2006: AddNode, so the scene
    says NodeAddedEvent). The views get their size only when Qt's event loop lays them out
    (``App.processEvents``): until then their slice nodes keep their old dimensions."""

    SIZE = (1200, 800)  # the view area of the main window

    def __init__(self):
        self.layoutNode, self.widgets, self.shown, self.unsized = LayoutNode(), {}, [], []

    def layoutLogic(self):
        return self

    def GetLayoutNode(self):
        return self.layoutNode

    def arrange(self, xml):
        self.shown = []
        for cls, tag in re.findall(r'<view class="(vtkMRML\w+Node)" singletontag="([^"]+)"', xml):
            node = next((n for n in mrmlScene.GetNodesByClass(cls) if n.GetLayoutName() == tag), None)
            if node is None:
                node = mrmlScene.AddNode(Scene._classes[cls](tag))
            self.shown.append(tag)
            if cls == "vtkMRMLSliceNode" and (tag not in self.widgets or self.widgets[tag].sliceNode is not node):
                self.widgets[tag] = SliceWidget(node)
        self.unsized = [t for t in self.shown if t in self.widgets]  # a new arrangement: every view resized

    def lay_out(self):
        """What Qt's event loop does to the shown views: each gets its share of the view area."""
        if not self.unsized:
            return
        rows = [self.unsized[i:i + 3] for i in range(0, len(self.unsized), 3)]
        for row in rows:
            for tag in row:
                self.widgets[tag].sliceNode.dimensions = (self.SIZE[0] // len(row), self.SIZE[1] // len(rows), 1)
        self.unsized = []

    def sliceWidget(self, name):
        return self.widgets.get(name) if name in self.shown else None  # None: no such view in this layout

    def sliceViewNames(self):
        return [n for n in self.shown if n in self.widgets]


class App(object):
    """``layoutManager()`` is None without a main window (``--no-main-window``): only qSlicerMainWindow sets it
    (qSlicerMainWindow.cxx@v5.8.1 l. 290, qSlicerApplication.cxx l. 676-698; qSlicerApplicationHelper.txx
    l. 164-165 makes no main window for --no-main-window)."""

    def __init__(self, testing=False, mainWindow=True):
        self._layout = LayoutManager() if mainWindow else None
        self.testing = testing

    def layoutManager(self):
        return self._layout

    def processEvents(self):
        """Qt's event loop, once: posted events (layouts, so view sizes) first, then due timers."""
        import qt

        if self._layout is not None:
            self._layout.lay_out()
        qt.QTimer.run_due()

    def testingEnabled(self):
        return self.testing


class DicomDatabase(object):
    """ctkDICOMDatabase: files indexed by SOP instance UID; ``databaseDirectory`` holds copied files."""

    def __init__(self):
        self.files, self.isOpen = {}, True
        self.databaseDirectory = tempfile.mkdtemp(prefix="slicer-standin-dicomdb-")

    def fileForInstance(self, uid):
        return self.files.get(uid, "")

    def index(self, folder, copyFiles):
        """ctkDICOMIndexer.addDirectory: every readable DICOM file under ``folder``; copied when asked."""
        import pydicom

        if not self.isOpen:
            raise RuntimeError("the DICOM database is not open")
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                try:
                    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                except Exception:
                    continue
                if copyFiles:
                    target = os.path.join(self.databaseDirectory, "dicom", uid)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copyfile(path, target)
                    path = target
                self.files[uid] = path


def _standard_views():
    """The views of Slicer's default scene (singletons: they survive Clear(0))."""
    for cls, tag in ((vtkMRMLSliceNode, "Red"), (vtkMRMLSliceNode, "Yellow"), (vtkMRMLSliceNode, "Green"),
                     (vtkMRMLViewNode, "1")):
        mrmlScene.AddNode(cls(tag))


mrmlScene = Scene()
app = App()
dicomDatabase = DicomDatabase()
modules = type("modules", (), {})()
_standard_views()


def reset(testing=False, mainWindow=True):
    """A fresh scene, layout and database for each test; ``mainWindow=False``: as ``--no-main-window``."""
    import qt

    global app
    mrmlScene._observers.clear()  # widgets of earlier tests no longer listen
    mrmlScene.Clear(1)
    _standard_views()
    app = App(testing, mainWindow)
    qt.QTimer.pending[:] = []
    dicomDatabase.files.clear()
    dicomDatabase.isOpen = True
    util.messages.clear()
    util.pip_failure[0] = None
