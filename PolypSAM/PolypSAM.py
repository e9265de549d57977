"""PolypSAM: box- and click-prompted SAM2 segmentation of polyps and lesions in 3D Slicer.

Module, ParameterNode (saved with the scene), Widget (binds the .ui to the parameter node; every
button and click tool makes one logic call), Logic (thin: engines, installs, a progress dialog
polling ``polypsam.mrml``'s runs), Test. The work, and the state kept between clicks, live in the
Qt-free ``polypsam`` library shipped beside this file, which never calls back into this file and
is tested on real MRML without Slicer. This folder holds no other ``.py`` (Slicer would load it).
"""

import contextlib
import logging
import os
import sys
from typing import Annotated, Optional, Union

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import (vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode,
                    vtkMRMLSequenceBrowserNode, vtkMRMLVectorVolumeNode)


def ensureLibraryOnPath(moduleDir: str) -> Optional[str]:
    """Put the library first on ``sys.path``: beside ``PolypSAM.py`` (installed extension), else
    ``../PolypSAMLib`` (a source checkout in "Additional module paths"); that folder, or None."""
    moduleDir = os.path.abspath(moduleDir)
    for candidate in (moduleDir, os.path.join(os.path.dirname(moduleDir), "PolypSAMLib")):
        if os.path.isfile(os.path.join(candidate, "polypsam", "__init__.py")):
            if candidate in sys.path:
                sys.path.remove(candidate)
            sys.path.insert(0, candidate)
            return candidate
    return None


ensureLibraryOnPath(os.path.dirname(os.path.abspath(__file__)))

from polypsam import engines, mrml  # noqa: E402  (needs the library path above; no torch imported)
from polypsam.errors import CancelledError  # noqa: E402
from polypsam.mrml import dependencies, scenarios  # noqa: E402

MODEL_CHOICES = [name for name, _description in engines.model_choices()]
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]
WINDOW_CHOICES = ["display", "abdomen", "soft_tissue", "lung", "bone", "brain", "percentile"]
ENGINE_CHOICES = list(engines.ENGINE_KINDS)
DOCUMENTATION_URL = "https://github.com/polypsam/PolypSAM#readme"


class PolypSAM(ScriptedLoadableModule):
    """The module's description (Slicer's ScriptedLoadableModule)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PolypSAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["PolypSAM maintainers (PolypSAM project)"]
        self.parent.helpText = _("""
Segment polyps and lesions with Meta's SAM2 from box ROIs and clicks: <b>Add box</b> on an
endoscopy frame or a CT slice, then <b>Segment</b> (2-D), <b>Propagate</b> (3-D), <b>Track</b>
(a video, or a 4-D CT's time points) or <b>Refine</b> (extra boxes on other slices or frames);
segments are named and tagged with their provenance, and can be undone. PyTorch and SAM2 are
installed on first use and weights downloaded, only after you agree. See the
<a href="{url}">documentation</a> for the workflow, server mode and the command line.
""").format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
PolypSAM uses SAM2 by Meta AI (Apache-2.0) and follows 3D Slicer's scripted module template by
Jean-Christophe Fillion-Robin (Kitware), Andras Lasso (PerkLab) and Steve Pieper (Isomics).
""")


@parameterNodeWrapper
class PolypSAMParameterNode:
    """Saved with the scene: input (CT/MR volume or RGB frame), video or 4-D sequence, output,
    checked boxes, key slice and slice range (-1: from the box), engine settings (imageSize 0: the
    checkpoint's; serverUrl of the "server" engine, whose token is never stored here)."""

    # Slicer's parameterNodeWrapper needs None in a union of node types (it writes None first).
    inputVolume: Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]]
    inputSequenceBrowser: vtkMRMLSequenceBrowserNode
    outputSegmentation: vtkMRMLSegmentationNode
    rois: list[vtkMRMLMarkupsROINode]
    keySlice: Annotated[int, WithinRange(-1, 100000)] = -1
    sliceRangeStart: Annotated[int, WithinRange(-1, 100000)] = -1
    sliceRangeEnd: Annotated[int, WithinRange(-1, 100000)] = -1
    engine: Annotated[str, Choice(ENGINE_CHOICES)] = ENGINE_CHOICES[0]
    model: Annotated[str, Choice(MODEL_CHOICES)] = engines.DEFAULT_MODEL
    customCheckpoint: str = ""
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    precision: Annotated[str, Choice(list(engines.PRECISIONS))] = "auto"
    imageSize: Annotated[int, WithinRange(0, 1024)] = 0
    windowPreset: Annotated[str, Choice(WINDOW_CHOICES)] = "display"
    serverUrl: str = ""


