"""PolypSAM: box-prompted SAM2 segmentation of polyps and lesions in 3D Slicer.

Module (metadata), ParameterNode (typed state saved with the scene), Widget (binds the .ui to
the logic and nothing more), Logic (runs operations with an engine it is given), Test (runs the
scenarios on generated data in real Slicer). The work itself lives in the Qt-free ``polypsam``
library shipped beside this file: ``polypsam.mrml`` (MRML in, engine, segments out; undo;
first-use installs) and ``polypsam.engines`` (the one engine factory). This folder holds no other
``.py``: Slicer would load each one as a module.
"""

import importlib.util
import logging
import os
import sys
from typing import Annotated, Optional, Union

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import (
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceBrowserNode,
    vtkMRMLVectorVolumeNode,
)



def ensureLibraryOnPath(moduleDir: str) -> Optional[str]:
    """Make ``import polypsam`` find the library shipped with the module.

    Installed extension: ``polypsam/`` sits beside ``PolypSAM.py`` (already on ``sys.path``).
    Source checkout added through "Additional module paths": it is in ``../PolypSAMLib``.
    Returns the folder put on ``sys.path`` (first, so the module's own copy wins), or ``None``.
    """
    moduleDir = os.path.abspath(moduleDir)
    for candidate in (moduleDir, os.path.join(os.path.dirname(moduleDir), "PolypSAMLib")):
        if os.path.isfile(os.path.join(candidate, "polypsam", "__init__.py")):
            if candidate in sys.path:
                sys.path.remove(candidate)
            sys.path.insert(0, candidate)
            return candidate
    return None


ensureLibraryOnPath(os.path.dirname(os.path.abspath(__file__)))

from polypsam import engines  # noqa: E402  (needs the library path above; no torch imported)
from polypsam.mrml import dependencies, operations, scene  # noqa: E402

MODEL_CHOICES = [name for name, _description in engines.model_choices()]
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]
WINDOW_CHOICES = ["display", "abdomen", "soft_tissue", "lung", "bone", "brain", "percentile"]
ENGINE_CHOICES = list(engines.ENGINE_KINDS)
DOCUMENTATION_URL = "https://github.com/polypsam/PolypSAM#readme"

#
# PolypSAM
#


