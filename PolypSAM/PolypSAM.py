"""PolypSAM: box-prompted SAM2 segmentation of polyps and lesions in 3D Slicer.

Module (metadata), ParameterNode (typed state saved with the scene), Widget (binds the .ui to
the logic and nothing more), Logic (runs operations with an engine it is given), Test (runs the
scenarios on generated data in real Slicer). The work itself lives in Qt-free files beside this
one: ``PolypSAMOperations`` (MRML in, engine, segments out), ``PolypSAMEngines`` (the engine
factory the settings panel calls) and ``PolypSAMDependencies`` (first-use installs). The
``polypsam`` library is shipped with the module.
"""

import logging
import os
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

import PolypSAMDependencies

PolypSAMDependencies.ensure_library_on_path(os.path.dirname(os.path.abspath(__file__)))

import PolypSAMEngines  # noqa: E402  (needs the library path above)
import PolypSAMOperations  # noqa: E402

MODEL_CHOICES = [name for name, _description in PolypSAMEngines.model_choices()]
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]
WINDOW_CHOICES = ["display", "abdomen", "soft_tissue", "lung", "bone", "brain", "percentile"]
ENGINE_CHOICES = list(PolypSAMEngines.ENGINE_KINDS)

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
        self.parent.contributors = ["PolypSAM contributors"]
        self.parent.helpText = _("""
Segment polyps and lesions with Meta's SAM2 from box ROIs: <b>Add box</b> on an endoscopy frame
or a CT slice, then <b>Segment</b> (2-D), <b>Propagate</b> (3-D through the box's slices),
<b>Track</b> (through a video, or the time points of a 4-D CT) or <b>Refine</b> (extra boxes on
other slices or frames). Each box gives a named segment tagged with its provenance (model,
checkpoint SHA256, box, key slice).
PyTorch and SAM2 are installed on first use and model weights downloaded, both only after you
agree. Results can be undone.
""")
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
    engine, model, customCheckpoint, device, imageSize (0 = checkpoint's), windowPreset - settings.
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
    model: Annotated[str, Choice(MODEL_CHOICES)] = PolypSAMEngines.DEFAULT_MODEL
    customCheckpoint: str = ""
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    imageSize: Annotated[int, WithinRange(0, 1024)] = 0
    windowPreset: Annotated[str, Choice(WINDOW_CHOICES)] = "display"

    def engineSettings(self) -> PolypSAMEngines.EngineSettings:
        return PolypSAMEngines.EngineSettings(
            kind=self.engine, model=self.model, checkpoint=self.customCheckpoint.strip(),
            device=self.device, image_size=int(self.imageSize))


#
# PolypSAMWidget
#


def saveSegmentEditorUndoState(segmentationNode) -> None:
    """Snapshot the Segment Editor's undo history when it edits ``segmentationNode``.

    Called by PolypSAMOperations just before a write, so the Segment Editor's Undo (Ctrl+Z)
    reverts PolypSAM's result like any other edit. PolypSAM's own Undo button works regardless.
    """
    # Slicer sets slicer.modules.SegmentEditorWidget once that widget exists; asking the module for
    # its widgetRepresentation() would build the Segment Editor just to find it edits nothing.
    widget = getattr(slicer.modules, "SegmentEditorWidget", None)
    editor = getattr(widget, "editor", None)
    if editor is None or segmentationNode is None:
        return
    edited = editor.segmentationNode()
    if edited is not None and edited.GetID() == segmentationNode.GetID():
        editor.saveStateForUndo()


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
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PolypSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

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
        PolypSAMOperations.add_before_write_hook(saveSegmentEditorUndoState)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        PolypSAMOperations.remove_before_write_hook(saveSegmentEditorUndoState)
        if self.logic is not None:
            self.logic.releaseEngine()
        from polypsam import mrml

        mrml.forget_undo_history()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
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

    def run(self, operation: str) -> None:
        """One button: dependencies (first use), engine (with download consent), then the work.

        The main thread serves events while the model works, so a second click must not start
        a second run: ``_busy`` guards it.
        """
        if getattr(self, "_busy", False):
            return
        self._busy = True
        try:
            self._run(operation)
        finally:
            self._busy = False

    def _run(self, operation: str) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("PolypSAM {operation} failed.").format(operation=operation),
                                             waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            if p.outputSegmentation is None:
                p.outputSegmentation = self.logic.createSegmentation(p.inputVolume)
            engine = self.logic.engineFor(p.engineSettings(), confirmDownload=True)
            if engine is None:
                return
            result = self.logic.runWithProgress(operation, p, engine)
            if result is not None:
                self.ui.statusLabel.text = result.summary

    def onUndo(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            ok = self.logic.undo(self._parameterNode.outputSegmentation)
            self.ui.statusLabel.text = _("Undone.") if ok else _("Nothing to undo.")

    def onDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing dependencies failed."), waitCursor=True):
            ready = self.logic.ensureDependencies()
            self.ui.engineStatusLabel.text = self.logic.dependencyMessage
            del ready

    def onReleaseEngine(self) -> None:
        self.logic.releaseEngine()
        self.ui.engineStatusLabel.text = _("Model released.")


#
# PolypSAMLogic
#


class PolypSAMLogic(ScriptedLoadableModuleLogic):
    """Runs PolypSAM operations on MRML nodes with an engine it is given.

    Usable without the GUI::

        logic = PolypSAMLogic()
        engine = logic.engineFor(PolypSAMEngines.EngineSettings(model="sam2.1_hiera_tiny"))
        logic.segment(engine, volumeNode, [roiNode], segmentationNode)

    or with any object implementing ``polypsam.engine.Engine`` (``logic.segment(myEngine, ...)``).
    The constructor does nothing expensive: no imports of torch, no installs, no model loads.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._engines = PolypSAMEngines.EngineCache()
        self.dependencyMessage = ""

    def getParameterNode(self):
        return PolypSAMParameterNode(super().getParameterNode())

    # -- dependencies and engines (settings panel) ------------------------------------------
    def ensureDependencies(self) -> bool:
        """First-use check/installation of torch and sam2 (asks before installing)."""
        try:
            status = PolypSAMDependencies.ensure_dependencies()
        except PolypSAMDependencies.DependencyInstallError as exc:
            if exc.restart_needed:
                self._offerRestart(str(exc))
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

    def engineFor(self, settings: PolypSAMEngines.EngineSettings, confirmDownload: bool = False):
        """The engine for ``settings`` (cached); asks before downloading weights.

        Returns ``None`` if the user declines the download.
        """
        spec = PolypSAMEngines.weights_to_download(settings)
        if spec is not None:
            from polypsam.checkpoints import cache_dir

            if confirmDownload and not slicer.util.confirmOkCancelDisplay(
                _("Download the weights of {name} ({description}) from\n{url}\ninto {folder}?").format(
                    name=spec.name, description=spec.description, url=spec.url, folder=cache_dir()),
                windowTitle="PolypSAM: download model weights",
            ):
                return None
            slicer.util.showStatusMessage(_("Downloading {name}...").format(name=spec.name))
            return self._loadInWorker(lambda: self._engines.get(settings, allow_download=True))
        return self._loadInWorker(lambda: self._engines.get(settings, allow_download=False))

    @staticmethod
    def _loadInWorker(load):
        """Download/load weights in a worker thread; Slicer repaints meanwhile (wait cursor)."""
        from polypsam.background import run_in_worker

        with slicer.util.WaitCursor():
            return run_in_worker(load, while_waiting=slicer.app.processEvents)

    def releaseEngine(self) -> None:
        self._engines.close()

    # -- scene helpers -----------------------------------------------------------------------
    @staticmethod
    def addBox(name: str = "Polyp", browser=None):
        """A new ROI placed interactively in the slice views (click-drag or two corners).

        With a sequence browser, the ROI remembers the frame it was drawn on (Track/Refine).
        """
        appLogic = slicer.app.applicationLogic()
        return PolypSAMOperations.place_box(
            slicer.mrmlScene, appLogic.GetSelectionNode(), appLogic.GetInteractionNode(), name,
            frame=browser.GetSelectedItemNumber() if browser is not None else None)

    @staticmethod
    def removeBox(roi) -> None:
        if roi is not None:
            slicer.mrmlScene.RemoveNode(roi)

    @staticmethod
    def createSegmentation(referenceVolume=None):
        return PolypSAMOperations.new_segmentation(slicer.mrmlScene, referenceVolume)

    @staticmethod
    def undo(segmentationNode) -> bool:
        from polypsam import mrml

        return segmentationNode is not None and mrml.undo(segmentationNode)

    # -- operations (headless) ---------------------------------------------------------------
    # ``background`` (optional) runs the compute phase, e.g. in a worker thread; see
    # ``runWithProgress`` and ``PolypSAMOperations``.
    def segment(self, engine, inputVolume, rois, segmentation, keySlice=-1, windowPreset="display",
                progress=None, cancel=None, background=None):
        return PolypSAMOperations.segment_2d(engine, inputVolume, list(rois), segmentation,
                                             key_slice=keySlice, window_preset=windowPreset,
                                             progress=progress, cancel=cancel, background=background)

    def propagate(self, engine, inputVolume, rois, segmentation, keySlice=-1, sliceRange=(-1, -1),
                  windowPreset="display", progress=None, cancel=None, background=None):
        return PolypSAMOperations.propagate(engine, inputVolume, list(rois), segmentation,
                                            key_slice=keySlice, slice_range=tuple(sliceRange),
                                            window_preset=windowPreset, progress=progress,
                                            cancel=cancel, background=background)

    def track(self, engine, browser, rois, segmentation, windowPreset="display", progress=None,
              cancel=None, background=None):
        """Through a video, or through the time points of a 4-D volume sequence (in 3-D)."""
        return PolypSAMOperations.track(engine, browser, list(rois), segmentation,
                                        window_preset=windowPreset, progress=progress,
                                        cancel=cancel, background=background)

    def refine(self, engine, inputVolume, rois, segmentation, browser=None, keySlice=-1,
               sliceRange=(-1, -1), windowPreset="display", progress=None, cancel=None,
               background=None):
        """First ROI = the object; the other ROIs = extra boxes on other slices/frames."""
        return PolypSAMOperations.refine(engine, inputVolume, list(rois), segmentation,
                                         browser_node=browser, key_slice=keySlice,
                                         slice_range=tuple(sliceRange), window_preset=windowPreset,
                                         progress=progress, cancel=cancel, background=background)

    def runWithProgress(self, operation: str, p: PolypSAMParameterNode, engine):
        """Run an operation with its model work in a worker thread and a cancellable dialog.

        The scene is read and written here, on the main thread; SAM2 runs in a worker
        (``polypsam.background.run_in_worker``), so Slicer repaints and the dialog's Cancel
        works during a long encoding. The dialog is window-modal: the scene cannot be edited
        while the worker reads frames. Progress from the worker goes through a
        ``ProgressRelay`` that the main thread applies between waits. Cancel sets the
        CancelToken, checked per frame; nothing is written unless the whole run succeeded.
        """
        import qt
        from polypsam.background import ProgressRelay, run_in_worker
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

        def background(work):
            return run_in_worker(work, while_waiting=whileWaiting)

        rois = [r for r in p.rois if r is not None]
        try:
            if operation == "segment":
                return self.segment(engine, p.inputVolume, rois, p.outputSegmentation, p.keySlice,
                                    p.windowPreset, relay, cancel, background)
            if operation == "propagate":
                return self.propagate(engine, p.inputVolume, rois, p.outputSegmentation, p.keySlice,
                                      (p.sliceRangeStart, p.sliceRangeEnd), p.windowPreset,
                                      relay, cancel, background)
            if operation == "track":
                return self.track(engine, p.inputSequenceBrowser, rois, p.outputSegmentation,
                                  p.windowPreset, relay, cancel, background)
            if operation == "refine":
                return self.refine(engine, p.inputVolume, rois, p.outputSegmentation,
                                   p.inputSequenceBrowser, p.keySlice,
                                   (p.sliceRangeStart, p.sliceRangeEnd), p.windowPreset,
                                   relay, cancel, background)
            raise ValueError(f"unknown operation {operation!r}")
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

    def runTest(self):
        self.setUp()
        self.test_parameter_node_drives_the_gui()
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
            from polypsam.sam2_model import build_model, save_checkpoint

            torch.manual_seed(0)
            model = build_model(self.CONFIG, None, "cpu")
            folder = tempfile.mkdtemp(prefix="polypsam-test-")
            path = save_checkpoint(model, os.path.join(folder, "sam2.1_hiera_tiny_random.pt"))
            del model
            settings = PolypSAMEngines.EngineSettings(model="sam2.1_hiera_tiny", checkpoint=str(path),
                                                      config=self.CONFIG, device="cpu",
                                                      image_size=self.IMAGE_SIZE)
            PolypSAMTest._cachedEngine = PolypSAMEngines.create_engine(settings)
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
        result = PolypSAMLogic().segment(self._engine(), frame, [roi], seg)
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

        result = PolypSAMLogic().propagate(
            self._engine(), volume, [roi], seg,
            background=lambda work: run_in_worker(work, while_waiting=whileWaiting))
        self.assertIn("Lesion", result.segment_ids)
        self.assertGreater(len(pumped), 0)
        self.assertIsNotNone(seg.GetSegmentation().GetSegment(other))
        from polypsam import mrml

        self.assertEqual(mrml.read_provenance(seg, "Lesion").get("operation"), "propagate")
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
        result = PolypSAMLogic().track(self._engine(), browser, [roi], seg)
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
            PolypSAMLogic().propagate(self._engine(), volume, [roi], seg, cancel=cancel)
        self.assertEqual(seg.GetSegmentation().GetNumberOfSegments(), 0)
        self.delayDisplay("Cancel passed")
