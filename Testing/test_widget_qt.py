"""PolypSAM's widget run for real: PolypSAM.ui on real Qt widgets under PythonQt's rules.

Each scenario runs in a harness process (``Testing/pythonqt``): PyQt5 on the offscreen platform,
a ``qt`` module with PythonQt's rules, stand-ins for the .ui's Slicer and CTK widgets, Slicer's
own ``slicer.util``, ``ScriptedLoadableModule`` and ``parameterNodeWrapper`` from the Slicer
source tree, on a slicer-core scene, with the random-weight SAM2 tiny checkpoint of
``conftest.py``. Scenarios work through the .ui objectNames and what a user sees (widget state,
scene contents); every button and click tool is pressed. A scenario fails on anything printed to
the console (an exception that left a slot, a failed connect), on a modal dialog it did not
answer and on an answer the module never asked for. What the harness cannot show is listed in
``Testing/pythonqt/__init__.py``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SLICER_SOURCE = Path(os.environ.get("POLYPSAM_SLICER_SOURCE", REPO.parent / "shared" / "vendor" / "Slicer"))

from pythonqt.client import Worker, scenario_registry  # noqa: E402

SCENARIOS, in_harness = scenario_registry()


@pytest.fixture(scope="module")
def harness(tiny_checkpoint):
    if importlib.util.find_spec("PyQt5") is None:
        pytest.skip("PyQt5 is not installed (scripts/requirements.txt)")
    if not (SLICER_SOURCE / "Base" / "Python" / "slicer" / "ScriptedLoadableModule.py").is_file():
        pytest.skip(f"Slicer's Python framework not found at {SLICER_SOURCE}")
    try:
        import PyQt5.QtWidgets  # noqa: F401 - no QApplication here: the harness process makes it
    except ImportError as exc:  # the Qt wheel needs a few system libraries
        pytest.fail(f"PyQt5 is installed but cannot load: {exc}. Debian/Ubuntu: apt-get install"
                    " libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3")
    env = {"POLYPSAM_SLICER_SOURCE": str(SLICER_SOURCE),
           "PYTHONPATH": os.pathsep.join([str(REPO / "PolypSAMLib"), os.environ.get("PYTHONPATH", "")])}
    worker = Worker("test_widget_qt", str(tiny_checkpoint), env=env)
    yield worker
    worker.close()
    timings = ", ".join(f"{name} {wall:.1f} s ({cpu:.1f} s CPU)"
                        for name, (wall, cpu) in worker.timings.items())
    print(f"\nharness timings: {timings}")


# ---- the harness keeps PythonQt's rules (Testing/pythonqt/wrapping.py cites the source) -------


@in_harness
def test_harness_follows_pythonqt_rules(env):
    qt, slicer = env.qt, env.slicer
    button = qt.QPushButton("Segment")
    assert button.text == "Segment" and isinstance(button.text, str), "R1: the property, not text()"
    button.text = "Go"
    assert button.text == "Go"
    with pytest.raises(AttributeError, match="creating new attributes on C\\+\\+ objects is not allowed"):
        button.notAProperty = 1
    with pytest.raises(AttributeError, match="can not be overwritten"):
        button.click = None
    button.objectName = "goButton"
    assert button.name == "goButton", "PythonQt maps name to objectName"
    assert qt.QListWidget() and qt.QComboBox(), "R3: live objects are true (PyQt5: empty is false)"
    dead = qt.QWidget()
    dead.delete()
    assert not dead
    with pytest.raises(ValueError, match="keyword arguments"):
        button.setText(text="x")
    assert type(qt.QSpinBox()) == qt.QSpinBox and isinstance(qt.QSpinBox(), qt.QWidget)
    got = []

    def no_args():
        got.append(("none",))

    class Receiver:
        def one(self, checked):
            got.append(("method", checked))

    button.checkable = True
    assert button.connect("clicked(bool)", no_args)
    assert button.connect("clicked(bool)", Receiver().one)
    assert button.connect("clicked(bool)", lambda kind="include": got.append(("default", kind)))
    assert button.connect("clicked(bool)", lambda *args: got.append(("all",) + args))
    button.click()
    assert got == [("none",), ("method", True), ("default", True), ("all", True)], \
        "R5: a slot gets as many arguments as it takes (a default parameter takes one)"
    got.clear()
    assert button.connect("clicked()", lambda *args: got.append(args)), "moc's clone of clicked(bool)"
    button.click()
    assert got[-1] == (), "the clone passes no argument"
    with pytest.raises(TypeError, match="connect it to a signal"):
        qt.QMenu().addAction("Go", no_args)  # PyQt5 would connect it outside PythonQt's rules
    assert not button.connect("clickedTwice()", no_args), "R4: an unknown signal is refused..."
    assert "does not exist on QPushButton" in env.h.errors.take()[0], "...with a printed error"

    def broken(*args):
        raise RuntimeError("slot failed")

    combo = qt.QComboBox()
    combo.currentIndexChanged.connect(broken)  # the first overload: (int)
    combo.addItems(["a", "b"])
    combo.currentIndex = 1
    printed = env.h.errors.take()
    assert len(printed) == 2 and "slot failed" in printed[0], "R5: printed, not raised"
    qt.QTimer.singleShot(0, broken)
    env.h.process_events()
    assert "slot failed" in env.h.errors.take()[0]
    parent = qt.QWidget()
    child = qt.QLabel(parent)
    child.objectName = "statusLabel"
    assert parent.statusLabel == child, "R1: a child by objectName"
    env.h.dialogs.answer("QFileDialog.getOpenFileName", "/tmp/a.pt")
    assert qt.QFileDialog.getOpenFileName(None, "Open", "", "*.pt") == "/tmp/a.pt", "a plain string"
    import PythonQt
    from pythonqt.dialogs import CANCEL

    ok = PythonQt.BoolResult()
    env.h.dialogs.answer("QInputDialog.getItem", CANCEL)
    assert qt.QInputDialog.getItem(None, "Export", "Format:", ["a", "b"], 1, False, ok) == "b"
    assert not ok, "Qt 5.15 returns the current item on Cancel; only ok tells"
    selector = slicer.qMRMLNodeComboBox()
    assert selector.nodeTypes == () and not callable(selector.nodeTypes), "a property shadows nodeTypes()"
    assert isinstance(parent.children(), tuple), "R7: lists come back as tuples"
    with pytest.raises(AttributeError):
        selector._rebuild()  # the stand-in's own helpers are not C++ API

    class Observed(qt.QColor):
        def __init__(self, name):
            super().__init__(name)
            self.note = "Python subclasses may add attributes"

    assert Observed("#ff0000").red() == 255


@in_harness
def test_node_selector_filters_as_qmrmlsortfilterproxymodel(env):
    """nodeTypes, showChildNodeTypes, hideChildNodeTypes, hidden nodes, None first, renames and
    removals follow qMRMLSortFilterProxyModel / qMRMLNodeComboBox (v5.10.0)."""
    slicer, scene = env.slicer, env.scene
    selector = slicer.qMRMLNodeComboBox()
    selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    selector.showChildNodeTypes = False
    selector.noneEnabled = True
    selector.addEnabled = False
    selector.removeEnabled = False
    selector.setMRMLScene(scene)
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scalar")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "vector")
    hidden = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hidden")
    hidden.SetHideFromEditors(True)
    assert env.entries(selector) == ["None", "scalar"], "exact class only; hidden nodes left out"
    selector.showChildNodeTypes = True
    selector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
    assert env.entries(selector) == ["None", "scalar", "vector"]
    selector.showHidden = True
    assert env.entries(selector) == ["None", "scalar", "vector", "hidden"]
    changes = []
    selector.connect("currentNodeChanged(vtkMRMLNode*)", changes.append)
    selector.setCurrentNode(vector)
    assert selector.currentNode() is vector and selector.currentNodeID == vector.GetID()
    vector.SetName("renamed")
    assert env.entries(selector)[2] == "renamed"
    scene.RemoveNode(vector)
    assert selector.currentNode() is hidden, "QComboBox moves to the row that took its place"
    assert changes == [vector, hidden]
    selector.removeEnabled = True
    selector.addEnabled = True
    assert env.entries(selector)[-3:] == ["", "Create new Volume", "Delete current Volume"]
    env.choose(selector, "Create new Volume")
    created = selector.currentNode()
    assert created is not None and created.IsA("vtkMRMLScalarVolumeNode")
    env.choose(selector, "Delete current Volume")
    assert scene.GetNodeByID(created.GetID()) is None


# ---- module life cycle ----------------------------------------------------------------------


@in_harness
def test_setup_enter_exit_and_scene_close(env):
    """setup() filled the panel and connected the parameter node; exit() and enter() switch the
    A/S shortcuts and the GUI binding; closing the scene makes a new parameter node."""
    ui, qt = env.ui, env.qt
    assert ui.inputSelector.mrmlScene() is env.scene, "the .ui passed the scene to the selectors"
    assert ui.inputSelector.nodeTypes == ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")
    assert env.entries(ui.outputSegmentationSelector)[-4:] == [
        "Rename current Segmentation", "Create new Segmentation", "Create new Segmentation as...",
        "Delete current Segmentation"]
    assert ui.inputSelector.visible and ui.settingsCollapsibleButton.collapsed
    assert not ui.modelComboBox.visible, "the collapsed section hides its contents"
    ui.settingsCollapsibleButton.collapsed = False
    assert ui.modelComboBox.visible
    shortcuts = [s for s in env.main_window.findChildren(qt.QShortcut) if s.key.toString() in ("A", "S")]
    assert len(shortcuts) == 2 and all(s.enabled for s in shortcuts)
    p = env.parameters()
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    assert p.inputVolume is ct
    ui.keySliceSpinBox.value = 3
    assert p.keySlice == 3
    env.slicer.util.selectModule("PolypSAM")  # already shown: nothing happens
    env.module_cpp.widgetRepresentation().exit()
    assert not any(s.enabled for s in shortcuts)
    ui.keySliceSpinBox.value = 5
    assert p.keySlice == 3, "after exit() the GUI no longer writes the parameter node"
    env.module_cpp.widgetRepresentation().enter()
    assert ui.keySliceSpinBox.value == 3 and all(s.enabled for s in shortcuts)
    env.scene.Clear(0)
    q = env.parameters()
    assert q.inputVolume is None and q.keySlice == -1, "the parameter node was reset"
    assert ui.inputSelector.currentNode() is None and ui.keySliceSpinBox.value == -1
    assert env.entries(ui.inputSelector) == ["None"]


@in_harness
def test_cleanup_removes_every_hook(env):
    """Unloading the module (Slicer's exit, or a reload) calls cleanup(): no VTK observation or
    shortcut of the widget is left to fire."""
    widget = env.widget
    assert widget.Observations, "the widget observes the scene while loaded"
    env.h.unload_module("PolypSAM")
    env.needs_new_widget = True
    assert widget.Observations == [], "no VTK observation left"
    assert not env.main_window.findChildren(env.qt.QShortcut)
    env.rgb_frame()  # scene events no longer reach the widget (nothing printed)
    env.scene.Clear(0)


@in_harness
def test_self_test_gui_scenario_passes_unchanged(env):
    """PolypSAMTest's GUI scenario, as Slicer's self-test runs it."""
    case = env.python_module.PolypSAMTest()
    case.messageDelay = 50
    case.setUp()
    case.test_parameter_node_drives_the_gui()


# ---- boxes and the buttons --------------------------------------------------------------------


@in_harness
def test_segment_undo_on_an_rgb_frame(env):
    """Add box, draw it, Segment: a segment named after the box on a new output segmentation;
    Undo removes it, a second Undo has nothing to undo."""
    ui = env.ui
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    assert not ui.segmentButton.enabled and not ui.propagateButton.enabled
    roi = env.add_box((50, 48, 0), (44, 44, 1), frame)
    assert env.list_items() == [(roi.GetName(), True)]
    assert ui.segmentButton.enabled and not ui.propagateButton.enabled, "an RGB frame has no slices"
    env.press(ui.segmentButton)
    seg = env.output()
    assert seg is not None and env.segments(seg) == [roi.GetName()]
    assert env.provenance(seg, roi.GetName())["operation"] == "segment"
    assert env.labelmap(seg, roi.GetName(), frame).shape == (1, 96, 128)
    assert ui.statusLabel.text.startswith("segmented 1 box(es)")
    assert [p[1] for p in env.h.dialogs.progress] == ["Segment..."]
    env.press(ui.undoButton)
    assert env.segments(seg) == [] and ui.statusLabel.text == "Undone."
    env.press(ui.undoButton)
    assert ui.statusLabel.text == "Nothing to undo."


@in_harness
def test_propagate_then_cancel_on_a_ct_volume(env):
    """Propagate writes the lesion on the slices of the box's range only; a Propagate cancelled
    from its progress dialog writes nothing."""
    ui = env.ui
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    roi = env.add_box((24, 24, 4), (22, 22, 5), ct)
    assert ui.propagateButton.enabled
    env.choose(ui.windowPresetComboBox, "abdomen")
    ui.sliceRangeStartSpinBox.value = 3
    ui.sliceRangeEndSpinBox.value = 5
    env.press(ui.propagateButton)
    seg = env.output()
    name = roi.GetName()
    tags = env.provenance(seg, name)
    assert (tags["operation"], tags["slice_range"], tags["key_slice"]) == ("propagate", "3,5", "4")
    labels = env.labelmap(seg, name, ct)
    assert labels.shape == (8, 48, 56)
    assert not labels[[0, 1, 2, 6, 7]].any(), "nothing outside the slice range 3..5"
    assert ui.statusLabel.text == "propagated 1 box(es)"
    before = labels.copy()
    env.h.dialogs.cancel_next_progress()
    env.press(ui.propagateButton)
    assert np.array_equal(env.labelmap(seg, name, ct), before), "a cancelled run writes nothing"
    assert "Cancelled" in env.main_window.statusBar().currentMessage()


@in_harness
def test_refine_with_a_second_box(env):
    """Refine re-runs the first box's segment with the second box as an extra prompt."""
    ui = env.ui
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    first = env.add_box((24, 24, 3), (22, 22, 1), ct)
    env.add_box((24, 24, 4), (20, 20, 1), ct)
    assert [checked for _name, checked in env.list_items()] == [True, True]
    env.press(ui.refineButton)
    seg = env.output()
    assert env.segments(seg) == [first.GetName()], "refine writes the first box's segment only"
    tags = env.provenance(seg, first.GetName())
    assert (tags["operation"], tags["refinement_slices"]) == ("refine", "4")


@in_harness
def test_remove_box_and_box_list(env):
    """The box list shows every ROI (checked = used); Remove box deletes the selected one;
    unchecking a box disables Segment."""
    ui = env.ui
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    a = env.add_box((40, 40, 0), (20, 20, 1), frame)
    b = env.add_box((70, 50, 0), (20, 20, 1), frame)
    assert env.list_items() == [(a.GetName(), True), (b.GetName(), True)]
    env.set_checked(a.GetName(), False)
    assert [r.GetID() for r in env.parameters().rois] == [b.GetID()]
    env.select_item(b.GetName())
    env.press(ui.removeBoxButton)
    assert env.scene.GetNodeByID(b.GetID()) is None
    assert env.list_items() == [(a.GetName(), False)]
    assert not ui.segmentButton.enabled


@in_harness
def test_box_list_keeps_its_selection_and_shows_renames(env):
    """Nodes added or removed elsewhere in the scene leave the box list and its selection alone,
    so Remove box removes the box selected before; a renamed box shows its new name (issue 18
    §3.9)."""
    ui = env.ui
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    a = env.add_box((40, 40, 0), (20, 20, 1), frame)
    b = env.add_box((70, 50, 0), (20, 20, 1), frame)
    env.select_item(b.GetName())
    other = env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "not a box")
    env.scene.RemoveNode(other)
    assert ui.roiListWidget.currentItem() is not None, "the selection survives other nodes"
    a.SetName("Renamed box")
    assert env.list_items() == [("Renamed box", True), (b.GetName(), True)]
    assert ui.roiListWidget.currentItem().text() == b.GetName(), "a rename keeps the selection"
    env.press(ui.removeBoxButton)
    assert env.scene.GetNodeByID(b.GetID()) is None and env.list_items() == [("Renamed box", True)]


