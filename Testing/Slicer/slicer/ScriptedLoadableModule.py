"""Stand-in base classes of Slicer's scripted modules."""

import unittest


class ScriptedLoadableModule(object):
    def __init__(self, parent):
        self.parent = parent


class _Layout(object):
    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)


class ScriptedLoadableModuleWidget(object):
    def __init__(self, parent=None):
        self.parent = parent
        self.layout = _Layout()

    def setup(self):
        pass


class ScriptedLoadableModuleLogic(object):
    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
        return node or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "LowResSeg")


class ScriptedLoadableModuleTest(unittest.TestCase):
    """ScriptedLoadableModule.py: a unittest.TestCase (assertions and fail() as in Slicer)."""

    def delayDisplay(self, message, msec=0):
        pass