def segmentEditorEditing(segmentationNode):
    """The Segment Editor's editor widget when it edits ``segmentationNode``, else ``None`` (not
    asked of the module: widgetRepresentation() would build the Segment Editor just to see that)."""
    editor = getattr(getattr(slicer.modules, "SegmentEditorWidget", None), "editor", None)
    edited = editor.segmentationNode() if editor is not None and segmentationNode else None
    return editor if edited is not None and edited.GetID() == segmentationNode.GetID() else None


class PolypSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the parameter node (connectGui) and every action button and click tool to
    one logic call (:meth:`run`). It keeps no operation state: the library's session does."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None
        self._updatingRoiList, self._busy, self._roiRows = False, False, None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self._panel = uiWidget = slicer.util.loadUI(self.resourcePath("UI/PolypSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PolypSAMLogic()
        scene = slicer.mrmlScene
        for event, handler in ((scene.StartCloseEvent, self.onSceneStartClose),
                               (scene.EndCloseEvent, self.onSceneEndClose),
                               (scene.NodeAddedEvent, self.updateRoiList),
                               (scene.NodeRemovedEvent, self.updateRoiList)):
            self.addObserver(scene, event, handler)
        # the action each button runs ("undo" and "export" are enabled by the same rule)
        self._buttons = {
            "segment": self.ui.segmentButton, "propagate": self.ui.propagateButton,
            "track": self.ui.trackButton, "refine": self.ui.refineButton,
            "candidate": self.ui.nextCandidateButton, "propagate-clicks": self.ui.propagateClicksButton,
            "start-from-segment": self.ui.startFromSegmentButton, "undo": self.ui.undoButton,
            "export": self.ui.exportButton}
        for action in set(mrml.ACTIONS) & set(self._buttons):
            self._buttons[action].connect("clicked(bool)", lambda _=False, a=action: self.run(a))
        for button, handler in (
                (self.ui.addBoxButton, self.onAddBox), (self.ui.removeBoxButton, self.onRemoveBox),
                (self.ui.undoButton, self.onUndo), (self.ui.exportButton, self.onExport),
                (self.ui.checkpointBrowseButton, self.onBrowseCheckpoint),
                (self.ui.dependenciesButton, self.onDependencies),
                (self.ui.releaseEngineButton, self.onReleaseEngine),
                (self.ui.loadVideoButton, self.onLoadVideo),
                (self.ui.testConnectionButton, self.onTestConnection),
                (self.ui.includeButton, lambda: self.onPlaceClicks("include")),
                (self.ui.excludeButton, lambda: self.onPlaceClicks("exclude"))):
            button.connect("clicked(bool)", handler)
        self.ui.roiListWidget.connect("itemChanged(QListWidgetItem*)", self.onRoiItemChanged)
        self._shortcuts = []
        for key, kind in (("a", "include"), ("s", "exclude")):  # enabled while the module is shown
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda kind=kind: self.onPlaceClicks(kind))
            shortcut.setEnabled(False)
            self._shortcuts.append(shortcut)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self.removeObservers()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)

    def exit(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        self.setParameterNode(None)  # enter() connects the GUI again

    def onSceneStartClose(self, caller, event) -> None:  # the session resets itself (and undo)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.inputVolume and first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
            self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[PolypSAMParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self.updateRoiList()
        self._updateButtons()

    def updateRoiList(self, caller=None, event=None) -> None:
        """Every ROI (checked = in ``rois``), rebuilt when :func:`mrml.box_rows` change; selection kept."""
        rows = mrml.box_rows(slicer.mrmlScene, self._parameterNode.rois) if self._parameterNode else None
        if rows is None or self._updatingRoiList or rows == self._roiRows:
            return
        lw, self._updatingRoiList, self._roiRows = self.ui.roiListWidget, True, rows
        selected = lw.currentItem().data(qt.Qt.UserRole) if lw.currentItem() is not None else None
        try:
            lw.clear()
            for nodeID, name, checked in rows:
                item = qt.QListWidgetItem(name)
                item.setData(qt.Qt.UserRole, nodeID)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
                lw.addItem(item)
                if nodeID == selected:
                    lw.setCurrentItem(item)
                roi = slicer.mrmlScene.GetNodeByID(nodeID)  # its renames: its ModifiedEvent
                if not self.hasObserver(roi, vtk.vtkCommand.ModifiedEvent, self.updateRoiList):
                    self.addObserver(roi, vtk.vtkCommand.ModifiedEvent, self.updateRoiList)
        finally:
            self._updatingRoiList = False

    def onRoiItemChanged(self, item) -> None:
        if self._updatingRoiList or self._parameterNode is None:
            return
        items = [self.ui.roiListWidget.item(row) for row in range(self.ui.roiListWidget.count)]
        nodes = [slicer.mrmlScene.GetNodeByID(it.data(qt.Qt.UserRole)) for it in items
                 if it.checkState() == qt.Qt.Checked]
        self._parameterNode.rois = [node for node in nodes if node is not None]

    def onAddBox(self) -> None:  # the user draws it; with a browser it remembers the frame shown
        app = slicer.app.applicationLogic()
        self._parameterNode.rois.append(mrml.place_box(
            slicer.mrmlScene, app.GetSelectionNode(), app.GetInteractionNode(),
            browser=self._parameterNode.inputSequenceBrowser))
        self.updateRoiList()

    def onRemoveBox(self) -> None:
        item = self.ui.roiListWidget.currentItem()
        if not self._busy and item is not None:
            slicer.mrmlScene.RemoveNode(slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole)))

    def onBrowseCheckpoint(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("SAM2 checkpoint"), "", "PyTorch checkpoints (*.pt *.pth)")
        if path:
            self._parameterNode.customCheckpoint = path

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        allowed = mrml.available_actions(mrml.Request.from_parameter_node("segment", p)) if p else set()
        for action, button in self._buttons.items():
            button.enabled = action in allowed
        for button in (self.ui.includeButton, self.ui.excludeButton):
            button.enabled = "clicks" in allowed
        server = bool(p and p.engine == "server")
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit,
                       self.ui.testConnectionButton):
            widget.enabled = server
        for widget in (self.ui.modelComboBox, self.ui.checkpointPathLineEdit, self.ui.deviceComboBox,
                       self.ui.precisionComboBox, self.ui.imageSizeSpinBox,
                       self.ui.dependenciesButton):
            widget.enabled = not server
        self._updateTargetSegments()
        mrml.remember_engine_choices(p)  # the application settings: a new scene starts from them
        self.logic.background.follow(p)  # the slice shown, encoded before the click (None: stop)

    def run(self, action: str) -> None:
        """Every action button and click tool: its inputs, the engine (installs), one logic call."""
        if self._busy or self._parameterNode is None:
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(
                _("PolypSAM {action} failed.").format(action=action), waitCursor=True):
            mrml.check_inputs(mrml.Request.from_parameter_node(action, self._parameterNode))
            engine = None if action in mrml.MODEL_FREE_ACTIONS else self._engine()
            if engine is None and action not in mrml.MODEL_FREE_ACTIONS:
                return
            result = self.logic.runWithProgress(self.logic.request(
                action, self._parameterNode, segment=self._targetSegment(),
                multimask=self.ui.candidatesCheckBox.checked), engine)
            if result is not None:
                label = self.ui.clickStatusLabel if action in mrml.CLICK_ACTIONS else self.ui.statusLabel
                label.text = result.summary
            self._updateButtons()  # new segments; a newly loaded engine encodes the slice shown

    @contextlib.contextmanager
    def _busyPanel(self):
        """Disable the whole panel until the work ends: the main thread serves events while the model
        works, and nothing may start a second run, remove a box, undo or release the model."""
        if self._busy:
            raise RuntimeError("PolypSAM is busy")
        self._busy = True
        self._panel.enabled = False
        try:
            yield
        finally:
            self._panel.enabled = True
            self._busy = False

    def _engine(self):
        """The engine (installs, download consent), then a new output if none; ``None`` if declined."""
        p, token = self._parameterNode, self.ui.serverTokenLineEdit.text
        ready = p.engine == "server" or self.logic.ensureDependencies()
        engine = self.logic.engineFor(mrml.engine_settings(p, token), confirmDownload=True) if ready else None
        if engine is not None and p.outputSegmentation is None:
            p.outputSegmentation = mrml.new_segmentation(slicer.mrmlScene, p.inputVolume)
        return engine

    def onUndo(self) -> None:
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            segmentation = self._parameterNode.outputSegmentation
            ok = segmentation is not None and mrml.undo(segmentation)
            self.ui.statusLabel.text = _("Undone.") if ok else _("Nothing to undo.")
            self._updateTargetSegments()

    def onDependencies(self) -> None:
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Installing dependencies failed."),
                                                                waitCursor=True):
            self.logic.ensureDependencies()
            self.ui.engineStatusLabel.text = self.logic.dependencyMessage

    def onReleaseEngine(self) -> None:
        with self._busyPanel():
            self.logic.releaseEngine()
        self.ui.engineStatusLabel.text = _("Model released.")

    def onTestConnection(self) -> None:
        from polypsam.server.client import test_connection  # standard library only: no torch

        with slicer.util.tryWithErrorDisplay(_("Connection test failed."), waitCursor=True):
            self.ui.engineStatusLabel.text = test_connection(self._parameterNode.serverUrl,
                                                             self.ui.serverTokenLineEdit.text)

    def _targetSegment(self) -> str:  # the click tools' segment
        return self.ui.targetSegmentComboBox.currentText.strip() or "Polyp"

    def _updateTargetSegments(self) -> None:
        p, combo = self._parameterNode, self.ui.targetSegmentComboBox
        names = mrml.segment_names(p.outputSegmentation if p else None)
        if names != [combo.itemText(i) for i in range(combo.count)]:
            current = combo.currentText
            combo.clear()
            combo.addItems(names)
            combo.setEditText(current)

    def onPlaceClicks(self, kind: str) -> None:
        """Include/exclude tool (needs an input): place points in any view; each re-segments at once."""
        request = self._parameterNode and mrml.Request.from_parameter_node("clicks", self._parameterNode)
        if self._busy or not request or "clicks" not in mrml.available_actions(request):
            return slicer.util.showStatusMessage(_("PolypSAM clicks need an input image."), 3000)
        include, exclude = mrml.click_lists(slicer.mrmlScene, self._targetSegment())
        self.removeObservers(self.onClickPlaced)
        for node in (include, exclude):
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClickPlaced)
        app = slicer.app.applicationLogic()  # a click on a video frame records its frame
        mrml.place_clicks(app.GetSelectionNode(), app.GetInteractionNode(),
                          include if kind == "include" else exclude, browser=request.video_browser)

    def onClickPlaced(self, caller=None, event=None) -> None:  # after the markups event, not in it
        qt.QTimer.singleShot(0, lambda: self.run("clicks"))  # re-segment the clicked slice

    def onExport(self) -> None:  # the formats this Slicer can export; a package installed first
        import PythonQt
        from polypsam.mrml import exporting

        window, supports, ok = slicer.util.mainWindow(), exporting.export_formats(), PythonQt.BoolResult()
        fmt = qt.QInputDialog.getItem(window, _("Export"), "\n".join(  # Qt 5: Cancel returns an item
            [_("Format:"), *[s.reason for s in supports if s.status == "unavailable"]]),
            [s.feature for s in supports if s.status != "unavailable"], 0, False, ok)
        if not ok or not self.logic.ensureOptional(lambda: exporting.ensure_export_format(fmt)):
            return
        path = (qt.QFileDialog.getExistingDirectory(window, _("Export to folder")) if fmt == "png"
                else qt.QFileDialog.getSaveFileName(window, _("Export as"), "", f"{fmt} (*)"))
        if not path:
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            request = mrml.Request.from_parameter_node("segment", self._parameterNode)
            result = exporting.export_segmentation(request.segmentation_node,
                                                   request.reference_volume, path, fmt)
            self.ui.statusLabel.text = _("Exported to {path}").format(path=result.path)

    def onLoadVideo(self) -> None:
        """A video file (mp4/avi/mov...) or a folder of frames → a sequence with a browser."""
        from polypsam.mrml import video_files

        window = slicer.util.mainWindow()
        path = qt.QFileDialog.getOpenFileName(window, _("Load video"), "", _(
            "Videos (*.mp4 *.avi *.mov *.mkv *.webm);;All files (*)")) or \
            qt.QFileDialog.getExistingDirectory(window, _("...or a folder of frames"))
        if not path or (video_files.needs_video_packages(path) and not self.logic.ensureOptional(
                video_files.ensure_video_file_support)):  # imageio/PyAV, with consent
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Loading the video failed."),
                                                                waitCursor=True):
            dialog = slicer.util.createProgressDialog(windowTitle="PolypSAM", maximum=0,
                                                      labelText=_("Loading frames..."))

            def progress(done, total):
                dialog.maximum, dialog.value = max(int(total), 1), int(done)
                slicer.app.processEvents()
                if dialog.wasCanceled:
                    raise CancelledError("loading cancelled")

            try:
                browser = video_files.load_video(slicer.mrmlScene, path, progress=progress)
            finally:
                dialog.close()
            self._parameterNode.inputSequenceBrowser = browser
            self.ui.statusLabel.text = _("Loaded {n} frames.").format(
                n=browser.GetMasterSequenceNode().GetNumberOfDataNodes())