@in_harness
def test_input_selector_shows_volume_subclasses_but_not_label_maps(env):
    """A streaming volume (a vtkMRMLVectorVolumeNode subclass the library reads) is offered as
    input; label maps and diffusion volumes are not (qMRMLSortFilterProxyModel.cxx@v5.10.0:273-282;
    issue 18 §3.6)."""
    ui, scene = env.ui, env.scene
    assert ui.inputSelector.showChildNodeTypes
    for hidden in ("vtkMRMLLabelMapVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode",
                   "vtkMRMLDiffusionTensorVolumeNode"):  # no images SAM2 reads
        scene.AddNewNodeByClass(hidden, hidden)
    scene.AddNewNodeByClass("vtkMRMLStreamingVolumeNode", "stream")
    env.rgb_frame()
    assert env.entries(ui.inputSelector) == ["None", "stream", "frame"]
    env.choose(ui.inputSelector, "stream")
    assert env.parameters().inputVolume.IsA("vtkMRMLStreamingVolumeNode")


@in_harness
def test_track_through_a_4d_volume(env):
    """Track writes one segmentation per time point (two here), synchronised to the browser."""
    ui = env.ui
    browser = env.ct_4d()
    env.choose(ui.sequenceBrowserSelector, browser.GetName())
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    env.choose(ui.inputSelector, proxy.GetName())
    env.add_box((20, 20, 2), (18, 18, 1), proxy)
    assert ui.trackButton.enabled
    env.press(ui.trackButton)
    seg = env.output()
    sequence = browser.GetSequenceNode(seg)
    assert sequence is not None and sequence.GetNumberOfDataNodes() == 2
    assert "2 time point(s)" in ui.statusLabel.text