class PolypSAM(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PolypSAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["PolypSAM maintainers (PolypSAM project)"]
        self.parent.helpText = _("""
Segment polyps and lesions with Meta's SAM2 from box ROIs: <b>Add box</b> on an endoscopy frame
or a CT slice, then <b>Segment</b> (2-D), <b>Propagate</b> (3-D through the box's slices),
<b>Track</b> (through a video, or the time points of a 4-D CT) or <b>Refine</b> (extra boxes on
other slices or frames). Each box gives a named segment tagged with its provenance (model,
checkpoint SHA256, box, key slice).
PyTorch and SAM2 are installed on first use and model weights downloaded, both only after you
agree. Results can be undone.
See the <a href="{url}">documentation</a> for the workflow, server mode and the command line.
""").format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
PolypSAM uses SAM2 by Meta AI (Apache-2.0) and follows the structure of 3D Slicer's scripted
module template by Jean-Christophe Fillion-Robin (Kitware), Andras Lasso (PerkLab) and Steve
Pieper (Isomics).
""")


#
# PolypSAMParameterNode
#


@parameterNodeWrapper
class PolypSAMParameterNode:
    """The module's state, saved with the scene.

    inputVolume - CT/MR volume or RGB frame. inputSequenceBrowser - video / 4-D sequence for Track.
    outputSegmentation - where segments go. rois - the box ROIs to use (checked in the list).
    keySlice, sliceRangeStart, sliceRangeEnd - -1 means automatic (from the box).
    engine, model, customCheckpoint, device, imageSize (0 = checkpoint's), windowPreset - settings;
    serverUrl - the PolypSAM server of the "server" engine (its token is not stored here).
    """

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
    imageSize: Annotated[int, WithinRange(0, 1024)] = 0
    windowPreset: Annotated[str, Choice(WINDOW_CHOICES)] = "display"
    serverUrl: str = ""

    def engineSettings(self, token: str = "") -> engines.EngineSettings:
        """The engine the settings describe; the server token comes from the widget (it is
        never stored in the parameter node, which is saved with the scene)."""
        return engines.EngineSettings(
            kind=self.engine, model=self.model, checkpoint=self.customCheckpoint.strip(),
            device=self.device, image_size=int(self.imageSize),
            server_url=self.serverUrl.strip(), token=token.strip())


#
# PolypSAMWidget
#


def saveSegmentEditorUndoState(segmentationNode) -> None:
    """Snapshot the Segment Editor's undo history when it edits ``segmentationNode``.

    Called by ``polypsam.mrml.undo`` just before a write, so the Segment Editor's Undo (Ctrl+Z)
    reverts PolypSAM's result like any other edit. PolypSAM's own Undo button works regardless.
    """
    editor = segmentEditorEditing(segmentationNode)
    if editor is not None:
        editor.saveStateForUndo()


def segmentEditorEditing(segmentationNode):
    """The Segment Editor's editor widget when it is editing ``segmentationNode``, else ``None``.

    Slicer sets slicer.modules.SegmentEditorWidget once that widget exists; asking the module for
    its widgetRepresentation() would build the Segment Editor just to find it edits nothing.
    """
    widget = getattr(slicer.modules, "SegmentEditorWidget", None)
    editor = getattr(widget, "editor", None)
    if editor is None or segmentationNode is None:
        return None
    edited = editor.segmentationNode()
    if edited is None or edited.GetID() != segmentationNode.GetID():
        return None
    return editor


class PolypSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the logic: parameter node through connectGui, buttons to logic calls."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingRoiList = False

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PolypSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._panel = uiWidget

        self.logic = PolypSAMLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.updateRoiList)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.updateRoiList)

        self.ui.addBoxButton.connect("clicked(bool)", self.onAddBox)
        self.ui.removeBoxButton.connect("clicked(bool)", self.onRemoveBox)
        self.ui.roiListWidget.connect("itemChanged(QListWidgetItem*)", self.onRoiItemChanged)
        self.ui.segmentButton.connect("clicked(bool)", lambda: self.run("segment"))
        self.ui.propagateButton.connect("clicked(bool)", lambda: self.run("propagate"))
        self.ui.trackButton.connect("clicked(bool)", lambda: self.run("track"))
        self.ui.refineButton.connect("clicked(bool)", lambda: self.run("refine"))
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.checkpointBrowseButton.connect("clicked(bool)", self.onBrowseCheckpoint)
        self.ui.dependenciesButton.connect("clicked(bool)", self.onDependencies)
        self.ui.releaseEngineButton.connect("clicked(bool)", self.onReleaseEngine)
        self.ui.loadVideoButton.connect("clicked(bool)", self.onLoadVideo)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        self.ui.includeButton.connect("clicked(bool)", lambda: self.onPlaceClicks("include"))
        self.ui.excludeButton.connect("clicked(bool)", lambda: self.onPlaceClicks("exclude"))
        self.ui.nextCandidateButton.connect("clicked(bool)", self.onNextCandidate)
        self.ui.propagateClicksButton.connect("clicked(bool)", lambda: self.onClickOperation("propagate"))
        self.ui.startFromSegmentButton.connect("clicked(bool)", lambda: self.onClickOperation("start"))
        self._clickLists = None  # (include, exclude) point lists being observed
        self._lastClicks = None  # the last click result (its candidates)
        self._lastPropagation = None  # the last propagation: a new click re-runs only what it affects
        self._shortcuts = []
        for key, kind in (("a", "include"), ("s", "exclude")):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda kind=kind: self.onPlaceClicks(kind))
            shortcut.setEnabled(False)
            self._shortcuts.append(shortcut)
        from polypsam import mrml

        mrml.add_before_write_hook(saveSegmentEditorUndoState)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        from polypsam import mrml

        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self.removeObservers()
        mrml.remove_before_write_hook(saveSegmentEditorUndoState)
        if self.logic is not None:
            self.logic.releaseEngine()
        mrml.forget_undo_history()

    def enter(self) -> None:
        self.initializeParameterNode()
        for shortcut in self._shortcuts:  # A / S place include / exclude clicks while shown
            shortcut.setEnabled(True)

    def exit(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        from polypsam import mrml

        mrml.forget_undo_history()  # PolypSAM's undo states hold the closing scene's segments

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
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

    # -- boxes -------------------------------------------------------------------------------
    def updateRoiList(self, caller=None, event=None) -> None:
        """Show every ROI of the scene; checked = in the parameter node's ``rois``."""
        import qt

        if self._parameterNode is None or self._updatingRoiList:
            return
        self._updatingRoiList = True
        try:
            chosen = {n.GetID() for n in self._parameterNode.rois if n is not None}
            self.ui.roiListWidget.clear()
            for roi in slicer.util.getNodesByClass("vtkMRMLMarkupsROINode"):
                item = qt.QListWidgetItem(roi.GetName())
                item.setData(qt.Qt.UserRole, roi.GetID())
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if roi.GetID() in chosen else qt.Qt.Unchecked)
                self.ui.roiListWidget.addItem(item)
        finally:
            self._updatingRoiList = False

    def onRoiItemChanged(self, item) -> None:
        import qt

        if self._updatingRoiList or self._parameterNode is None:
            return
        rois = []
        for row in range(self.ui.roiListWidget.count):
            it = self.ui.roiListWidget.item(row)
            if it.checkState() == qt.Qt.Checked:
                node = slicer.mrmlScene.GetNodeByID(it.data(qt.Qt.UserRole))
                if node is not None:
                    rois.append(node)
        self._parameterNode.rois = rois

    def onAddBox(self) -> None:
        roi = self.logic.addBox(browser=self._parameterNode.inputSequenceBrowser)
        self._parameterNode.rois.append(roi)
        self.updateRoiList()

    def onRemoveBox(self) -> None:
        import qt

        if getattr(self, "_busy", False):
            return
        item = self.ui.roiListWidget.currentItem()
        if item is not None:
            self.logic.removeBox(slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole)))

    def onBrowseCheckpoint(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("SAM2 checkpoint"), "", "PyTorch checkpoints (*.pt *.pth)")
        if path:
            self._parameterNode.customCheckpoint = path

    # -- actions -----------------------------------------------------------------------------
    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        hasBoxes = bool(p and any(roi is not None for roi in p.rois))  # a removed ROI reads None
        hasVolume = bool(p and p.inputVolume)
        isVector = bool(hasVolume and p.inputVolume.IsA("vtkMRMLVectorVolumeNode"))
        self.ui.segmentButton.enabled = hasBoxes and hasVolume
        self.ui.refineButton.enabled = hasBoxes and hasVolume
        self.ui.propagateButton.enabled = hasBoxes and hasVolume and not isVector
        self.ui.trackButton.enabled = hasBoxes and bool(p and p.inputSequenceBrowser)
        self.ui.undoButton.enabled = bool(p and p.outputSegmentation)
        self.ui.exportButton.enabled = bool(p and p.outputSegmentation and self._exportReference())
        isVolume = hasVolume and not isVector
        for button in (self.ui.includeButton, self.ui.excludeButton, self.ui.nextCandidateButton):
            button.enabled = hasVolume
        self.ui.propagateClicksButton.enabled = isVolume or self._videoBrowser() is not None
        self.ui.startFromSegmentButton.enabled = isVolume and bool(p.outputSegmentation)
        server = bool(p and p.engine == "server")
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit,
                       self.ui.testConnectionButton):
            widget.enabled = server
        for widget in (self.ui.modelComboBox, self.ui.checkpointPathLineEdit, self.ui.deviceComboBox,
                       self.ui.imageSizeSpinBox, self.ui.dependenciesButton):
            widget.enabled = not server
        self._updateTargetSegments()

    def run(self, operation: str) -> None:
        """One button: dependencies (first use), engine (with download consent), then the work.

        The main thread serves events while the model works, so a second click must not start
        a second run: the panel is disabled and ``_busy`` guards it.
        """
        if getattr(self, "_busy", False):
            return
        with self._busyPanel():
            self._run(operation)

    def _busyPanel(self):
        """Disable the whole panel (every button, selector and list) until the work ends: the
        main thread serves events while the model works, and nothing may start a second run,
        remove a box, undo or release the model meanwhile."""
        import contextlib

        @contextlib.contextmanager
        def busy():
            if getattr(self, "_busy", False):
                raise RuntimeError("PolypSAM is busy")
            self._busy = True
            self._panel.enabled = False
            try:
                yield
            finally:
                self._panel.enabled = True
                self._busy = False

        return busy()

    def _run(self, operation: str) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("PolypSAM {operation} failed.").format(operation=operation),
                                             waitCursor=True):
            engine = self._engine()
            if engine is None:
                return
            result = self.logic.runWithProgress(operation, p, engine)
            if result is not None:
                self.ui.statusLabel.text = result.summary

    def onUndo(self) -> None:
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            ok = self.logic.undo(self._parameterNode.outputSegmentation)
            self.ui.statusLabel.text = _("Undone.") if ok else _("Nothing to undo.")

    def onDependencies(self) -> None:
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Installing dependencies failed."),
                                                                waitCursor=True):
            ready = self.logic.ensureDependencies()
            self.ui.engineStatusLabel.text = self.logic.dependencyMessage
            del ready

    def onReleaseEngine(self) -> None:
        with self._busyPanel():
            self.logic.releaseEngine()
        self.ui.engineStatusLabel.text = _("Model released.")

    # -- clicks and candidates -----------------------------------------------------------------
    def _targetSegment(self) -> str:
        return self.ui.targetSegmentComboBox.currentText.strip() or "Polyp"

    def _updateTargetSegments(self) -> None:
        p = self._parameterNode
        combo = self.ui.targetSegmentComboBox
        current = combo.currentText
        names = []
        if p and p.outputSegmentation:
            segmentation = p.outputSegmentation.GetSegmentation()
            names = [segmentation.GetNthSegment(n).GetName()
                     for n in range(segmentation.GetNumberOfSegments())]
        if names != [combo.itemText(i) for i in range(combo.count)]:
            combo.clear()
            combo.addItems(names)
            combo.setEditText(current)

    def onPlaceClicks(self, kind: str) -> None:
        """Include/exclude tool: place points in any slice view; each one re-segments at once."""
        if getattr(self, "_busy", False) or self._parameterNode is None:
            return
        include, exclude = self.logic.clickLists(self._targetSegment())
        if self._clickLists != (include, exclude):
            for node in self._clickLists or ():
                self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                    self.onClickPlaced)
            for node in (include, exclude):
                self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                 self.onClickPlaced)
            self._clickLists = (include, exclude)
            self._lastClicks = self._lastPropagation = None
        self.logic.placeClicks(include if kind == "include" else exclude,
                               browser=self._videoBrowser())

    def _videoBrowser(self):
        """The sequence browser when the clicks go on a video's frames (the input is its proxy
        frame, or no input and a browser of RGB frames), else ``None``."""
        p = self._parameterNode
        browser = p.inputSequenceBrowser if p else None
        if browser is None:
            return None
        master = browser.GetMasterSequenceNode()
        proxy = browser.GetProxyNode(master) if master is not None else None
        if proxy is None or not proxy.IsA("vtkMRMLVectorVolumeNode"):
            return None
        if p.inputVolume is not None and p.inputVolume.GetID() != proxy.GetID():
            return None
        return browser

    def _engineSettings(self):
        """The settings panel's choices (the server token is kept out of the scene)."""
        return self._parameterNode.engineSettings(token=self.ui.serverTokenLineEdit.text)

    def onTestConnection(self) -> None:
        """One line about the server, or a message naming what is wrong (down, wrong URL or
        token, version mismatch, timeout)."""
        with slicer.util.tryWithErrorDisplay(_("Connection test failed."), waitCursor=True):
            self.ui.engineStatusLabel.text = self.logic.testConnection(
                self._parameterNode.serverUrl, self.ui.serverTokenLineEdit.text)

    def _engine(self):
        """The engine for the settings: first-use installs (in-process only), an output
        segmentation, download consent; ``None`` if the user declined."""
        p = self._parameterNode
        if p.engine != "server" and not self.logic.ensureDependencies():
            return None
        if p.outputSegmentation is None:
            p.outputSegmentation = self.logic.createSegmentation(p.inputVolume)
        return self.logic.engineFor(self._engineSettings(), confirmDownload=True)

    def onClickPlaced(self, caller=None, event=None) -> None:
        """A click landed: re-segment its slice (decoder only where the slice is encoded)."""
        if getattr(self, "_busy", False) or self._clickLists is None:
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("PolypSAM click failed."),
                                                                waitCursor=True):
            engine = self._engine()
            if engine is None:
                return
            p = self._parameterNode
            include, exclude = self._clickLists
            self._lastClicks = self.logic.segmentWithClicks(
                engine, p, self._targetSegment(), include, exclude,
                multimask=self.ui.candidatesCheckBox.checked)
            self._showClickResult(self._lastClicks)

    def _showClickResult(self, result) -> None:
        text = result.summary
        if getattr(result, "candidates", None):
            k = max(result.candidates)
            _masks, scores = result.candidates[k]
            chosen = result.chosen[k]
            text += _(" — candidate {n}/{total} on slice {k} (predicted IoU {iou:.2f})").format(
                n=chosen + 1, total=len(scores), k=k, iou=scores[chosen])
        self.ui.clickStatusLabel.text = text
        self._updateTargetSegments()

    def onNextCandidate(self) -> None:
        result = self._lastClicks
        if result is None or not result.candidates:
            self.ui.clickStatusLabel.text = _("No candidates: check 'Show 3 candidates' and click.")
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Choosing a candidate failed."),
                                                                waitCursor=True):
            k = max(result.candidates)
            index = (result.chosen[k] + 1) % len(result.candidates[k][1])
            self.logic.chooseCandidate(self._parameterNode, result, k, index)
            self._showClickResult(result)

    def onClickOperation(self, operation: str) -> None:
        """Propagate clicks, or Start from segment (the segment seeds a propagation)."""
        if getattr(self, "_busy", False):
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("PolypSAM failed."), waitCursor=True):
            engine = self._engine()
            if engine is None:
                return
            p = self._parameterNode
            include, exclude = self.logic.clickLists(self._targetSegment())
            browser = self._videoBrowser()
            if browser is not None and operation == "propagate":  # clicks through the video
                result = self.logic.trackClicks(engine, p, browser, self._targetSegment(),
                                                include, exclude, previous=self._lastPropagation)
                self._lastPropagation = result.tracking
            else:
                result = self.logic.propagateClicks(
                    engine, p, self._targetSegment(), include, exclude,
                    fromSegment=operation == "start", previous=self._lastPropagation)
                self._lastPropagation = result.propagation
            self._showClickResult(result)

    def _exportReference(self):
        """The volume whose grid an export uses: the input, else the sequence's proxy."""
        p = self._parameterNode
        if p.inputVolume is not None:
            return p.inputVolume
        browser = p.inputSequenceBrowser
        master = browser.GetMasterSequenceNode() if browser is not None else None
        return browser.GetProxyNode(master) if master is not None else None

    def onExport(self) -> None:
        import qt

        formats, unavailable = self.logic.exportFormats()
        fmt = qt.QInputDialog.getItem(slicer.util.mainWindow(), _("Export"),
                                      "\n".join([_("Format:"), *unavailable]), formats, 0, False)
        if not fmt or not self._readyWithConsent(lambda: self.logic.ensureExportFormat(fmt)):
            return
        if fmt == "png":
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export to folder"))
        else:
            path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export as"), "",
                                                  f"{fmt} (*)")
        if not path:
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            result = self.logic.exportSegmentation(self._parameterNode.outputSegmentation,
                                                   self._exportReference(), path, fmt)
            self.ui.statusLabel.text = _("Exported to {path}").format(path=result.path)

    @staticmethod
    def _readyWithConsent(ensure) -> bool:
        """Run a logic ``ensure...`` (consent, then pip) before any other dialog; errors shown."""
        ready = False
        with slicer.util.tryWithErrorDisplay(_("Installing the packages it needs failed.")):
            ready = ensure()
        return ready

    def onLoadVideo(self) -> None:
        """A video file (mp4/avi/mov...) or a folder of frames → a sequence with a browser."""
        import qt

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Load video"), "",
            _("Videos (*.mp4 *.avi *.mov *.mkv *.webm);;All files (*)"))
        if not path:
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                       _("...or a folder of frames"))
        if not path or not self._readyWithConsent(lambda: self.logic.ensureVideoFiles(path)):
            return
        with self._busyPanel(), slicer.util.tryWithErrorDisplay(_("Loading the video failed."),
                                                                waitCursor=True):
            dialog = slicer.util.createProgressDialog(windowTitle="PolypSAM",
                                                      labelText=_("Loading frames..."), maximum=0)
            try:
                def progress(done, total):
                    dialog.maximum = max(int(total), 1)
                    dialog.value = int(done)
                    slicer.app.processEvents()
                    if dialog.wasCanceled:
                        from polypsam.errors import CancelledError

                        raise CancelledError("loading cancelled")

                browser = self.logic.loadVideo(path, progress=progress)
            finally:
                dialog.close()
            self._parameterNode.inputSequenceBrowser = browser
            self.ui.statusLabel.text = _("Loaded {n} frames.").format(
                n=browser.GetMasterSequenceNode().GetNumberOfDataNodes())


