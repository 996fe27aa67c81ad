"""Stand-in for the ``slicer`` package: scene, nodes, subject hierarchy, layout (see ../README.md)."""

import itertools

import numpy as np
import vtk  # the real wheel: vtkMatrix4x4 as Slicer has it

from slicer import util  # noqa: F401  (slicer.util.X, as in Slicer)

_ids = itertools.count(1)


class Node(object):
    className = "vtkMRMLNode"

    def __init__(self, name):
        self._name, self._id, self._attributes = name, "%s%d" % (self.className, next(_ids)), {}

    def GetName(self):
        return self._name

    def GetID(self):
        return self._id

    def GetAttribute(self, key):
        return self._attributes.get(key)

    def SetAttribute(self, key, value):
        self._attributes[key] = value


class vtkMRMLScalarVolumeNode(Node):
    className = "vtkMRMLScalarVolumeNode"

    def __init__(self, name):
        Node.__init__(self, name)
        self.array = None
        self.ijk_to_ras = np.eye(4)

    def GetIJKToRASMatrix(self, matrix):
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(self.ijk_to_ras[r, c]))

    def SetSpacing(self, *spacing):
        directions = self.ijk_to_ras[:3, :3] / np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)
        self.ijk_to_ras[:3, :3] = directions * np.array(spacing, dtype=float)


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
    def __init__(self):
        self.only_in_view = None

    def SetViewNodeIDs(self, viewNodeIDs):
        assert isinstance(viewNodeIDs, (list, tuple)) and all(isinstance(v, str) for v in viewNodeIDs)
        self.only_in_view = viewNodeIDs[0] if len(viewNodeIDs) == 1 else list(viewNodeIDs)


class vtkMRMLSegmentationNode(Node):
    className = "vtkMRMLSegmentationNode"

    def __init__(self, name):
        Node.__init__(self, name)
        self.segmentation, self.display, self.reference = Segmentation(), None, None

    def CreateDefaultDisplayNodes(self):
        self.display = DisplayNode()

    def GetDisplayNode(self):
        return self.display

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


class Scene(object):
    StartCloseEvent = 66000
    _classes = {"vtkMRMLScalarVolumeNode": vtkMRMLScalarVolumeNode,
                "vtkMRMLSegmentationNode": vtkMRMLSegmentationNode, "vtkMRMLScriptedModuleNode": Node}

    def __init__(self):
        self.nodes = []

    def AddNewNodeByClass(self, className, name=""):
        node = self._classes[className](name or className)
        self.nodes.append(node)
        return node

    def RemoveNode(self, node):
        self.nodes.remove(node)

    def GenerateUniqueName(self, base):
        names = {n.GetName() for n in self.nodes}
        if base not in names:
            return base
        return next("%s_%d" % (base, i) for i in itertools.count(1) if "%s_%d" % (base, i) not in names)

    def GetNodesByClass(self, className):
        return [n for n in self.nodes if n.className == className]

    def GetNumberOfNodesByClass(self, className):
        return len(self.GetNodesByClass(className))

    def GetFirstNodeByClass(self, className):
        found = self.GetNodesByClass(className)
        return found[0] if found else None

    def Clear(self, close=0):
        self.nodes = []
        vtkMRMLSubjectHierarchyNode._instance = None


class LayoutNode(object):
    def __init__(self):
        self.descriptions, self.arrangement = {}, None

    def AddLayoutDescription(self, layoutId, xml):
        self.descriptions[layoutId] = xml

    def SetViewArrangement(self, layoutId):
        assert layoutId in self.descriptions
        self.arrangement = layoutId


class SliceCompositeNode(object):
    def __init__(self):
        self.background, self.linked = None, False

    def SetBackgroundVolumeID(self, nodeId):
        self.background = nodeId

    def SetLinkedControl(self, linked):
        self.linked = bool(linked)


class SliceWidget(object):
    def __init__(self, name):
        self.name, self.composite, self.sliceNode = name, SliceCompositeNode(), Node("vtkMRMLSliceNode" + name)

    def mrmlSliceCompositeNode(self):
        return self.composite

    def mrmlSliceNode(self):
        return self.sliceNode


class LayoutManager(object):
    def __init__(self):
        self.layoutNode, self.widgets = LayoutNode(), {}

    def layoutLogic(self):
        return self

    def GetLayoutNode(self):
        return self.layoutNode

    def sliceWidget(self, name):
        import re

        xml = self.layoutNode.descriptions.get(self.layoutNode.arrangement, "")
        if 'singletontag="%s"' % name not in xml:
            return None  # as in Slicer: no such view in the current layout
        assert re.search(r'singletontag="%s"' % name, xml)
        return self.widgets.setdefault(name, SliceWidget(name))


class App(object):
    def __init__(self):
        self._layout = LayoutManager()

    def layoutManager(self):
        return self._layout


class DicomDatabase(object):
    def __init__(self):
        self.files = {}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")


mrmlScene = Scene()
app = App()
dicomDatabase = DicomDatabase()


def reset():
    """A fresh scene, layout and database for each test."""
    global app
    mrmlScene.Clear(0)
    app = App()
    dicomDatabase.files.clear()
    util.messages.clear()