@in_harness
def test_load_video_from_a_folder_then_track(env):
    """Load video: Cancel on the file dialog, then a folder of frames; the new browser is the
    sequence; Track writes one segmentation per frame."""
    ui = env.ui
    from pythonqt.dialogs import CANCEL

    folder = env.frame_folder(2)
    env.h.dialogs.answer("QFileDialog.getOpenFileName", CANCEL, contains="Load video")
    env.h.dialogs.answer("QFileDialog.getExistingDirectory", str(folder))
    env.press(ui.loadVideoButton)
    browser = ui.sequenceBrowserSelector.currentNode()
    assert browser is not None and browser.GetMasterSequenceNode().GetNumberOfDataNodes() == 2
    assert ui.statusLabel.text == "Loaded 2 frames."
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    roi = env.add_box((50, 48, 0), (40, 40, 1), proxy)
    assert roi.GetAttribute("PolypSAM.frame") == "0"
    env.press(ui.trackButton)
    seg = env.output()
    assert browser.GetSequenceNode(seg).GetNumberOfDataNodes() == 2


@in_harness
def test_clicks_on_video_frames_then_propagate_clicks_tracks(env):
    """On a video, each click records the frame it was placed on; Propagate clicks tracks the
    segment through the video from the clicked frames."""
    ui = env.ui
    from pythonqt.dialogs import CANCEL

    env.h.dialogs.answer("QFileDialog.getOpenFileName", CANCEL)
    env.h.dialogs.answer("QFileDialog.getExistingDirectory", str(env.frame_folder(2)))
    env.press(ui.loadVideoButton)
    browser = ui.sequenceBrowserSelector.currentNode()
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    env.choose(ui.inputSelector, proxy.GetName())
    ui.targetSegmentComboBox.setEditText("Polyp")
    env.press(ui.includeButton)
    browser.SetSelectedItemNumber(1)
    env.click_voxel(proxy, (52, 48, 0))
    include = env.scene.GetFirstNodeByName("Polyp include")
    assert include.GetNumberOfControlPoints() == 1
    env.press(ui.propagateClicksButton)
    assert ui.clickStatusLabel.text.startswith("tracked 'Polyp' from frame 1"), ui.clickStatusLabel.text
    assert browser.GetSequenceNode(env.output()).GetNumberOfDataNodes() == 2
    assert ("PolypSAM", "Propagate-clicks...") in env.h.dialogs.progress, "tracking clicks too"