#
# PolypSAMLogic
#


class PolypSAMLogic(ScriptedLoadableModuleLogic):
    """Runs PolypSAM operations on MRML nodes with an engine it is given.

    Usable without the GUI::

        logic = PolypSAMLogic()
        engine = logic.engineFor(engines.EngineSettings(model="sam2.1_hiera_tiny"))
        logic.run("propagate", engine, operations.Request(input_node=volumeNode,
                  rois=[roiNode], segmentation_node=segmentationNode))

    or with any object implementing ``polypsam.engine.Engine``. The constructor does nothing
    expensive: no imports of torch, no installs, no model loads.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._engines = engines.EngineCache()
        self.dependencyMessage = ""

    def getParameterNode(self):
        return PolypSAMParameterNode(super().getParameterNode())

    # -- dependencies and engines (settings panel) ------------------------------------------
    def ensureDependencies(self) -> bool:
        """First-use check/installation of torch and sam2 (asks before installing)."""
        try:
            status = dependencies.ensure_dependencies()
        except dependencies.DependencyInstallError as exc:
            if exc.restart_needed:
                self._offerRestart(str(exc))
            if exc.reported:  # Slicer's installer already showed this failure: no second dialog
                self.dependencyMessage = str(exc)
                logging.error("PolypSAM: %s", exc)
                return False
            raise
        self.dependencyMessage = status.message
        if status.restart_needed:
            self._offerRestart(status.message)
            return False
        if status.declined:
            slicer.util.warningDisplay(status.message, windowTitle="PolypSAM")
        return status.ready

    @staticmethod
    def _offerRestart(message: str) -> None:
        if slicer.util.confirmOkCancelDisplay(
            message + "\n\n" + _("Restart Slicer now? (Save your scene first.)"),
            windowTitle="PolypSAM: restart needed",
        ):
            slicer.util.restart()

    def engineFor(self, settings: engines.EngineSettings, confirmDownload: bool = False):
        """The engine for ``settings`` (cached); asks before downloading weights.

        Weights are downloaded and loaded on the engine's own worker thread while Slicer
        repaints. Returns ``None`` if the user declines the download.
        """
        spec = engines.weights_to_download(settings)
        if spec is not None:
            from polypsam.checkpoints import cache_dir

            if confirmDownload and not slicer.util.confirmOkCancelDisplay(
                _("Download the weights of {name} ({description}) from\n{url}\ninto {folder}?").format(
                    name=spec.name, description=spec.description, url=spec.url, folder=cache_dir()),
                windowTitle="PolypSAM: download model weights",
            ):
                return None
            slicer.util.showStatusMessage(_("Downloading {name}...").format(name=spec.name))
        with slicer.util.WaitCursor():
            return self._engines.get(settings, allow_download=spec is not None,
                                     while_waiting=slicer.app.processEvents)

    def releaseEngine(self) -> None:
        self._engines.close()

    @staticmethod
    def testConnection(url: str, token: str = "") -> str:
        """Check a PolypSAM server (standard library only: works without torch in Slicer)."""
        from polypsam.server.client import test_connection

        return test_connection(url, token)

    # -- scene helpers -----------------------------------------------------------------------
    @staticmethod
    def addBox(name: str = "Polyp", browser=None):
        """A new ROI placed interactively in the slice views (click-drag or two corners).

        With a sequence browser, the ROI remembers the frame shown when it is placed.
        """
        appLogic = slicer.app.applicationLogic()
        return scene.place_box(slicer.mrmlScene, appLogic.GetSelectionNode(),
                               appLogic.GetInteractionNode(), name, browser=browser)

    @staticmethod
    def removeBox(roi) -> None:
        if roi is not None:
            slicer.mrmlScene.RemoveNode(roi)

    @staticmethod
    def createSegmentation(referenceVolume=None):
        return scene.new_segmentation(slicer.mrmlScene, referenceVolume)

    @staticmethod
    def undo(segmentationNode) -> bool:
        from polypsam import mrml

        return segmentationNode is not None and mrml.undo(segmentationNode)

    @staticmethod
    def loadVideo(path: str, progress=None):
        """A video file or frame folder as a sequence of RGB frames with a browser."""
        from polypsam.mrml import video_files

        return video_files.load_video(slicer.mrmlScene, path, progress=progress)

    # -- clicks and candidates (headless) -------------------------------------------------------
    @staticmethod
    def clickLists(segment: str):
        """The include and exclude point lists of ``segment`` (made on first use)."""
        from polypsam.mrml import clicks

        return clicks.click_lists(slicer.mrmlScene, segment)

    @staticmethod
    def placeClicks(pointList, browser=None) -> None:
        """Place mode for ``pointList``; with a video ``browser`` each point records its frame."""
        appLogic = slicer.app.applicationLogic()
        scene.place_clicks(appLogic.GetSelectionNode(), appLogic.GetInteractionNode(), pointList,
                           browser=browser)

    @staticmethod
    def segmentEditorNodeFor(segmentationNode):
        """The Segment Editor's node when it edits ``segmentationNode`` (its masking settings
        then apply to PolypSAM's writes), else ``None``."""
        editor = segmentEditorEditing(segmentationNode)
        return editor.mrmlSegmentEditorNode() if editor is not None else None

    def _background(self):
        worker = self._engines.worker
        return lambda work: worker.run(work, while_waiting=slicer.app.processEvents)

    def segmentWithClicks(self, engine, p, segment, include, exclude, multimask=False):
        """Re-segment every clicked slice of ``segment`` (its current mask as SAM2's mask input)."""
        from polypsam.mrml import interactive

        seg = p.outputSegmentation
        exists = bool(seg.GetSegmentation().GetSegmentIdBySegmentName(segment))
        return interactive.segment_with_clicks(
            engine, p.inputVolume, seg, segment, include=include, exclude=exclude,
            use_segment=exists, multimask=multimask, editor_node=self.segmentEditorNodeFor(seg),
            window_preset=p.windowPreset, background=self._background())

    def chooseCandidate(self, p, result, sliceK: int, index: int) -> None:
        from polypsam.mrml import interactive

        interactive.choose_candidate(p.outputSegmentation, p.inputVolume, result, sliceK, index,
                                     editor_node=self.segmentEditorNodeFor(p.outputSegmentation))

    def propagateClicks(self, engine, p, segment, include, exclude, fromSegment=False, previous=None):
        """Propagate ``segment`` (from its box ROI, key-slice clicks, or with ``fromSegment`` its own
        mask); clicks elsewhere condition SAM2; ``previous`` limits the re-run to what changed."""
        from polypsam.mrml import interactive
        from polypsam.propagation import PropagationResult

        rois = [r for r in p.rois if r is not None]
        previous = previous if isinstance(previous, PropagationResult) else None
        return interactive.propagate_with_clicks(
            engine, p.inputVolume, p.outputSegmentation, segment, include=include,
            exclude=exclude, roi=None if fromSegment or not rois else rois[0],
            from_segment=fromSegment, key_slice=p.keySlice, previous=previous,
            editor_node=self.segmentEditorNodeFor(p.outputSegmentation),
            window_preset=p.windowPreset, background=self._background())

    def trackClicks(self, engine, p, browser, segment, include, exclude, previous=None):
        """Track ``segment`` through a video: clicked frames condition SAM2 (their frame recorded
        when placed); with ``previous`` only the directions a new click affects run again."""
        from polypsam.mrml import video_clicks
        from polypsam.propagation import TrackResult

        rois = [r for r in p.rois if r is not None]
        return video_clicks.track_with_clicks(
            engine, browser, p.outputSegmentation, segment, include=include, exclude=exclude,
            roi=rois[0] if rois else None,
            previous=previous if isinstance(previous, TrackResult) else None,
            background=self._background())

    @staticmethod
    def exportFormats():
        """``(formats, unavailable)``: the formats to offer (some install a package first, with
        consent) and one line for each format this Slicer cannot export."""
        from polypsam.mrml import exporting

        supports = exporting.export_formats()
        return ([s.feature for s in supports if s.status != "unavailable"],
                [s.reason for s in supports if s.status == "unavailable"])

    def ensureExportFormat(self, fmt: str) -> bool:
        """Install, with consent, what ``fmt`` still needs (e.g. pycocotools for COCO)."""
        from polypsam.mrml import exporting

        return self._ensureOptional(lambda: exporting.ensure_export_format(fmt))

    def ensureVideoFiles(self, path: str) -> bool:
        """True for a folder of frames; for a video file, imageio/PyAV installed with consent."""
        from polypsam.mrml import video_files

        if not video_files.needs_video_packages(path):
            return True
        return self._ensureOptional(video_files.ensure_video_file_support)

    def _ensureOptional(self, ensure) -> bool:
        try:
            status = ensure()
        except dependencies.DependencyInstallError as exc:
            if exc.reported:  # Slicer's installer already showed this failure
                logging.error("PolypSAM: %s", exc)
                return False
            raise
        if status.restart_needed:
            self._offerRestart(status.message)
        elif status.declined:
            slicer.util.showStatusMessage(status.message, 5000)
        return status.ready

    @staticmethod
    def exportSegmentation(segmentationNode, referenceVolume, path: str, fmt: str):
        """Export with names, colours, terminology and provenance (DICOM SEG: the volume's
        source series from Slicer's DICOM database)."""
        from polypsam.mrml import exporting

        return exporting.export_segmentation(segmentationNode, referenceVolume, path, fmt)

    # -- operations (headless) ---------------------------------------------------------------
    @staticmethod
    def request(p: PolypSAMParameterNode):
        """The parameter node as an operations request."""
        return operations.Request(
            input_node=p.inputVolume, browser_node=p.inputSequenceBrowser,
            rois=list(p.rois), segmentation_node=p.outputSegmentation,
            key_slice=p.keySlice, slice_range=(p.sliceRangeStart, p.sliceRangeEnd),
            window_preset=p.windowPreset,
            editor_node=PolypSAMLogic.segmentEditorNodeFor(p.outputSegmentation))

    def run(self, operation: str, engine, request, progress=None, cancel=None, background=None):
        """Run ``operation`` (segment, propagate, track, refine): read the scene, compute (through
        ``background`` if given, e.g. on the engine's worker thread), write the scene."""
        return operations.run(operation, engine, request, progress=progress, cancel=cancel,
                              background=background)

    def runWithProgress(self, operation: str, p: PolypSAMParameterNode, engine):
        """Run an operation with its model work on the engine's worker thread and a cancellable
        dialog.

        The scene is read and written here, on the main thread; SAM2 runs on the engine's
        persistent worker, so Slicer repaints and the dialog's Cancel works during a long
        encoding. The dialog is window-modal and the module panel is disabled meanwhile.
        Progress from the worker goes through a ``ProgressRelay`` that the main thread applies
        between waits. Cancel sets the CancelToken, checked per frame; nothing is written unless
        the whole run succeeded.
        """
        import qt
        from polypsam.background import ProgressRelay
        from polypsam.engine import CancelToken
        from polypsam.errors import CancelledError

        cancel = CancelToken()
        relay = ProgressRelay()
        dialog = slicer.util.createProgressDialog(
            windowTitle="PolypSAM", labelText=_("{operation}...").format(operation=operation.capitalize()),
            maximum=0)  # busy indicator until the first progress report
        dialog.setWindowModality(qt.Qt.WindowModal)
        dialog.connect("canceled()", cancel.cancel)
        dialog.show()

        def whileWaiting() -> None:
            update = relay.take()
            if update is not None:
                done, total, message = update
                dialog.maximum = max(int(total), 1)
                dialog.value = min(int(done), dialog.maximum)
                dialog.labelText = message
            slicer.app.processEvents()
            if dialog.wasCanceled:
                cancel.cancel()

        worker = self._engines.worker

        def background(work):
            return worker.run(work, while_waiting=whileWaiting)

        try:
            return self.run(operation, engine, self.request(p), relay, cancel, background)
        except CancelledError:
            logging.info("PolypSAM %s cancelled; segments unchanged", operation)
            slicer.util.showStatusMessage(_("Cancelled; segments unchanged."), 3000)
            return None
        finally:
            dialog.close()


