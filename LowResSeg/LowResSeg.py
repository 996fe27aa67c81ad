"""LowResSeg: brain-tumour segmentation from low-resolution slices, as a 3D Slicer module.

A thin shell over LowResSegLib: node <-> Volume adapters, a new segmentation node per run,
and the UI. Every decision and all computation live in LowResSegLib (pipeline, comparison
table, DICOM-SEG). Segmentation runs in a child process (LowResSegLib.frontends.background / .worker),
as in peer extensions: Slicer's idle main loop holds the GIL, which would starve a thread.
Targets Slicer 5.8 (Python 3.9) to 5.12.
"""

import os
import subprocess
import sys

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _bundle_root():
    """Where LowResSegLib and Resources are: beside this file (a build) or one level up (the repository)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(root, "LowResSegLib")):
            return root
    return here


if _bundle_root() not in sys.path:
    sys.path.insert(0, _bundle_root())

from LowResSegLib.frontends import slicersupport  # noqa: E402  (numpy only)
from LowResSegLib.workflow.run import AUTO  # noqa: E402  (stdlib only)

_RUNTIME_PACKAGES = (("onnxruntime", "onnxruntime"),)
_DICOM_PACKAGES = (("highdicom", "highdicom"),)
_POLL_MS = 100
_PACS_PACKAGES = (("requests", "requests"),)
# where each remembered server lives: (settings key of its URL, settings key of its secret's file, file name,
# shortest secret accepted); the secret itself is only ever in that 0600 file
_SERVERS = {"edge": ("LowResSeg/ServerURL", "LowResSeg/TokenFile", "server-token", 16),
            "pacs": ("LowResSeg/PacsURL", "LowResSeg/PacsCredentialsFile", "pacs-credentials", 1)}
_LEGACY_SETTINGS_TOKEN = "LowResSeg/Token"  # older versions kept the token itself in the .ini: removed on sight


class LowResSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LowResSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]  # Slicer's own category
        self.parent.contributors = ["LowResSeg team"]
        self.parent.helpText = _(
            "Segments a brain tumour on an MRI (FLAIR) volume from low-resolution slices with a learned upsampling "
            "head (J-Net), locally or on an edge server. Compare input resolutions side by side and export "
            "DICOM-SEG. Research use only, not for diagnosis.")
        self.parent.acknowledgementText = _(
            "Method: Ostrowski and Shafique, Embedded Deployment of Semantic Segmentation in Medicine through "
            "Low-Resolution Inputs (arXiv 2403.05340).")


@parameterNodeWrapper
class LowResSegParameterNode:
    """``inputVolume`` is bound to its selector in the .ui. ``model`` is not: Slicer's only QComboBox
    connector for a ``str`` needs a fixed Choice list, and the models are known only at run time, so
    the widget keeps the combo box and this parameter in step itself."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    model: str = ""


def missing_packages(packages):
    """The pip requirements of ``packages`` ((module, requirement) pairs) that are not installed. Only looked
    up (``importlib.util.find_spec``), never imported: onnxruntime runs in the worker, not in Slicer."""
    import importlib.util

    missing = []
    for module, requirement in packages:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


# what a failed install raises: CalledProcessError from pip (Slicer 5.8 util.py, 5.12 slicer/packaging.py),
# RuntimeError (e.g. PythonSlicer not found), OSError (the launcher cannot start)
_INSTALL_ERRORS = (subprocess.CalledProcessError, RuntimeError, OSError)


def install_packages(requirements):
    """``slicer.util.pip_install`` (Slicer 5.8 to 5.12); raises one of ``_INSTALL_ERRORS`` when it fails."""
    slicer.util.pip_install(list(requirements))
    import importlib

    importlib.invalidate_caches()


def ensure_packages(packages, purpose):
    """Install missing pip packages after the user agrees; main thread only. False if declined or failed."""
    missing = missing_packages(packages)
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
            _("{purpose} needs the Python package(s) {names}. Install them now? (This needs the internet once.)")
            .format(purpose=purpose, names=", ".join(missing))):
        return False
    try:
        install_packages(missing)
    except _INSTALL_ERRORS as exc:
        slicer.util.errorDisplay(_("Could not install {names}: {reason}. Check the internet connection, or install "
                                   "them from Slicer's Python console: slicer.util.pip_install('{names}')").format(
            names=" ".join(missing), reason=slicersupport.install_failure_reason(exc)))
        return False
    still = missing_packages(packages)
    if still:
        slicer.util.errorDisplay(_("{names} was installed but cannot be imported yet: restart Slicer and try again.")
                                 .format(names=" ".join(still)))
        return False
    return True


class LowResSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runs = None
        self._timer = None
        self._probe = None  # the running connection test
        self._probeTimer = None
        self._chosen = ""  # what "auto" chose, and why, for the status line
        self._resetResults()

    def _resetResults(self):
        """Forget every run: what was pending, its results, nodes and volume."""
        self._pending = {}
        self._segmentations = {}
        self._nodes = {}
        self._volumeNode = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(os.path.join(_bundle_root(), "Resources", "UI", "LowResSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LowResSegLogic()

        for entry, _budget in slicersupport.AUTO_CHOICES:
            self.ui.modelSelector.addItem(entry)
        for name in self.logic.modelNames():
            self.ui.modelSelector.addItem(name)
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked)
            self.ui.compareList.addItem(item)
        name = self.logic.recommendedModel()
        recommended = self.ui.modelSelector.findText(name) if name else -1
        self.ui.modelSelector.setCurrentIndex(recommended if recommended >= 0 else len(slicersupport.AUTO_CHOICES))
        self.ui.resultsTable.setColumnCount(6)
        self.ui.resultsTable.setHorizontalHeaderLabels(
            [_("Model"), _("Input"), _("Time (s)"), _("Tumour (mL)"), _("Dice vs reference"), _("Warning")])
        # shown as dots; kept in 0600 files, never in the settings or a log
        self.ui.serverUrlLineEdit.text, self.ui.tokenLineEdit.text = self.logic.savedServer("edge")
        self.ui.pacsUrlLineEdit.text, self.ui.pacsCredentialsLineEdit.text = self.logic.savedServer("pacs")
        self.ui.remoteRadioButton.connect("toggled(bool)", self.onProcessingChanged)
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        self.onProcessingChanged()

        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentOrCancel)
        self.ui.referenceSelector.connect("currentIndexChanged(int)", self.updateTable)
        self.ui.sideBySideButton.connect("clicked(bool)", self.onSideBySide)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.initializeParameterNode()
        self.onModelChanged()

    def cleanup(self):
        self.stopRuns()
        self.stopProbe()
        self.removeObservers()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        """A view made later (another layout, a second 3-D view) shows the runs as the comparison says."""
        if node is not None and node.IsA("vtkMRMLAbstractViewNode"):
            self.logic.updateComparisonViews()

    def onSceneStartClose(self, caller, event):
        """File > Close Scene: stop any run (its whole process tree) and forget results whose nodes are leaving
        the scene."""
        self.stopRuns()
        self._resetResults()
        self.ui.resultsTable.setRowCount(0)
        self.ui.referenceSelector.clear()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = ""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNode = self._parameterNodeGuiTag = None

    def onSceneEndClose(self, caller, event):
        self.initializeParameterNode()

    def initializeParameterNode(self):
        self._parameterNode = LowResSegParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        index = self.ui.modelSelector.findText(self._parameterNode.model) if self._parameterNode.model else -1
        if index >= 0:
            self.ui.modelSelector.setCurrentIndex(index)  # the scene's saved choice
        else:
            self._parameterNode.model = self.ui.modelSelector.currentText

    def remote(self):
        """(url, token) when Remote is chosen, else None; the URL and the token file's path are remembered."""
        if not self.ui.remoteRadioButton.checked:
            return None
        url, token = self.ui.serverUrlLineEdit.text.strip(), self.ui.tokenLineEdit.text.strip()
        self.logic.saveServer("edge", url, token)
        return url, token or None

    def pacs(self):
        """(url, credentials) when the export should also store in the PACS, else None; remembered like the edge
        server's."""
        if not self.ui.sendToPacsCheckBox.checked:
            return None
        url, credentials = self.ui.pacsUrlLineEdit.text.strip(), self.ui.pacsCredentialsLineEdit.text.strip()
        if not url:
            raise ValueError(_("Enter the PACS's DICOMweb URL, e.g. https://pacs.hospital.org/dicom-web"))
        self.logic.saveServer("pacs", url, credentials)
        return url, credentials

    def onProcessingChanged(self, checked=None):
        remote = bool(self.ui.remoteRadioButton.checked)
        for name in ("serverUrlLineEdit", "tokenLineEdit"):
            getattr(self.ui, name).enabled = remote
        self.ui.testConnectionButton.enabled = remote and self._probe is None  # one test at a time

    def onTestConnection(self):
        """Ask the server in the worker process (it may take ~15 s); the panel stays usable meanwhile."""
        if self._probe is not None:
            return
        try:
            remote = self.remote()
        except (OSError, ValueError) as exc:
            self.ui.remoteStatusLabel.text = _("Could not keep the token: {reason}").format(reason=str(exc))
            return
        if not remote or not remote[0]:
            self.ui.remoteStatusLabel.text = _("Enter the server URL, e.g. https://jetson.local:8000")
            return
        try:
            self._probe = self.logic.startConnectionTest(*remote)
        except (ValueError, RuntimeError, OSError) as exc:
            self.ui.remoteStatusLabel.text = _("Connection failed: {reason}").format(reason=str(exc))
            return
        self.ui.remoteStatusLabel.text = _("Testing the connection to {url}...").format(url=remote[0])
        self.ui.testConnectionButton.enabled = False
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(_POLL_MS)
        self._probeTimer.connect("timeout()", self.onProbePoll)
        self._probeTimer.start()

    def onProbePoll(self):
        if self._probe is None:
            return
        for event in self._probe.poll():
            if event.kind in ("connected", "error"):
                self.ui.remoteStatusLabel.text = self.logic.connectionMessage(event)
            elif event.kind == "finished":
                self.stopProbe()
                return

    def stopProbe(self):
        """End a running connection test (its process tree) and its timer."""
        if self._probeTimer is not None:
            self._probeTimer.stop()
            self._probeTimer = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe.poll()  # removes its temporary folder
            self._probe = None
        self.onProcessingChanged()

    def onModelChanged(self, index=None):
        name = self.ui.modelSelector.currentText
        if self._parameterNode is not None and name:
            self._parameterNode.model = name
        if name:
            summary = slicersupport.auto_summary(name) if slicersupport.auto_budget(name) else \
                self.logic.cardSummary(name)
            self.ui.modelCardLabel.text = summary
            self.ui.modelSelector.toolTip = summary

    # ------------------------------------------------------------------ run

    def selectedModels(self):
        names = [self.ui.modelSelector.currentText]
        for row in range(self.ui.compareList.count):
            item = self.ui.compareList.item(row)
            if item.checkState() == qt.Qt.Checked and item.text() not in names:
                names.append(item.text())
        return [n for n in names if n]

    def onSegmentOrCancel(self):
        if self._runs is not None:
            self._runs.cancel()  # the worker is killed; the next poll says so
            self.ui.statusLabel.text = _("Cancelling...")
            return
        volumeNode = self.ui.inputSelector.currentNode()
        if volumeNode is None:
            slicer.util.errorDisplay(_("Pick an MRI volume first."))
            return
        try:
            remote = self.remote()
        except (OSError, ValueError) as exc:
            slicer.util.errorDisplay(_("Could not keep the server token: {reason}").format(reason=str(exc)))
            return
        if not remote and not ensure_packages(_RUNTIME_PACKAGES, _("Segmentation")):
            return
        models, budget = self.selectedModels(), slicersupport.auto_budget(self.ui.modelSelector.currentText)
        if budget:
            models[0] = AUTO  # the worker picks it
        try:
            self._runs = self.logic.startRuns(volumeNode, models, remote=remote, budget=budget)
        except (ValueError, RuntimeError, OSError) as exc:
            self._runs = None
            slicer.util.errorDisplay(str(exc))
            return
        self._resetResults()
        self._volumeNode, self._chosen = volumeNode, ""
        self.ui.resultsTable.setRowCount(0)
        self.ui.referenceSelector.clear()
        self.ui.segmentButton.text = _("Cancel")
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Segmenting...")
        self._timer = qt.QTimer()
        self._timer.setInterval(_POLL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self._timer.start()

    def stopRuns(self):
        """Kill any running worker and drop its events: nothing it made reaches the scene."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._runs is not None:
            self._runs.cancel()
            self._runs.poll()  # removes its temporary folder
            self._runs = None
        self.ui.segmentButton.text = _("Segment")

    def onPoll(self):
        """Main thread: drain the worker's events; nodes are made only when every run succeeded."""
        if self._runs is None:
            return
        for event in self._runs.poll():
            if event.kind == "chosen":
                self._chosen = " " + _("Auto {reason}.").format(reason=event.message)
                self.ui.statusLabel.text = _("Segmenting...") + self._chosen
            elif event.kind == "progress":
                self.ui.progressBar.value = int(round(100 * event.fraction))
            elif event.kind == "result":
                self._pending[event.model] = event.segmentation
                self._segmentations = dict(self._pending)
                self.updateTable()
            elif event.kind == "error":
                self._pending = None
                self.ui.statusLabel.text = _("Failed, nothing was added to the scene: {message}").format(
                    message=event.message)
            elif event.kind == "cancelled":
                self._pending = None
                self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
            elif event.kind == "finished":
                self._timer.stop()
                self._timer = self._runs = None
                self.ui.segmentButton.text = _("Segment")
                if self._pending and self._volumeNode is not None and self._volumeNode.GetScene() is not None:
                    self._nodes = self.logic.addSegmentationNodes(self._volumeNode, self._pending)
                    self.ui.progressBar.value = 100
                    self.ui.statusLabel.text = _("Done: {n} segmentation(s) added; review and edit them in "
                                                 "Segment Editor.").format(n=len(self._pending)) + self._chosen \
                        + slicersupport.review_warning(self._pending)
                    self.updateReferenceSelector()
                else:
                    self._segmentations = {}
                    self.updateTable()
                return

    def updateReferenceSelector(self):
        self.ui.referenceSelector.clear()
        for name in self._segmentations:
            self.ui.referenceSelector.addItem(name)

    def updateTable(self, *args):
        rows = self.logic.tableRows(self._segmentations, self.ui.referenceSelector.currentText, self._volumeNode)
        self.ui.resultsTable.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = [row["model"], "%d\u00b2" % row["input_size"], "%.2f" % row["time_s"], "%.1f" % row["volume_ml"],
                      "%.3f" % row["dice"], row.get("warning", "")]
            for c, value in enumerate(values):
                self.ui.resultsTable.setItem(r, c, qt.QTableWidgetItem(value))

    # ------------------------------------------------------------------ results

    def _liveNodes(self):
        """The runs' segmentation nodes still in the scene (the user may have deleted some)."""
        return [n for n in self._nodes.values() if n.GetScene() is not None]

    def onSideBySide(self):
        nodes = self._liveNodes()
        if not nodes or self._volumeNode is None or self._volumeNode.GetScene() is None:
            slicer.util.errorDisplay(_("Segment first; then the runs can be shown side by side."))
            return
        try:
            self.logic.showSideBySide(self._volumeNode, nodes)
        except RuntimeError as exc:
            slicer.util.errorDisplay(str(exc))

    def onExportDicomSeg(self):
        row = self.ui.resultsTable.currentRow()
        models = list(self._nodes)
        if row < 0 or row >= len(models):
            slicer.util.errorDisplay(_("Select the run to export in the results table."))
            return
        try:
            pacs = self.pacs()
        except (OSError, ValueError) as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if not ensure_packages(_DICOM_PACKAGES + (_PACS_PACKAGES if pacs else ()), _("DICOM-SEG export")):
            return
        with slicer.util.tryWithErrorDisplay(_("DICOM-SEG export failed."), waitCursor=True):
            path = self.logic.exportDicomSeg(self._volumeNode, self._segmentations[models[row]])
            self.ui.statusLabel.text = _("DICOM-SEG added to the DICOM database: {path}").format(path=path)
        if pacs:
            with slicer.util.tryWithErrorDisplay(_("The DICOM-SEG is in the DICOM database, but storing it in the "
                                                   "PACS failed."), waitCursor=True):
                said = self.logic.storeInPacs(pacs[0], pacs[1], path)
                self.ui.statusLabel.text = _("DICOM-SEG added to the DICOM database and {said}: {path}").format(
                    said=said, path=path)


class LowResSegLogic(ScriptedLoadableModuleLogic):
    """Node adapters and calls into LowResSegLib; usable without the widget."""

    def repository(self):
        from LowResSegLib.repository.modelstore import ModelRepository

        return ModelRepository()

    def modelNames(self):
        return self.repository().names()

    def recommendedModel(self):
        from LowResSegLib.inference.modelchoice import recommended_model

        return recommended_model(self.repository())

    def cardSummary(self, name):
        return slicersupport.card_summary(self.repository().card(name))

    def volumeFromNode(self, volumeNode):
        """A LowResSegLib Volume with a copy of the voxels (the worker never touches the node)."""
        from LowResSegLib.images.geometry import Volume

        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        ijk_to_ras = [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
        array = slicer.util.arrayFromVolume(volumeNode)
        if array.ndim != 3:
            raise ValueError(_("{name} is not a 3-D scalar volume.").format(name=volumeNode.GetName()))
        import numpy as np

        return Volume.from_ras(np.array(array, dtype=np.float32), ijk_to_ras, {"source": volumeNode.GetName()})

    def startRuns(self, volumeNode, models, remote=None, budget=None):
        """Start the runs of ``models`` on ``volumeNode`` in a worker process, locally or on ``remote`` (url, token).

        A model named ``auto`` is picked by the worker to fit ``budget`` (fastest, balanced, best or seconds)."""
        from LowResSegLib.frontends.background import BackgroundRuns

        if not models:
            raise ValueError(_("Pick a model."))
        if remote:
            url, token = remote
            engine = {"kind": "remote", "url": url, "token": token}
        else:
            repo = self.repository()
            for name in models:
                if name != AUTO:
                    repo.card(name)  # an unknown or damaged model fails here, before any work
            engine = {"kind": "local", "repository": repo.root}
        volume = self.volumeFromNode(volumeNode)
        self._volume = volume
        return BackgroundRuns(volume, models, engine, python=slicersupport.worker_python(),
                              pythonpath=[_bundle_root()], budget=budget).start()

    # ------------------------------------------------------------------ remembered servers

    def savedServer(self, kind):
        """(URL, secret) remembered for ``kind`` ("edge" or "pacs"); "" for what is not there or unreadable."""
        from LowResSegLib.edge.tokens import read_token

        urlKey, fileKey, _name, minChars = _SERVERS[kind]
        settings = qt.QSettings()
        settings.remove(_LEGACY_SETTINGS_TOKEN)  # never leave a token in the settings file
        path = settings.value(fileKey, "") or ""
        try:
            secret = read_token(path, minChars) if path else ""
        except (OSError, ValueError):
            secret = ""
        return settings.value(urlKey, "") or "", secret

    def saveServer(self, kind, url, secret):
        """Remember the URL in Slicer's settings and the secret in a 0600 file; the settings keep only its path."""
        from LowResSegLib.edge.tokens import write_token

        urlKey, fileKey, name, _minChars = _SERVERS[kind]
        settings = qt.QSettings()
        settings.setValue(urlKey, url)
        settings.remove(_LEGACY_SETTINGS_TOKEN)
        path = slicersupport.secret_file_for(settings.fileName(), name)
        if secret:
            write_token(path, secret)
            settings.setValue(fileKey, path)
        else:
            if os.path.exists(path):
                os.remove(path)
            settings.remove(fileKey)

    def storeInPacs(self, url, credentials, path):
        """Store a DICOM-SEG file in its study on the DICOMweb server; one line for the user."""
        from LowResSegLib.hospital.pacs import store_seg

        result = store_seg(url, path, credentials or None)
        return _("stored in the PACS, study {study}").format(study=result.study_uid)

    def startConnectionTest(self, url, token=None):
        """Ask the edge server who it is in a worker process (LowResSegLib.frontends.background.BackgroundProbe):
        its ``poll()`` gives a ``connected`` or ``error`` event, then ``finished``."""
        from LowResSegLib.frontends.background import BackgroundProbe

        return BackgroundProbe(url, token, python=slicersupport.worker_python(), pythonpath=[_bundle_root()]).start()

    def connectionMessage(self, event):
        """One line for the UI: the server, its models and the round trip, or what went wrong."""
        if event.kind != "connected":
            return _("Connection failed: {reason}").format(reason=event.message)
        info = event.card
        return _("Connected to {name} {version}: {n} model(s) ({models}); round trip {ms:.0f} ms").format(
            name=info["name"], version=info["version"], n=len(info["models"]), models=", ".join(info["models"]),
            ms=info["ms"])

    def sourceFiles(self, volumeNode):
        """The DICOM files a volume was loaded from (empty when it was not loaded from DICOM)."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        return [slicer.dicomDatabase.fileForInstance(uid) for uid in uids]

    def inputWarnings(self, volumeNode, card):
        """The library's check that the input looks like the model's contrast (DICOM headers or name)."""
        from LowResSegLib.workflow.run import contrast_from_name, contrast_warning

        files = [f for f in self.sourceFiles(volumeNode) if f]
        if files:
            from LowResSegLib.images.dicomread import contrast_of_files

            warning = contrast_warning(card, contrast_of_files(files), "its DICOM headers")
        else:
            warning = contrast_warning(card, contrast_from_name(volumeNode.GetName()), "its name")
        return [warning] if warning else []

    def tableRows(self, segmentations, reference, volumeNode=None):
        """Comparison rows (LowResSegLib.frontends.compare) with each run's warnings."""
        from LowResSegLib.frontends.compare import comparison_rows
        from LowResSegLib.workflow.run import result_warnings

        if not segmentations:
            return []
        rows = comparison_rows(segmentations, self._volume, reference_model=reference or None)
        for row in rows:
            seg = segmentations[row["model"]]
            found = (self.inputWarnings(volumeNode, seg.card) if volumeNode is not None else []) + result_warnings(seg) \
                + slicersupport.review_lines(seg)
            row["warning"] = "; ".join(found)
        return rows

    def addSegmentationNodes(self, volumeNode, segmentations):
        """One new segmentation node per run; nothing existing is changed."""
        return {model: self.addSegmentationNode(volumeNode, seg) for model, seg in segmentations.items()}

    def addSegmentationNode(self, volumeNode, segmentation):
        scene = slicer.mrmlScene
        name = scene.GenerateUniqueName(slicersupport.node_name(volumeNode.GetName(), segmentation.card["name"]))
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        try:
            node.SetAttribute(slicersupport.RUN_ATTRIBUTE, segmentation.card["name"])
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            for spec, mask in slicersupport.segment_masks(segmentation):  # an ensemble adds "members disagree"
                segmentId = node.GetSegmentation().AddEmptySegment("", spec["name"], spec["color"])
                if spec["terminology"]:
                    segment = node.GetSegmentation().GetSegment(segmentId)
                    segment.SetTag(segment.GetTerminologyEntryTagName(), spec["terminology"])
                slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segmentId, volumeNode)
            shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
            study = shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode))
            if study:
                shNode.SetItemParent(shNode.GetItemByDataNode(node), study)
        except Exception:
            scene.RemoveNode(node)  # a half-made node never stays in the scene
            raise
        return node

    def showSideBySide(self, volumeNode, segmentationNodes):
        """One linked axial view per run, the same background, fitted to the volume once the views are laid
        out; each run is shown in its own view there and, as before, in every view outside this layout. Runs
        not in this comparison are hidden from its views. Needs the main window (its layout manager)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            raise RuntimeError(_("Side by side needs Slicer's main window, and this Slicer has none (it was started "
                                 "with --no-main-window)."))
        layoutId = slicersupport.SIDE_BY_SIDE_LAYOUT_ID
        description = slicersupport.side_by_side_layout(len(segmentationNodes))
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        if layoutNode.IsLayoutDescription(layoutId):
            layoutNode.SetLayoutDescription(layoutId, description)  # Add would keep the old number of views
        else:
            layoutNode.AddLayoutDescription(layoutId, description)
        layoutNode.SetViewArrangement(layoutId)
        views = [slicersupport.view_name(n) for n in range(len(segmentationNodes))]
        for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            node.RemoveAttribute(slicersupport.COMPARISON_VIEW_ATTRIBUTE)
        for segNode, viewName in zip(segmentationNodes, views):
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                raise RuntimeError("the side-by-side view %s was not created" % viewName)
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(volumeNode.GetID())
            composite.SetLinkedControl(True)
            segNode.SetAttribute(slicersupport.COMPARISON_VIEW_ATTRIBUTE, viewName)
            if not segNode.GetAttribute(slicersupport.RUN_ATTRIBUTE):
                segNode.SetAttribute(slicersupport.RUN_ATTRIBUTE, segNode.GetName())
        self.updateComparisonViews()

        def fit():  # the new views have their size only after Qt has laid them out
            slicer.app.processEvents()
            manager = slicer.app.layoutManager()
            for viewName in views:
                sliceWidget = manager.sliceWidget(viewName) if manager is not None else None
                if sliceWidget is not None:  # still shown (the user may have changed the layout meanwhile)
                    sliceWidget.sliceLogic().FitSliceToAll()

        qt.QTimer.singleShot(0, fit)

    def updateComparisonViews(self):
        """Set every run's view list by the comparison (LowResSegLib.frontends.slicersupport.comparison_view_lists);
        called when a comparison is shown and whenever a view is added to the scene."""
        views = [(v.GetID(), v.GetLayoutName()) for cls in ("vtkMRMLSliceNode", "vtkMRMLViewNode")
                 for v in slicer.util.getNodesByClass(cls)]
        runs = {n.GetID(): n for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
                if n.GetAttribute(slicersupport.RUN_ATTRIBUTE)}
        lists = slicersupport.comparison_view_lists(
            [(nodeId, n.GetAttribute(slicersupport.COMPARISON_VIEW_ATTRIBUTE)) for nodeId, n in runs.items()], views)
        for nodeId, viewIds in lists.items():
            display = runs[nodeId].GetDisplayNode()
            if display is not None and list(display.GetViewNodeIDs()) != viewIds:
                display.SetViewNodeIDs(viewIds)

    def exportDicomSeg(self, volumeNode, segmentation, outputFolder=None):
        """Write the run as DICOM-SEG on the volume's source files and add it to the DICOM database.

        The file is copied into the database's own folder and the staging folder removed. If the
        database does not take it, the error says where the written file is (it is kept).
        """
        import shutil
        import tempfile

        from LowResSegLib.results.dicomseg import labels_for_source_files, write_dicom_seg

        files = self.sourceFiles(volumeNode)
        if not files:
            raise ValueError(_("{name} was not loaded from DICOM, so a DICOM-SEG cannot reference it; save the "
                               "segmentation as .seg.nrrd or NIfTI instead.").format(name=volumeNode.GetName()))
        if not all(files):
            raise ValueError(_("Some source files of {name} are no longer in the DICOM database.").format(
                name=volumeNode.GetName()))
        labels = labels_for_source_files(segmentation.labels, segmentation.reference.affine, files)
        folder = outputFolder or tempfile.mkdtemp(prefix="LowResSeg-SEG-")
        path = os.path.join(folder, "%s.seg.dcm" % segmentation.card["name"])
        write_dicom_seg(labels, files, segmentation.card, path)
        import pydicom
        from DICOMLib import DICOMUtils

        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        imported = DICOMUtils.importDicom(folder, slicer.dicomDatabase, copyFiles=outputFolder is None)
        stored = slicer.dicomDatabase.fileForInstance(uid) if imported else ""
        if not stored:
            raise RuntimeError(_("The DICOM database did not take the DICOM-SEG (see the application log); the "
                                 "file is kept at {path}").format(path=path))
        if outputFolder is None and os.path.abspath(stored) != os.path.abspath(path):
            shutil.rmtree(folder, ignore_errors=True)  # the database has its own copy
        return stored


class LowResSegTest(ScriptedLoadableModuleTest):
    """Run in Slicer: Slicer --no-main-window --testing --python-code "slicer.selfTests['LowResSeg']()" (side by
    side is then skipped, with a note: there is no main window), or with the main window through ctest
    (``slicer_add_python_unittest`` in LowResSeg/CMakeLists.txt).

    A step that cannot run (a package that will not install, no DICOM module) fails the test: a
    self-test that returns early would pass without testing anything.
    """

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_segment_blob()
        self.setUp()
        self.test_compare_two_models()
        self.setUp()
        self.test_export_dicom_seg()

    def _requirePackages(self, packages):
        """Install what is missing without asking (testing mode has no dialogs), or fail saying what."""
        missing = missing_packages(packages)
        if missing:
            try:
                install_packages(missing)
            except _INSTALL_ERRORS as exc:
                self.fail("could not install %s for the self-test: %s" % (" ".join(missing),
                                                                         slicersupport.install_failure_reason(exc)))
        still = missing_packages(packages)
        self.assertEqual(still, [], "not importable after installing: %s" % still)

    def _segmentations(self, logic, volumeNode, models):
        """Run ``models`` in the worker process to the end; fail with the worker's message if one fails."""
        runs = logic.startRuns(volumeNode, models)
        events = runs.wait(600)
        self.assertTrue(runs.finished, "the segmentation process did not finish within 10 minutes")
        errors = [e.message for e in events if e.kind == "error"]
        self.assertEqual(errors, [])
        return {e.model: e.segmentation for e in events if e.kind == "result"}

    def _blob_volume(self):
        import numpy as np

        k, j, i = np.mgrid[:24, :96, :96]
        array = 100.0 + 0.0 * i
        array[(k < 4) | (k > 20) | (j < 10) | (j > 86) | (i < 10) | (i > 86)] = 0.0  # a head-like box
        blob = ((k - 12) ** 2 / 16.0 + (j - 40) ** 2 / 100.0 + (i - 60) ** 2 / 100.0) < 1.0
        array[blob] = 260.0
        node = slicer.util.addVolumeFromArray(array.astype(np.float32), name="blob")
        node.SetSpacing(1.5, 1.5, 3.0)
        return node, blob

    def test_segment_blob(self):
        self.delayDisplay("Segment a blob")
        self._requirePackages(_RUNTIME_PACKAGES)
        volumeNode, blob = self._blob_volume()
        logic = LowResSegLogic()
        results = self._segmentations(logic, volumeNode, [logic.recommendedModel()])
        self.assertEqual(list(results), [logic.recommendedModel()])
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        nodes = logic.addSegmentationNodes(volumeNode, results)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), before + 1)
        segNode = nodes[logic.recommendedModel()]
        segmentId = segNode.GetSegmentation().GetNthSegmentID(0)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segmentId, volumeNode)
        self.assertTrue(mask.any())
        inside = float(mask[blob].mean())
        outside = float(mask[~blob].mean())
        self.assertGreater(inside, 0.5)
        self.assertLess(outside, 0.05)
        self.delayDisplay("Segment passed (inside %.2f, outside %.3f)" % (inside, outside))

    def test_compare_two_models(self):
        self.delayDisplay("Compare two resolutions")
        self._requirePackages(_RUNTIME_PACKAGES)
        volumeNode, _blob = self._blob_volume()
        logic = LowResSegLogic()
        models = ["elunet-jhead-16to256", "elunet-jhead-32to256"]
        results = self._segmentations(logic, volumeNode, models)
        self.assertEqual(sorted(results), models)
        rows = logic.tableRows(results, "elunet-jhead-32to256")
        self.assertEqual(len(rows), 2)
        nodes = list(logic.addSegmentationNodes(volumeNode, results).values())
        if slicer.app.layoutManager() is None:  # --no-main-window: there are no views to show them in
            with self.assertRaises(RuntimeError):  # the panel shows its message (translated, so not matched here)
                logic.showSideBySide(volumeNode, nodes)
            self.delayDisplay("Compare passed (side by side skipped: no main window)")
            return
        logic.showSideBySide(volumeNode, nodes)
        logic.showSideBySide(volumeNode, nodes[:1])  # shown again with another number of views
        logic.showSideBySide(volumeNode, nodes)
        self.delayDisplay("Compare passed")

    def test_export_dicom_seg(self):
        self.assertTrue(hasattr(slicer.modules, "dicom"), "the DICOM module is needed for the DICOM-SEG self-test")
        self._requirePackages(_RUNTIME_PACKAGES + _DICOM_PACKAGES)
        import tempfile

        import numpy as np
        import pydicom
        from DICOMLib import DICOMUtils

        from LowResSegLib.images.dicomsynth import write_mr_series
        from LowResSegLib.images.geometry import Volume

        self.delayDisplay("Export DICOM-SEG from a DICOM-loaded copy")
        blobNode, _blob = self._blob_volume()
        volume = LowResSegLogic().volumeFromNode(blobNode)
        folder = tempfile.mkdtemp(prefix="LowResSegTest-")
        files = write_mr_series(Volume(volume.array.astype(np.float32), volume.affine), folder, seed=1)
        seriesUID = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        with DICOMUtils.TemporaryDICOMDatabase():
            self.assertTrue(DICOMUtils.importDicom(folder))
            loaded = DICOMUtils.loadSeriesByUID([seriesUID])
            self.assertTrue(loaded)
            volumeNode = slicer.mrmlScene.GetNodeByID(loaded[0])
            logic = LowResSegLogic()
            results = list(self._segmentations(logic, volumeNode, [logic.recommendedModel()]).values())
            self.assertEqual(len(results), 1)
            path = logic.exportDicomSeg(volumeNode, results[0])
            self.assertTrue(os.path.exists(path))
        self.delayDisplay("DICOM-SEG export passed")