@in_harness
def test_export_asks_format_and_path(env):
    """Export: the format from a list, then the file; the file is written."""
    ui = env.ui
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    env.add_box((50, 48, 0), (44, 44, 1), frame)
    env.press(ui.segmentButton)
    target = env.tmp / f"export-{os.getpid()}.nii.gz"
    env.h.dialogs.answer("QInputDialog.getItem", "nifti")
    env.h.dialogs.answer("QFileDialog.getSaveFileName", str(target))
    env.press(ui.exportButton)
    assert target.is_file() and target.stat().st_size > 0
    assert str(target) in ui.statusLabel.text


@in_harness
def test_export_cancel_on_the_format_cancels(env):
    """Cancel on the format list asks nothing more and writes nothing (Qt 5's getItem returns the
    current item on Cancel: only ``ok`` tells; issue 18 §3.8)."""
    from pythonqt.dialogs import CANCEL

    ui = env.ui
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    env.add_box((50, 48, 0), (44, 44, 1), frame)
    env.press(ui.segmentButton)
    status = ui.statusLabel.text
    env.h.dialogs.answer("QInputDialog.getItem", CANCEL)
    env.press(ui.exportButton)
    assert [d.kind for d in env.h.dialogs.shown] == ["QInputDialog.getItem"], "no file dialog after Cancel"
    assert ui.statusLabel.text == status and env.panel.enabled


# ---- clicks and candidates -------------------------------------------------------------------


