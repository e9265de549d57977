"""What a widget test works with in the harness process: :class:`Env`.

One :class:`Env` per process holds the booted harness, the loaded module and its widget. Before
each scenario :meth:`Env.begin` closes the scene (as File > Close Scene does), shows the module
and sets the engine settings through the settings panel (the random-weight checkpoint, CPU, the
test image size); after it :meth:`Env.end` fails the scenario on anything printed to the console
(an exception that left a slot, a VTK observer or a module call; a failed connect), on a modal
dialog the script did not answer and on an answer the module never asked for. The helpers act
as a user would: press buttons, pick entries, check list items, click in the slice views.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .harness import REPO, Harness

MODULE_FILE = REPO / "PolypSAM" / "PolypSAM.py"


class Env:
    """The harness plus the PolypSAM module, driven through its .ui objectNames."""

    def __init__(self, harness: Harness, checkpoint: str, image_size: int = 256) -> None:
        import slicer

        self.h = harness
        self.qt = harness.qt
        self.slicer = slicer
        self.checkpoint = checkpoint
        self.image_size = image_size
        self.module_cpp = harness.load_module(MODULE_FILE)  # the C++ side: enter(), exit()
        self.module = self.slicer.modules.polypsam  # what Python sees
        self.python_module = __import__("PolypSAM")
        self.widget: Any = None
        self.needs_new_widget = False
        self._expected: list[str] = []
        self.tmp = Path(harness.app.property("temporaryPath"))

    # ---- scenario frame ------------------------------------------------------------------
    @property
    def ui(self) -> Any:
        return self.widget.ui

    @property
    def scene(self) -> Any:
        return self.slicer.mrmlScene

    @property
    def main_window(self) -> Any:
        return self.slicer.util.mainWindow()

    def begin(self) -> None:
        self.h.check()
        self._expected = []
        self.scene.Clear(0)
        if self.needs_new_widget:  # the last scenario unloaded (cleaned up) the widget
            self.needs_new_widget = False
            self.new_widget()
        self.widget = self.h.select_module("PolypSAM")
        self.use_test_engine()

    def end(self) -> None:
        problems = self.h.check()
        for expected in self._expected:
            matching = [p for p in problems if expected in p]
            if not matching:
                problems.append(f"expected a printed error containing {expected!r}; none was printed")
            for p in matching[:1]:
                problems.remove(p)
        if problems:
            raise AssertionError("\n---\n".join(problems))

    def expect_printed(self, text: str) -> None:
        """This scenario expects one printed error containing ``text`` (e.g. an operation's
        exception re-raised by ``tryWithErrorDisplay`` after its dialog)."""
        self._expected.append(text)

    def new_widget(self) -> Any:
        """A new widget representation, as after a module reload: the old one is cleaned up
        (``moduleAboutToBeUnloaded``) first."""
        self.h.unload_module("PolypSAM")
        cpp = self.h.app.moduleManager().module("PolypSAM")
        cpp._widget = None
        self.widget = self.h.select_module("PolypSAM")
        return self.widget

    def use_test_engine(self) -> None:
        """The settings panel set as a user would for the random-weight tiny checkpoint."""
        ui = self.ui
        ui.engineComboBox.currentIndex = self.python_module.ENGINE_CHOICES.index("in-process")
        ui.modelComboBox.currentIndex = self.python_module.MODEL_CHOICES.index("sam2.1_hiera_tiny")
        ui.checkpointPathLineEdit.text = self.checkpoint
        ui.deviceComboBox.currentIndex = self.python_module.DEVICE_CHOICES.index("cpu")
        ui.imageSizeSpinBox.value = self.image_size

    # ---- what a user does ----------------------------------------------------------------
    def press(self, button: Any) -> None:
        """Click a push button (QAbstractButton::click: pressed, released, clicked(bool))."""
        assert button.enabled, f"{button.objectName} is disabled"
        button.click()
        self.h.process_events()

    def choose(self, combo: Any, text: str) -> None:
        """Pick ``text`` in a node selector or combo box's popup."""
        from .wrapping import unwrap

        q = unwrap(combo)
        if hasattr(q, "userChoose"):
            q.userChoose(text)
        else:
            index = q.findText(text)
            assert index >= 0, f"{combo.objectName} offers no {text!r}"
            q.setCurrentIndex(index)
            q.activated[int].emit(index)
        self.h.process_events()

    def entries(self, combo: Any) -> list[str]:
        from .wrapping import unwrap

        q = unwrap(combo)
        return q.entries() if hasattr(q, "entries") else [q.itemText(i) for i in range(q.count())]

    def list_items(self) -> list[tuple[str, bool]]:
        """The box list as shown: (name, checked)."""
        lw = self.ui.roiListWidget
        qt = self.qt
        return [(lw.item(r).text(), lw.item(r).checkState() == qt.Qt.Checked) for r in range(lw.count)]

    def set_checked(self, name: str, checked: bool = True) -> None:
        lw = self.ui.roiListWidget
        for r in range(lw.count):
            if lw.item(r).text() == name:
                lw.item(r).setCheckState(self.qt.Qt.Checked if checked else self.qt.Qt.Unchecked)
                return
        raise AssertionError(f"no box {name!r} in the list: {self.list_items()}")

    def select_item(self, name: str) -> None:
        lw = self.ui.roiListWidget
        for r in range(lw.count):
            if lw.item(r).text() == name:
                lw.setCurrentRow(r)
                return
        raise AssertionError(f"no box {name!r} in the list: {self.list_items()}")

    def add_box(self, center_ijk, size_ijk, volume: Any) -> Any:
        """Add box, then draw it in a slice view over voxels ``center_ijk`` (size in voxels)."""
        import vtk

        self.press(self.ui.addBoxButton)
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        center = m.MultiplyPoint([*center_ijk, 1])[:3]
        size = [abs(s * sp) for s, sp in zip(size_ijk, volume.GetSpacing())]
        roi = self.h.views.draw_box(center, size)
        self.h.process_events()
        return roi

    def click_voxel(self, volume: Any, ijk) -> None:
        """A click in a slice view on voxel ``ijk`` of ``volume`` (place mode must be on)."""
        import vtk

        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        self.h.views.click(m.MultiplyPoint([*ijk, 1])[:3])
        self.h.process_events()

    # ---- scene builders ------------------------------------------------------------------
    def rgb_frame(self, name: str = "frame", shift: int = 0) -> Any:
        from slicer_fixtures import add_volume

        return add_volume(self.scene, synthetic_rgb(shift)[None], name=name,
                          class_name="vtkMRMLVectorVolumeNode")

    def ct_volume(self, name: str = "ct") -> Any:
        from slicer_fixtures import add_volume, ijk_to_ras_matrix

        return add_volume(self.scene, synthetic_ct(), ijk_to_ras_matrix((0.8, 0.8, 2.0), (5.0, -3.0, 10.0)),
                          name=name)

    def ct_4d(self, name: str = "ct4d") -> Any:
        from slicer_fixtures import add_volume_sequence

        volumes = [synthetic_ct(shift=2 * t, shape=(4, 40, 40)) for t in range(2)]
        return add_volume_sequence(self.scene, volumes, selected=0, name=name,
                                   logic=self.slicer.modules.sequences.logic())

    def frame_folder(self, frames: int = 4) -> Path:
        from PIL import Image

        folder = Path(self.tmp) / f"frames-{os.getpid()}-{len(list(Path(self.tmp).glob('frames-*')))}"
        folder.mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(synthetic_rgb(shift=3 * t)).save(folder / f"frame_{t:03d}.png")
        return folder

    # ---- scene readers -------------------------------------------------------------------
    def segments(self, segmentation: Any) -> list[str]:
        s = segmentation.GetSegmentation()
        return [s.GetNthSegment(n).GetName() for n in range(s.GetNumberOfSegments())]

    def labelmap(self, segmentation: Any, name: str, reference: Any) -> np.ndarray:
        s = segmentation.GetSegmentation()
        segment_id = s.GetSegmentIdBySegmentName(name)
        assert segment_id, f"no segment {name!r} in {segmentation.GetName()}: {self.segments(segmentation)}"
        return self.slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference)

    def provenance(self, segmentation: Any, name: str) -> dict[str, str]:
        from polypsam import mrml

        return mrml.read_provenance(segmentation, name)

    def parameters(self) -> Any:
        """The module's parameter node in the scene, read through PolypSAMParameterNode."""
        node = self.scene.GetSingletonNode("PolypSAM", "vtkMRMLScriptedModuleNode")
        assert node is not None, "the module made no parameter node"
        return self.python_module.PolypSAMParameterNode(node)

    @property
    def panel(self) -> Any:
        """The .ui's top-level widget (objectName "PolypSAM") in the module panel."""
        return self.slicer.util.findChild(self.module.widgetRepresentation(), "PolypSAM")

    def output(self) -> Any:
        """The output segmentation the selector shows."""
        return self.ui.outputSegmentationSelector.currentNode()


def synthetic_rgb(shift: int = 0, height: int = 96, width: int = 128) -> np.ndarray:
    """An RGB frame with a bright disc (a stand-in polyp) on a textured background."""
    rng = np.random.default_rng(shift)
    yy, xx = np.mgrid[:height, :width]
    img = rng.integers(40, 90, size=(height, width, 3)).astype(np.uint8)
    img[(yy - 48) ** 2 + (xx - 50 - shift) ** 2 < 20 ** 2] = (210, 120, 110)
    return img


def synthetic_ct(shift: int = 0, shape=(8, 48, 56)) -> np.ndarray:
    """A CT-like int16 volume with an ellipsoid lesion (HU 60 on -100)."""
    kk, jj, ii = np.mgrid[: shape[0], : shape[1], : shape[2]]
    array = np.full(shape, -100, dtype=np.int16)
    k, j, i = shape[0] / 2, shape[1] / 2, shape[2] / 2 - 4 + shift
    array[(kk - k) ** 2 / 6 + (jj - j) ** 2 / 80 + (ii - i) ** 2 / 80 < 1] = 60
    return array