class PolypSAMLogic(ScriptedLoadableModuleLogic):
    """Runs PolypSAM actions with an engine it is given, also without the GUI: ``logic.session.run(
    mrml.Request("propagate", input_node=volume, rois=[roi], segmentation_node=segmentation),
    engine)``. The constructor does nothing expensive: no torch import, no installs, no model loads."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._engines = engines.EngineCache()
        self.session = mrml.Session(slicer.mrmlScene)  # the click tools' state; resets itself
        self.background = mrml.BackgroundEncoding(slicer.mrmlScene, lambda: self._engines.engine)
        self.dependencyMessage = ""

    def getParameterNode(self):  # a new scene's starts from the engine choices last made
        return mrml.with_engine_choices(PolypSAMParameterNode, super().getParameterNode())

    @property
    def worker(self):  # the engine's persistent worker thread: all model work runs there
        return self._engines.worker

    def cleanup(self) -> None:
        self.background.stop()
        self.releaseEngine()
        self.session.close()  # and PolypSAM's undo history

    def _install(self, ensure):
        """``ensure()``'s status (asks, then installs), or ``None`` after a failure that Slicer's
        installer already showed; another failure is raised."""
        try:
            return ensure()
        except dependencies.DependencyInstallError as exc:
            if exc.restart_needed:
                self._offerRestart(str(exc))
            if not exc.reported:
                raise
            self.dependencyMessage = str(exc)
            logging.error("PolypSAM: %s", exc)
            return None

    def ensureDependencies(self) -> bool:
        """First-use check/installation of torch and sam2 (asks before installing)."""
        status = self._install(dependencies.ensure_dependencies)
        if status is not None:
            self.dependencyMessage = status.message
            if status.restart_needed:
                self._offerRestart(status.message)
            elif status.declined:
                dependencies.show_dialog(slicer.util.warningDisplay, status.message, "PolypSAM")
        return bool(status and status.ready and not status.restart_needed)

    def ensureOptional(self, ensure) -> bool:
        """What an optional feature needs, installed with consent before any other dialog (a
        refusal is said in the status bar, a failure shown)."""
        with slicer.util.tryWithErrorDisplay(_("Installing the packages it needs failed.")):
            status = self._install(ensure)
            if status is not None and status.restart_needed:
                self._offerRestart(status.message)
            elif status is not None and status.declined:
                slicer.util.showStatusMessage(status.message, 5000)
            return bool(status and status.ready)

    @staticmethod
    def _offerRestart(message: str) -> None:
        if dependencies.confirm_dialog(
                message + "\n\n" + _("Restart Slicer now? (Save your scene first.)"),
                "PolypSAM: restart needed"):
            slicer.util.restart()

    def engineFor(self, settings: engines.EngineSettings, confirmDownload: bool = False):
        """The engine for ``settings`` (cached; loaded on its worker thread while Slicer repaints),
        asking before downloading weights; ``None`` if the user declines."""
        spec = engines.weights_to_download(settings)
        if spec is not None:
            from polypsam.checkpoints import cache_dir

            if confirmDownload and not dependencies.confirm_dialog(  # the normal cursor on 5.10
                    _("Download the weights of {name} ({description}) from\n{url}\ninto {folder}?").format(
                        name=spec.name, description=spec.description, url=spec.url, folder=cache_dir()),
                    "PolypSAM: download model weights"):
                return None
            slicer.util.showStatusMessage(_("Downloading {name}...").format(name=spec.name))
        with slicer.util.WaitCursor():
            return self._engines.get(settings, allow_download=spec is not None,
                                     while_waiting=slicer.app.processEvents)

    def releaseEngine(self) -> None:
        self._engines.close()

    def request(self, action: str, p: PolypSAMParameterNode, **fields):
        """``action``'s request (the Segment Editor's masking applies when it edits the output)."""
        editor = segmentEditorEditing(p.outputSegmentation)
        return self.session.request(action, p, editor_node=editor.mrmlSegmentEditorNode()
                                    if editor is not None else None, **fields)

    def runWithProgress(self, request, engine):
        """Run ``request`` with its model work on the engine's worker thread, polled here so Slicer
        repaints and a progress dialog can cancel it (nothing is written then); the Segment
        Editor's undo state is saved right before the write when it edits the output."""
        run = self.session.start(request, engine,
                                 mrml.RunContext(worker=self.worker if engine is not None else None))
        dialog = None
        if engine is not None:  # (choosing a candidate runs no model)
            dialog = slicer.util.createProgressDialog(
                windowTitle="PolypSAM", maximum=0,  # busy until the first report
                labelText=_("{action}...").format(action=request.action.capitalize()))
            dialog.setWindowModality(qt.Qt.WindowModal)
            dialog.connect("canceled()", run.cancel)
            dialog.show()
        try:
            while not run.wait(0.05):
                update = run.progress()
                if update is not None:
                    done, total, dialog.labelText = update
                    dialog.maximum = max(int(total), 1)
                    dialog.value = min(int(done), dialog.maximum)
                slicer.app.processEvents()
                if dialog.wasCanceled:
                    run.cancel()
            if run.cancelled:
                logging.info("PolypSAM %s cancelled; segments unchanged", request.action)
                slicer.util.showStatusMessage(_("Cancelled; segments unchanged."), 3000)
                return None
            run.check()
            editor = segmentEditorEditing(request.segmentation_node)
            if editor is not None:
                editor.saveStateForUndo()
            return run.write()
        finally:
            if dialog is not None:
                dialog.close()