@in_harness
def test_click_tools_on_a_ct_volume(env):
    """Include and Exclude put the views in place mode for the segment's point lists; each click
    re-segments its slice; candidates cycle with Next candidate; Propagate clicks and Start from
    segment propagate the segment."""
    ui = env.ui
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    ui.targetSegmentComboBox.setEditText("Lesion")
    env.press(ui.includeButton)
    interaction = env.h.core.app.GetInteractionNode()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    env.click_voxel(ct, (24, 24, 4))
    seg = env.output()
    assert env.segments(seg) == ["Lesion"]
    labels = env.labelmap(seg, "Lesion", ct)
    assert not np.delete(labels, 4, axis=0).any(), "a click re-segments its own slice only"
    assert "Lesion" in ui.clickStatusLabel.text
    env.press(ui.excludeButton)
    env.click_voxel(ct, (5, 5, 4))
    include, exclude = (env.scene.GetFirstNodeByName(f"Lesion {kind}") for kind in ("include", "exclude"))
    assert (include.GetNumberOfControlPoints(), exclude.GetNumberOfControlPoints()) == (1, 1)
    assert ui.clickStatusLabel.text.startswith("segmented 'Lesion' on slice(s) 4")
    ui.candidatesCheckBox.checked = True
    env.press(ui.includeButton)
    env.click_voxel(ct, (26, 22, 4))
    shown = re.search(r"candidate (\d)/3 on slice 4", ui.clickStatusLabel.text)
    assert shown, ui.clickStatusLabel.text
    env.press(ui.nextCandidateButton)
    assert f"candidate {int(shown.group(1)) % 3 + 1}/3 on slice 4" in ui.clickStatusLabel.text
    assert not np.delete(env.labelmap(seg, "Lesion", ct), 4, axis=0).any()
    env.press(ui.propagateClicksButton)
    assert ui.clickStatusLabel.text.startswith("propagated 'Lesion' from slice 4")
    env.press(ui.startFromSegmentButton)
    assert ui.clickStatusLabel.text.startswith("propagated 'Lesion'")
    assert env.segments(seg) == ["Lesion"]
    shown = [label for _title, label in env.h.dialogs.progress]  # the buttons' progress and Cancel
    assert {"Clicks...", "Propagate-clicks...", "Start-from-segment..."} <= set(shown), shown


@in_harness
def test_next_candidate_without_candidates_says_so(env):
    """A new widget has no candidates to cycle through, and says so."""
    env.new_widget()
    env.use_test_engine()
    ui = env.ui
    env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    env.press(ui.nextCandidateButton)
    assert "No candidates" in ui.clickStatusLabel.text


@in_harness
def test_shortcut_a_places_include_clicks(env):
    """The A shortcut of the main window does what Include does."""
    qt = env.qt
    ct = env.ct_volume()
    env.choose(env.ui.inputSelector, "ct")
    env.ui.targetSegmentComboBox.setEditText("Polyp")
    shortcut = next(s for s in env.main_window.findChildren(qt.QShortcut) if s.key.toString() == "A")
    shortcut.activated.emit()
    interaction = env.h.core.app.GetInteractionNode()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    env.click_voxel(ct, (24, 24, 4))
    assert env.segments(env.output()) == ["Polyp"]


# ---- engine settings and dialogs ---------------------------------------------------------------


@in_harness
def test_engine_settings_panel(env):
    """Browse sets the checkpoint; Install dependencies reports torch and SAM2 ready; Release
    frees the model; the server engine enables the server fields and Test connection reports an
    unreachable server in an error dialog."""
    ui = env.ui
    p = env.parameters()
    env.h.dialogs.answer("QFileDialog.getOpenFileName", env.checkpoint, contains="SAM2 checkpoint")
    env.press(ui.checkpointBrowseButton)
    assert p.customCheckpoint == env.checkpoint == ui.checkpointPathLineEdit.text
    env.press(ui.dependenciesButton)
    assert ui.engineStatusLabel.text == "torch and sam2 are installed"
    env.press(ui.releaseEngineButton)
    assert ui.engineStatusLabel.text == "Model released."
    assert not ui.serverUrlLineEdit.enabled and not ui.testConnectionButton.enabled
    env.choose(ui.engineComboBox, "server")
    assert p.engine == "server"
    assert ui.serverUrlLineEdit.enabled and ui.testConnectionButton.enabled
    assert not ui.modelComboBox.enabled and not ui.dependenciesButton.enabled
    ui.serverUrlLineEdit.text = "http://127.0.0.1:9"
    ui.serverTokenLineEdit.text = "not-stored"
    env.h.dialogs.answer("ctkMessageBox", env.qt.QMessageBox.Ok, contains="Connection test failed")
    env.press(ui.testConnectionButton)
    env.expect_printed("127.0.0.1:9")
    node = p.parameterNode
    saved = [node.GetParameter(name) for name in node.GetParameterNames()]
    assert p.serverUrl == "http://127.0.0.1:9" and not any("not-stored" in v for v in saved)


@in_harness
def test_declined_weights_download_runs_nothing(env):
    """Without a checkpoint file the model's weights must be downloaded: the consent dialog names
    the URL and folder; Cancel runs nothing, writes no segment and makes no output segmentation
    (no network is touched)."""
    ui = env.ui
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    env.add_box((50, 48, 0), (44, 44, 1), frame)
    ui.checkpointPathLineEdit.text = ""
    env.h.dialogs.answer("ctkMessageBox", env.qt.QMessageBox.Cancel, contains="Download the weights")
    env.press(ui.segmentButton)
    assert "https://" in env.h.dialogs.shown[-1].text
    segmentations = env.slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    assert segmentations == [], "no new empty output segmentation either (issue 18 §3.11)"
    assert ui.statusLabel.text == "" and env.panel.enabled


@in_harness
def test_consent_dialogs_show_the_normal_cursor(env):
    """Slicer 5.10 and 5.12 show message boxes under the wait cursor a run sets
    (util.py@v5.10.0:3199 ``return mbox.exec_()``; main takes it off: _temporaryNormalCursor):
    PolypSAM's consent dialogs take it off themselves, and put it back (issue 18 §3.12)."""
    import contextlib

    ui, util = env.ui, env.slicer.util
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    env.add_box((50, 48, 0), (44, 44, 1), frame)
    ui.checkpointPathLineEdit.text = ""
    main_message_box = util._temporaryNormalCursor
    util._temporaryNormalCursor = contextlib.nullcontext  # messageBox as Slicer 5.10.0 has it
    try:
        env.h.dialogs.answer("ctkMessageBox", env.qt.QMessageBox.Cancel, contains="Download the weights")
        env.press(ui.segmentButton)
    finally:
        util._temporaryNormalCursor = main_message_box
    assert env.h.dialogs.shown[-1].cursor is None, "the consent dialog under a wait cursor"
    assert env.qt.QApplication.overrideCursor() is None, "and nothing left over after the run"