#
# PolypSAMTest
#


class PolypSAMTest(ScriptedLoadableModuleTest):
    """Scenarios on generated data in real Slicer, with a random-weight SAM2 tiny checkpoint.

    Needs torch and sam2 in Slicer's Python (the test does not install them). Random weights
    make masks meaningless; the test checks that the whole path runs and writes where it should.
    """

    CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
    IMAGE_SIZE = 256

    def setUp(self):
        slicer.mrmlScene.Clear()

    @staticmethod
    def missingModelPackages() -> list:
        """torch/sam2 where they are absent (e.g. on the extensions build factory)."""
        return [name for name in ("torch", "sam2") if importlib.util.find_spec(name) is None]

    def runTest(self):
        self.setUp()
        self.test_parameter_node_drives_the_gui()
        missing = self.missingModelPackages()
        if missing:
            self.skipTest(f"{' and '.join(missing)} not installed: the SAM2 scenarios are skipped"
                          " (the GUI scenario ran)")
        self.setUp()
        self.test_segment_rgb_frame()
        self.setUp()
        self.test_propagate_volume()
        self.setUp()
        self.test_track_4d_volume()
        self.setUp()
        self.test_cancel_leaves_segments_untouched()

    # -- fixtures ----------------------------------------------------------------------------
    def _engine(self):
        if getattr(PolypSAMTest, "_cachedEngine", None) is None:
            import tempfile

            import torch
            from polypsam.sam2_adapter.model import build_model, save_checkpoint

            torch.manual_seed(0)
            model = build_model(self.CONFIG, None, "cpu")
            folder = tempfile.mkdtemp(prefix="polypsam-test-")
            path = save_checkpoint(model, os.path.join(folder, "sam2.1_hiera_tiny_random.pt"))
            del model
            settings = engines.EngineSettings(model="sam2.1_hiera_tiny", checkpoint=str(path),
                                              config=self.CONFIG, device="cpu",
                                              image_size=self.IMAGE_SIZE)
            PolypSAMTest._cachedEngine = engines.create_engine(settings)
        return PolypSAMTest._cachedEngine

    @staticmethod
    def _roi(center, size, name="Polyp"):
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
        roi.SetCenter(center)
        roi.SetSize(size)
        return roi

    # -- scenarios ---------------------------------------------------------------------------
    def test_parameter_node_drives_the_gui(self):
        import qt

        self.delayDisplay("Parameter node and GUI stay in step")
        slicer.util.selectModule("PolypSAM")
        widget = slicer.modules.polypsam.widgetRepresentation().self()
        p = widget._parameterNode
        frame = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
        p.inputVolume = frame
        self.assertEqual(widget.ui.inputSelector.currentNode().GetID(), frame.GetID())
        p.imageSize = 512
        self.assertEqual(widget.ui.imageSizeSpinBox.value, 512)
        widget.ui.windowPresetComboBox.currentIndex = WINDOW_CHOICES.index("lung")
        self.assertEqual(p.windowPreset, "lung")
        self.assertFalse(widget.ui.segmentButton.enabled)  # no box yet
        roi = self._roi([0, 0, 0], [10, 10, 1], "Box")
        items = [widget.ui.roiListWidget.item(i) for i in range(widget.ui.roiListWidget.count)]
        self.assertEqual([item.text() for item in items], ["Box"])
        items[0].setCheckState(qt.Qt.Checked)
        self.assertEqual([r.GetID() for r in p.rois], [roi.GetID()])
        self.assertTrue(widget.ui.segmentButton.enabled)
        self.assertFalse(widget.ui.propagateButton.enabled)  # an RGB frame has no slices
        slicer.mrmlScene.RemoveNode(roi)
        self.assertFalse(widget.ui.segmentButton.enabled)
        self.delayDisplay("Parameter node and GUI passed")

    def test_segment_rgb_frame(self):
        import numpy as np

        self.delayDisplay("2-D segment on a generated RGB frame")
        height, width = 96, 128
        yy, xx = np.mgrid[:height, :width]
        rgb = np.full((height, width, 3), 60, dtype=np.uint8)
        rgb[(yy - 48) ** 2 + (xx - 50) ** 2 < 20 ** 2] = (210, 120, 110)
        frame = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
        slicer.util.updateVolumeFromArray(frame, rgb[None])
        # IJK = RAS up to the sign of I/J for an identity-spacing frame: place the ROI in IJK.
        ijkToRas = vtk.vtkMatrix4x4()
        frame.GetIJKToRASMatrix(ijkToRas)
        center = ijkToRas.MultiplyPoint([50, 48, 0, 1])[:3]
        roi = self._roi(center, [44, 44, 1])
        seg = PolypSAMLogic.createSegmentation(frame)
        result = PolypSAMLogic().run("segment", self._engine(), operations.Request(
            input_node=frame, rois=[roi], segmentation_node=seg))
        self.assertEqual(list(result.segment_ids), ["Polyp"])
        from polypsam import mrml

        labels = mrml.export_segment_labelmap(seg, frame)
        self.assertEqual(labels.shape, (1, height, width))
        self.assertIn("checkpoint_sha256", mrml.read_provenance(seg, "Polyp"))
        self.delayDisplay("2-D segment passed")

    def test_propagate_volume(self):
        import numpy as np

        self.delayDisplay("3-D propagate on a generated volume")
        depth, height, width = 12, 64, 64
        kk, yy, xx = np.mgrid[:depth, :height, :width]
        array = np.full((depth, height, width), -100, dtype=np.int16)
        array[(kk - 6) ** 2 / 16 + (yy - 32) ** 2 / 100 + (xx - 30) ** 2 / 100 < 1] = 60
        volume = slicer.util.addVolumeFromArray(array, name="ct")
        volume.SetSpacing(0.8, 0.8, 2.0)
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        center = ijkToRas.MultiplyPoint([30, 32, 6, 1])[:3]
        roi = self._roi(center, [20 * 0.8, 20 * 0.8, 7 * 2.0], "Lesion")
        seg = PolypSAMLogic.createSegmentation(volume)
        other = seg.GetSegmentation().AddEmptySegment("", "Other")
        # The model work runs in a worker thread while this (main) thread serves Qt events.
        from polypsam.background import run_in_worker

        pumped = []

        def whileWaiting():
            pumped.append(1)
            slicer.app.processEvents()

        result = PolypSAMLogic().run(
            "propagate", self._engine(),
            operations.Request(input_node=volume, rois=[roi], segmentation_node=seg),
            background=lambda work: run_in_worker(work, while_waiting=whileWaiting))
        self.assertIn("Lesion", result.segment_ids)
        self.assertGreater(len(pumped), 0)
        self.assertIsNotNone(seg.GetSegmentation().GetSegment(other))
        from polypsam import mrml

        self.assertEqual(mrml.read_provenance(seg, "Lesion").get("operation"), "propagate")
        import tempfile

        exported = PolypSAMLogic.exportSegmentation(
            seg, volume, os.path.join(tempfile.mkdtemp(prefix="polypsam-test-"), "lesion.seg.nrrd"),
            "seg.nrrd")
        self.assertTrue(os.path.isfile(exported.path))
        self.assertTrue(PolypSAMLogic.undo(seg))
        self.assertIsNone(seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion") or None)
        self.delayDisplay("3-D propagate passed")

    def test_track_4d_volume(self):
        import numpy as np

        self.delayDisplay("Track through the time points of a 4-D volume")
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "ct4d")
        for t in range(3):
            array = np.full((5, 48, 48), -80, dtype=np.int16)
            array[1:4, 16:30, 12 + 3 * t:26 + 3 * t] = 70
            volume = slicer.vtkMRMLScalarVolumeNode()
            slicer.util.updateVolumeFromArray(volume, array)
            volume.SetSpacing(0.8, 0.8, 2.0)
            sequence.SetDataNodeAtValue(volume, str(t))
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "ct4d browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(sequence)
        ijkToRas = vtk.vtkMatrix4x4()
        proxy.GetIJKToRASMatrix(ijkToRas)
        roi = self._roi(ijkToRas.MultiplyPoint([19, 23, 2, 1])[:3], [16 * 0.8, 16 * 0.8, 3 * 2.0], "Lesion")
        seg = PolypSAMLogic.createSegmentation(proxy)
        result = PolypSAMLogic().run("track", self._engine(), operations.Request(
            browser_node=browser, rois=[roi], segmentation_node=seg))
        self.assertIn("3 time point(s)", result.summary)
        self.assertEqual(browser.GetSequenceNode(seg).GetNumberOfDataNodes(), 3)
        self.delayDisplay("4-D track passed")

    def test_cancel_leaves_segments_untouched(self):
        import numpy as np
        from polypsam.engine import CancelToken
        from polypsam.errors import CancelledError

        self.delayDisplay("A cancelled run writes nothing")
        array = np.zeros((6, 48, 48), dtype=np.int16)
        array[2:5, 15:30, 15:30] = 100
        volume = slicer.util.addVolumeFromArray(array, name="ct")
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        roi = self._roi(ijkToRas.MultiplyPoint([22, 22, 3, 1])[:3], [20, 20, 4])
        seg = PolypSAMLogic.createSegmentation(volume)
        cancel = CancelToken()
        cancel.cancel()
        with self.assertRaises(CancelledError):
            PolypSAMLogic().run("propagate", self._engine(), operations.Request(
                input_node=volume, rois=[roi], segmentation_node=seg), cancel=cancel)
        self.assertEqual(seg.GetSegmentation().GetNumberOfSegments(), 0)
        self.delayDisplay("Cancel passed")