class PolypSAMTest(ScriptedLoadableModuleTest):
    """The GUI scenario, then ``polypsam.mrml.scenarios`` (the test suite runs them on slicer-core
    too) with random-weight SAM2 tiny. Without torch and sam2 (the test installs nothing) these are
    reported skipped: Slicer's Reload and Test calls runTest() and counts SkipTest as a failure."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_parameter_node_drives_the_gui()
        if scenarios.skipped():
            self.delayDisplay(f"SAM2 scenarios {scenarios.skipped()}")
        else:
            self.test_sam2_scenarios()

    def test_sam2_scenarios(self):  # ctest runs each test_* alone: a skip is no failure there
        if scenarios.skipped():
            self.skipTest(scenarios.skipped())
        logic = PolypSAMLogic()
        try:
            scenarios.run_all(logic, scenarios.random_weight_engine(), slicer.app.processEvents,
                              before=lambda what: (self.setUp(), self.delayDisplay(what)))
        finally:
            logic.cleanup()
        self.delayDisplay("SAM2 scenarios passed")

    def test_parameter_node_drives_the_gui(self):
        self.delayDisplay("Parameter node and GUI stay in step")
        slicer.util.selectModule("PolypSAM")
        widget = slicer.modules.polypsam.widgetRepresentation().self()
        p = widget._parameterNode
        frame = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
        p.inputVolume = frame
        self.assertEqual(widget.ui.inputSelector.currentNode().GetID(), frame.GetID())
        p.keySlice = 3  # (not an engine choice: those are kept in the application settings)
        self.assertEqual(widget.ui.keySliceSpinBox.value, 3)
        widget.ui.windowPresetComboBox.currentIndex = WINDOW_CHOICES.index("lung")
        self.assertEqual(p.windowPreset, "lung")
        self.assertFalse(widget.ui.segmentButton.enabled)  # no box yet
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Box")
        items = [widget.ui.roiListWidget.item(i) for i in range(widget.ui.roiListWidget.count)]
        self.assertEqual([item.text() for item in items], ["Box"])
        items[0].setCheckState(qt.Qt.Checked)
        self.assertEqual([r.GetID() for r in p.rois], [roi.GetID()])
        self.assertTrue(widget.ui.segmentButton.enabled)
        self.assertFalse(widget.ui.propagateButton.enabled)  # an RGB frame has no slices
        slicer.mrmlScene.RemoveNode(roi)
        self.assertFalse(widget.ui.segmentButton.enabled)
        self.delayDisplay("Parameter node and GUI passed")