@in_harness
def test_output_selector_create_new_and_rename(env):
    """The output selector's Create new and Rename entries work through the dialogs."""
    ui = env.ui
    env.choose(ui.outputSegmentationSelector, "Create new Segmentation")
    seg = env.output()
    assert seg is not None and seg.GetName().startswith("PolypSAM")
    assert env.parameters().outputSegmentation is seg
    env.h.dialogs.answer("QInputDialog.getText", "Lesions", contains="Rename")
    env.choose(ui.outputSegmentationSelector, "Rename current Segmentation")
    assert seg.GetName() == "Lesions"
    assert env.entries(ui.outputSegmentationSelector)[:2] == ["None", "Lesions"]


# ---- engine choices kept for a new scene; the slice shown encoded before the click ----------


@in_harness
def test_precision_choice_reaches_the_engine(env):
    """The settings panel offers SAM2's precisions as the CLI does; the engine loaded for Segment
    runs at the one chosen (bf16: CPU autocast here) and the segment's provenance says so; the
    server engine's precision is the server's (the combo is disabled)."""
    ui = env.ui
    assert env.entries(ui.precisionComboBox) == ["auto", "fp32", "bf16"]
    assert ui.precisionComboBox.currentText == "auto" and ui.precisionComboBox.enabled
    env.choose(ui.precisionComboBox, "bf16")
    p = env.parameters()
    assert p.precision == "bf16"
    frame = env.rgb_frame()
    env.choose(ui.inputSelector, "frame")
    roi = env.add_box((50, 48, 0), (44, 44, 1), frame)
    env.press(ui.segmentButton)
    engine = env.widget.logic._engines.engine
    assert engine.precision == "bf16" and engine.info.precision == "bf16"
    assert env.provenance(env.output(), roi.GetName())["precision"] == "bf16"
    env.choose(ui.precisionComboBox, "fp32")
    env.press(ui.segmentButton)  # other settings: another engine, in float32
    assert env.widget.logic._engines.engine.precision == "fp32"
    env.choose(ui.engineComboBox, "server")
    assert not ui.precisionComboBox.enabled
    env.choose(ui.engineComboBox, "in-process")
    env.choose(ui.precisionComboBox, "auto")


@in_harness
def test_engine_choices_are_kept_for_a_new_scene_but_never_the_token(env):
    """Issue 18 bug 10: model, device, precision, image size and server URL live in the
    application settings (PolypSAM/...), so a new scene (File > Close Scene) starts from them; the
    server token is never written there. Before the fix they reset with every scene."""
    ui, qt = env.ui, env.qt
    env.choose(ui.modelComboBox, "sam2.1_hiera_small")
    env.choose(ui.deviceComboBox, "cuda")
    env.choose(ui.precisionComboBox, "fp32")
    ui.imageSizeSpinBox.value = 512
    env.choose(ui.engineComboBox, "server")
    ui.serverUrlLineEdit.text = "http://127.0.0.1:8765"
    ui.serverTokenLineEdit.text = "secret-token-xyz"
    chosen = ("server", "sam2.1_hiera_small", "cuda", "fp32", 512, "http://127.0.0.1:8765")
    fields = ("engine", "model", "device", "precision", "imageSize", "serverUrl")
    env.scene.Clear(0)  # File > Close Scene: a new parameter node
    p = env.parameters()
    assert tuple(getattr(p, name) for name in fields) == chosen, [getattr(p, n) for n in fields]
    assert p.customCheckpoint == env.checkpoint
    assert (ui.modelComboBox.currentText, ui.deviceComboBox.currentText, ui.precisionComboBox.currentText,
            ui.imageSizeSpinBox.value, ui.serverUrlLineEdit.text) == (
        "sam2.1_hiera_small", "cuda", "fp32", 512, "http://127.0.0.1:8765")
    env.new_widget()  # a module reload, and a new parameter node again: the same
    env.scene.Clear(0)
    assert tuple(getattr(env.parameters(), name) for name in fields) == chosen
    settings = env.slicer.app.userSettings()
    settings.sync()
    stored = {key: str(settings.value(key)) for key in settings.allKeys()}
    assert stored["PolypSAM/precision"] == "fp32" and stored["PolypSAM/serverUrl"].endswith(":8765")
    assert not any("secret-token" in key + value for key, value in stored.items())
    with open(settings.fileName()) as f:
        assert "secret-token" not in f.read(), "the token never reaches the settings file"
    assert isinstance(settings, qt.QSettings)
    settings.setValue("PolypSAM/model", "a-model-no-longer-offered")
    settings.sync()
    env.scene.Clear(0)
    assert (env.parameters().model, env.parameters().device) == ("sam2.1_hiera_tiny", "cuda"), \
        "a stored value the field refuses is skipped; the others still apply"
    env.choose(env.ui.deviceComboBox, "mps")  # a scene saved with its own choice...
    saved = env.tmp / f"choices-{os.getpid()}.mrml"
    env.scene.SetURL(str(saved))
    assert env.scene.Commit()
    env.choose(env.ui.deviceComboBox, "cpu")  # ...the user's choice is another now
    env.scene.Clear(0)
    assert env.parameters().device == "cpu"
    env.scene.SetURL(str(saved))
    env.scene.Import()  # the saved scene loaded: it keeps the choices saved with it
    assert env.parameters().device == "mps" and ui.deviceComboBox.currentText == "mps"
    env.module_cpp.widgetRepresentation().exit()
    settings.setValue("PolypSAM/device", "cpu")  # e.g. chosen in another Slicer meanwhile
    env.module_cpp.widgetRepresentation().enter()  # the module shown again: still the scene's
    assert env.parameters().device == "mps" and ui.deviceComboBox.currentText == "mps"
    env.choose(env.ui.precisionComboBox, "auto")
    env.use_test_engine()


