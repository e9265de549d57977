"""The module's self-test scenarios on generated data, Qt-free.

Slicer's self-test (``PolypSAMTest`` in ``PolypSAM.py``: Reload and Test) runs them in Slicer with
the module's logic, and ``Testing/test_mrml_scenarios.py`` runs them on slicer-core, so the
scenarios Slicer runs are also checked here. Each one builds its data in ``slicer.mrmlScene``,
runs through ``logic`` (the module's logic, or anything with its ``session`` and ``worker``) and
raises :class:`AssertionError` naming what failed. Random weights make masks meaningless: the
scenarios check that the whole path runs and writes where it should. Without torch and sam2
(:func:`skipped`, e.g. on the extensions build factory) they are reported skipped, not failed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from typing import Any, Callable

import numpy as np
import slicer
import vtk

from ..errors import CancelledError
from .scene import new_segmentation
from .segments import export_segment_labelmap, read_provenance
from .shapes import Request, RunContext


def skipped() -> str:
    """Why the SAM2 scenarios cannot run here (torch or sam2 is not importable), else ``""``."""
    missing = [name for name in ("torch", "sam2") if importlib.util.find_spec(name) is None]
    return f"skipped: install PyTorch and SAM2 first ({' and '.join(missing)} not installed)" if missing else ""


@functools.lru_cache(maxsize=1)
def random_weight_engine(image_size: int = 256) -> Any:
    """An in-process engine on SAM2.1 tiny with random weights (torch and sam2 needed), built once
    per process from the official config and saved as a checkpoint, so the real loading path runs."""
    import torch

    from ..engines import EngineSettings, create_engine
    from ..sam2_adapter.model import build_model, save_checkpoint

    config = "configs/sam2.1/sam2.1_hiera_t.yaml"
    torch.manual_seed(0)
    path = save_checkpoint(build_model(config, None, "cpu"), os.path.join(
        tempfile.mkdtemp(prefix="polypsam-test-"), "sam2.1_hiera_tiny_random.pt"))
    return create_engine(EngineSettings(model="sam2.1_hiera_tiny", checkpoint=str(path),
                                        config=config, device="cpu", image_size=image_size))


def _check(condition: Any, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _roi(node: Any, ijk, size, name: str = "Polyp") -> Any:
    """An ROI centred on voxel ``ijk`` of ``node``, ``size`` millimetres big."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetCenter(ijk_to_ras.MultiplyPoint([*ijk, 1])[:3])
    roi.SetSize(size)
    return roi


def segment_rgb_frame(logic: Any, engine: Any, pump: Callable[[], None]) -> None:
    """2-D segment on a generated RGB frame: one named segment with provenance."""
    yy, xx = np.mgrid[:96, :128]
    rgb = np.full((96, 128, 3), 60, dtype=np.uint8)
    rgb[(yy - 48) ** 2 + (xx - 50) ** 2 < 20 ** 2] = (210, 120, 110)
    frame = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(frame, rgb[None])
    seg = new_segmentation(slicer.mrmlScene, frame)
    result = logic.session.run(Request("segment", input_node=frame, segmentation_node=seg,
                               rois=[_roi(frame, (50, 48, 0), [44, 44, 1])]), engine)
    _check(list(result.segment_ids) == ["Polyp"], f"segments written: {result.segment_ids}")
    _check(export_segment_labelmap(seg, frame).shape == (1, 96, 128), "labels on the frame's grid")
    _check("checkpoint_sha256" in read_provenance(seg, "Polyp"), "provenance names the checkpoint")


def propagate_volume(logic: Any, engine: Any, pump: Callable[[], None]) -> None:
    """3-D propagate with the model on the worker thread while this thread serves ``pump``;
    other segments kept; exported; undone."""
    from .exporting import export_segmentation
    from .history import undo

    kk, yy, xx = np.mgrid[:12, :64, :64]
    array = np.full((12, 64, 64), -100, dtype=np.int16)
    array[(kk - 6) ** 2 / 16 + (yy - 32) ** 2 / 100 + (xx - 30) ** 2 / 100 < 1] = 60
    volume = slicer.util.addVolumeFromArray(array, name="ct")
    volume.SetSpacing(0.8, 0.8, 2.0)
    roi = _roi(volume, (30, 32, 6), [20 * 0.8, 20 * 0.8, 7 * 2.0], "Lesion")
    seg = new_segmentation(slicer.mrmlScene, volume)
    other = seg.GetSegmentation().AddEmptySegment("", "Other")
    request = Request("propagate", input_node=volume, rois=[roi], segmentation_node=seg)
    run = logic.session.start(request, engine, RunContext(worker=logic.worker))
    pumped = 0
    while not run.wait(0.05):
        pumped += 1
        pump()
    result = run.write()
    _check("Lesion" in result.segment_ids, f"segments written: {result.segment_ids}")
    _check(pumped > 0, "the calling thread served its events while the model worked")
    _check(seg.GetSegmentation().GetSegment(other) is not None, "another segment is kept")
    _check(read_provenance(seg, "Lesion").get("operation") == "propagate", "provenance: propagate")
    path = os.path.join(tempfile.mkdtemp(prefix="polypsam-test-"), "lesion.seg.nrrd")
    _check(os.path.isfile(export_segmentation(seg, volume, path, "seg.nrrd").path), "exported")
    _check(undo(seg), "the propagation can be undone")
    _check(not seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion"), "undo removed it")


def track_4d_volume(logic: Any, engine: Any, pump: Callable[[], None]) -> None:
    """Track through the time points of a 4-D volume into a segmentation sequence."""
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
    seg = new_segmentation(slicer.mrmlScene, proxy)
    result = logic.session.run(Request("track", browser_node=browser, segmentation_node=seg, rois=[
        _roi(proxy, (19, 23, 2), [16 * 0.8, 16 * 0.8, 3 * 2.0], "Lesion")]), engine)
    _check("3 time point(s)" in result.summary, result.summary)
    _check(browser.GetSequenceNode(seg).GetNumberOfDataNodes() == 3,
           "one segmentation per time point")


def cancel_leaves_segments_untouched(logic: Any, engine: Any, pump: Callable[[], None]) -> None:
    """A cancelled run writes nothing."""
    array = np.zeros((6, 48, 48), dtype=np.int16)
    array[2:5, 15:30, 15:30] = 100
    volume = slicer.util.addVolumeFromArray(array, name="ct")
    seg = new_segmentation(slicer.mrmlScene, volume)
    context = RunContext()
    context.cancel.cancel()
    try:
        logic.session.run(Request("propagate", input_node=volume, segmentation_node=seg,
                          rois=[_roi(volume, (22, 22, 3), [20, 20, 4])]), engine, context)
    except CancelledError:
        pass
    else:
        raise AssertionError("a cancelled run finished")
    _check(seg.GetSegmentation().GetNumberOfSegments() == 0, "a cancelled run wrote segments")


def run_all(logic: Any, engine: Any, pump: Callable[[], None],
            before: Callable[[str], Any] = lambda what: None) -> None:
    """Every scenario in order, each one after ``before(what it shows)``."""
    for what, scenario in SCENARIOS:
        before(what)
        scenario(logic, engine, pump)


#: ``(what it shows, scenario(logic, engine, pump))`` in the order the self-test runs them.
SCENARIOS = (
    ("2-D segment on a generated RGB frame", segment_rgb_frame),
    ("3-D propagate on a generated volume", propagate_volume),
    ("Track through the time points of a 4-D volume", track_4d_volume),
    ("A cancelled run writes nothing", cancel_leaves_segments_untouched),
)