@in_harness
def test_the_slice_shown_is_encoded_while_the_module_is_entered(env):
    """Answers before the click (issue 19): with an engine loaded, entering the module encodes the
    slice the Red view shows of the input in the background; moving to another slice replaces
    it; leaving the module (exit) cancels it and nothing more is encoded; without an engine
    nothing is encoded."""
    ui, scene = env.ui, env.scene
    view = scene.CreateNodeByClass("vtkMRMLSliceNode")  # the Red view Slicer's layout makes
    view.SetLayoutName("Red")
    view = scene.AddNode(view)
    view.SetOrientationToAxial()
    background = env.widget.logic.background
    try:
        from pythonqt.session import synthetic_ct
        from slicer_fixtures import add_volume, ijk_to_ras_matrix

        noise = np.random.default_rng(19).integers(-20, 20, (8, 48, 56))  # slices no test saw
        ct = add_volume(scene, (synthetic_ct() + noise).astype(np.int16),
                        ijk_to_ras_matrix((0.8, 0.8, 2.0), (5.0, -3.0, 10.0)), name="ct")
        env.choose(ui.inputSelector, "ct")
        assert background.current is None, "nothing encoded before Segment loads the engine"
        roi = env.add_box((24, 24, 4), (22, 22, 1), ct)
        view.SetSliceOffset(10.0 + 2.0 * 4)  # slice 4 (z = 10 + 2 k)
        env.press(ui.segmentButton)  # loads the engine: the slice shown is encoded once (by the
        engine = env.widget.logic._engines.engine  # background as soon as the engine is loaded,
        shown = background.current  # or by Segment itself, then found in the cache)
        assert shown is not None and shown.wait(60) and shown.state in ("done", "cached")
        widget_cpp = env.module_cpp.widgetRepresentation()
        widget_cpp.exit()
        assert background.current is None and shown.finished
        runs = engine.encoder_runs
        view.SetSliceOffset(10.0 + 2.0 * 6)  # moved while the module is not shown: nothing
        assert background.current is None
        widget_cpp.enter()  # with an engine and a volume: slice 6 is encoded
        on_6 = background.current
        assert on_6 is not None and on_6.wait(60) and on_6.state == "done"
        assert engine.encoder_runs == runs + 1
        view.SetSliceOffset(10.0 + 2.0 * 3)  # the user moves on: slice 3 replaces it
        on_3 = background.current
        assert on_3 is not on_6 and on_3.wait(60) and on_3.state == "done"
        roi.SetCenterWorld(*ct_ras(ct, (24, 24, 3)))  # the box drawn on slice 3 now
        env.press(ui.segmentButton)
        assert engine.encoder_runs == runs + 2, "the box on the slice shown ran no encoder"
        assert "slice(s) 3" in ui.statusLabel.text, ui.statusLabel.text
        env.press(ui.releaseEngineButton)
        view.SetSliceOffset(10.0 + 2.0 * 5)
        assert background.current is None, "no engine: nothing encoded"
    finally:
        scene.RemoveNode(view)


def ct_ras(volume, ijk):
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return m.MultiplyPoint([*ijk, 1])[:3]


# ---- what the prototype found --------------------------------------------------------------


@in_harness
def test_target_segment_combo_lists_new_segments(env):
    """The target-segment combo follows the segments written and undone (issue 18: it was
    refreshed only from the parameter node; the widget reshape of issue 17 refreshes it after
    every run and undo)."""
    ui = env.ui
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    roi = env.add_box((24, 24, 4), (22, 22, 5), ct)
    env.press(ui.segmentButton)
    assert env.entries(ui.targetSegmentComboBox) == [roi.GetName()]
    env.press(ui.undoButton)
    assert env.entries(ui.targetSegmentComboBox) == []


@in_harness
def test_track_on_a_video_with_the_cts_segmentation_advises_a_new_output(env):
    """Track on a video while the output is the CT's segmentation: the error advises a new output
    segmentation (it said "choose the volume it was made on") and comes before the model runs or
    any weights download is offered (the checks of the inputs come first: issue 18 §3.11)."""
    from pythonqt.dialogs import CANCEL

    ui = env.ui
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    ct_box = env.add_box((24, 24, 4), (22, 22, 3), ct)
    env.press(ui.segmentButton)
    folder = env.frame_folder(2)
    env.h.dialogs.answer("QFileDialog.getOpenFileName", CANCEL)
    env.h.dialogs.answer("QFileDialog.getExistingDirectory", str(folder))
    env.press(ui.loadVideoButton)
    browser = ui.sequenceBrowserSelector.currentNode()
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    env.choose(ui.inputSelector, "None")
    env.set_checked(ct_box.GetName(), False)
    env.add_box((50, 48, 0), (40, 40, 1), proxy)
    ct_seg = env.output()
    assert ct_seg.GetName().startswith("PolypSAM"), "the output is still the CT's segmentation"
    ui.checkpointPathLineEdit.text = ""  # the weights would be downloaded: not offered first
    env.h.dialogs.progress.clear()
    env.h.dialogs.answer("ctkMessageBox", env.qt.QMessageBox.Ok, contains="PolypSAM track failed")
    env.press(ui.trackButton)
    env.expect_printed("InvalidInputError")
    message = env.h.dialogs.shown[-1].text
    assert "another voxel grid" in message and "new output segmentation" in message.lower(), message
    assert env.h.dialogs.progress == [], "refused before the model ran"
    assert browser.GetSequenceNode(ct_seg) is None and env.segments(ct_seg) == [ct_box.GetName()]


@in_harness
def test_enter_after_exit_removes_no_observer_twice(env):
    """Leaving and entering the module (also around a scene close) removes each observation once:
    VTKObservationMixin warns "does not have observer" on a second removal (harness finding)."""
    import warnings

    widget = env.module_cpp.widgetRepresentation()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        widget.exit()
        widget.enter()
        widget.exit()
        env.scene.Clear(0)
        widget.enter()
        env.scene.Clear(0)
        widget.exit()
        widget.enter()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "observer" in m], messages


# ---- issue 18 §3, set A: click runs, stale state, inputs first ----------------------------------


@in_harness
def test_a_click_runs_after_the_markups_event_not_inside_it(env):
    """The model runs once the click's PointPositionDefinedEvent has been handled (a zero timer, as
    SlicerNNInteractive does), not inside the markups callback with nested event processing."""
    import vtk

    ui = env.ui
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    ui.targetSegmentComboBox.setEditText("Lesion")
    env.press(ui.includeButton)
    m = vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(m)
    env.h.views.click(m.MultiplyPoint([24, 24, 4, 1])[:3])  # the event has been handled here
    assert env.output() is None, "nothing ran inside the markups event"
    env.h.process_events()
    assert env.segments(env.output()) == ["Lesion"]


@in_harness
def test_clicks_have_progress_cancel_and_refuse_nodes_removed_meanwhile(env):
    """Each click runs under the buttons' progress dialog: Cancel writes nothing; an output
    segmentation deleted while the model runs is refused with a clear message (the scene is left
    as it is); a scene closed meanwhile cancels the run."""
    ui, qt = env.ui, env.qt
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    ui.targetSegmentComboBox.setEditText("Lesion")
    env.press(ui.includeButton)
    env.click_voxel(ct, (24, 24, 4))
    seg = env.output()
    assert ("PolypSAM", "Clicks...") in env.h.dialogs.progress
    before = env.labelmap(seg, "Lesion", ct).copy()
    env.h.dialogs.cancel_next_progress()
    env.press(ui.includeButton)
    env.click_voxel(ct, (26, 22, 4))
    assert np.array_equal(env.labelmap(seg, "Lesion", ct), before), "a cancelled click writes nothing"
    assert "Cancelled" in env.main_window.statusBar().currentMessage()

    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    written = seg.GetBinaryLabelmapInternalRepresentation(segment_id).GetMTime()
    env.h.dialogs.during_next_progress(lambda: env.scene.RemoveNode(seg))
    env.h.dialogs.answer("ctkMessageBox", qt.QMessageBox.Ok, contains="PolypSAM clicks failed")
    env.press(ui.includeButton)
    env.click_voxel(ct, (20, 26, 4))
    env.expect_printed("was removed from the scene")
    assert "output segmentation" in env.h.dialogs.shown[-1].text
    assert seg.GetBinaryLabelmapInternalRepresentation(segment_id).GetMTime() == written, \
        "nothing written into the removed node"
    assert env.slicer.util.getNodesByClass("vtkMRMLSegmentationNode") == []

    env.press(ui.includeButton)
    env.click_voxel(ct, (24, 24, 4))
    env.h.dialogs.during_next_progress(lambda: env.scene.Clear(0))
    env.press(ui.includeButton)
    env.click_voxel(ct, (22, 24, 4))
    assert "Cancelled" in env.main_window.statusBar().currentMessage()
    assert env.slicer.util.getNodesByClass("vtkMRMLSegmentationNode") == [], "nothing left behind"


@in_harness
def test_next_candidate_after_a_scene_close_or_a_new_image_writes_nothing(env):
    """Candidates belong to the image they were computed on: after a scene close, or once the
    input's voxels changed (same node), Next candidate says there are none."""
    ui = env.ui
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    ui.targetSegmentComboBox.setEditText("Lesion")
    ui.candidatesCheckBox.checked = True
    env.press(ui.includeButton)
    env.click_voxel(ct, (24, 24, 4))
    assert "candidate" in ui.clickStatusLabel.text
    from pythonqt.session import synthetic_ct

    env.slicer.util.updateVolumeFromArray(ct, synthetic_ct(shift=7))
    env.press(ui.nextCandidateButton)
    assert "No candidates" in ui.clickStatusLabel.text, ui.clickStatusLabel.text

    env.press(ui.includeButton)
    env.click_voxel(ct, (24, 24, 4))
    env.scene.Clear(0)
    ct = env.ct_volume()
    env.choose(ui.inputSelector, "ct")
    ui.targetSegmentComboBox.setEditText("Lesion")
    ui.clickStatusLabel.text = ""
    env.press(ui.nextCandidateButton)
    assert "No candidates" in ui.clickStatusLabel.text
    assert env.slicer.util.getNodesByClass("vtkMRMLSegmentationNode") == []


@in_harness
def test_click_shortcuts_need_an_input_image(env):
    """A and S with no input image: no place mode, no point lists, a status message (and no
    install or download prompt later)."""
    qt = env.qt
    env.ui.checkpointPathLineEdit.text = ""
    interaction = env.h.core.app.GetInteractionNode()
    shortcut = next(s for s in env.main_window.findChildren(qt.QShortcut) if s.key.toString() == "A")
    shortcut.activated.emit()
    env.h.process_events()
    assert interaction.GetCurrentInteractionMode() != interaction.Place
    assert env.slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode") == []
    assert "input image" in env.main_window.statusBar().currentMessage()
