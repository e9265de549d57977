"""Real MRML scenes from ``slicer-core`` (no desktop Slicer, no Qt) for tests and benchmarks.

A bare ``vtkMRMLScene`` cannot add segments or sequence browsers: the application logic, the
colour logic and the module logics must be wired to it (see ``shared/notes/slicer-core.md``).
:func:`init_slicer_core` does that once per process; the ``slicer_scene`` fixture hands the
initialised scene to one test and clears it afterwards. ``slicer`` is imported lazily so tests
that never ask for a scene do not pay for the import.

Exposed to every test through one line at the end of ``Testing/conftest.py``.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

__all__ = ["init_slicer_core", "slicer_core", "slicer_scene"]

_STATE: dict[str, Any] = {}

_LOGICS = {
    "volumes": ("Volumes", "vtkSlicerVolumesLogic"),
    "markups": ("Markups", "vtkSlicerMarkupsLogic"),
    "segmentations": ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    "sequences": ("Sequences", "vtkSlicerSequencesLogic"),
    "subjecthierarchy": ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    "data": ("Data", "vtkSlicerDataModuleLogic"),
    "transforms": ("Transforms", "vtkSlicerTransformLogic"),
    "cropvolume": ("CropVolume", "vtkSlicerCropVolumeLogic"),
}


class _Module:
    """Stand-in for ``slicer.modules.<name>`` exposing only ``logic()``."""

    def __init__(self, logic: Any) -> None:
        self._logic = logic

    def logic(self) -> Any:
        return self._logic


def init_slicer_core() -> types.SimpleNamespace:
    """Initialise slicer-core once per process; return ``(scene, app, logics)`` as a namespace.

    Sets ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` so that ``slicer.util``
    helpers which look them up (``arrayFromSegmentBinaryLabelmap`` ...) work.
    """
    if "ns" in _STATE:
        return _STATE["ns"]
    import slicer

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetName("default")
    scene.AddNode(crosshair)

    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    color_logic = app.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", color_logic)

    logics: dict[str, Any] = {"colors": color_logic}
    for key, (module_name, class_name) in _LOGICS.items():
        cls = getattr(slicer, class_name, None)
        if cls is None:  # a logic missing from this slicer-core build: skip it
            continue
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(module_name, logic)
        logics[key] = logic

    # reading .mrb / .seq.mrb needs a data IO manager with a cache directory
    import tempfile

    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    remote_io.GetCacheManager().SetRemoteCacheDirectory(tempfile.mkdtemp(prefix="polypsam-mrml-"))
    data_io = slicer.vtkDataIOManagerLogic()
    data_io.SetMRMLApplicationLogic(app)
    data_io.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    remote_io.AddDataIOToScene()
    logics["remoteio"], logics["dataio"] = remote_io, data_io

    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{k: _Module(v) for k, v in logics.items()})
    ns = types.SimpleNamespace(scene=scene, app=app, logics=logics, slicer=slicer)
    _STATE["ns"] = ns
    return ns


@pytest.fixture(scope="session")
def slicer_core() -> types.SimpleNamespace:
    """The process-wide slicer-core state: ``.scene``, ``.app``, ``.logics``, ``.slicer``."""
    try:
        import slicer  # noqa: F401
    except ImportError:
        pytest.skip("slicer-core is not installed")
    return init_slicer_core()


@pytest.fixture
def slicer_scene(slicer_core):
    """The initialised MRML scene for one test; cleared (``Clear(0)``) afterwards."""
    scene = slicer_core.scene
    yield scene
    scene.Clear(0)


# ---- scene-building helpers for the MRML tests (import them from slicer_fixtures) ----------


def rotation(axis: str, degrees: float):
    """3x3 rotation matrix about ``x``, ``y`` or ``z``."""
    import numpy as np

    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def ijk_to_ras_matrix(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """4x4 IJK-to-RAS matrix from RAS ``direction`` columns, ``spacing`` and ``origin``."""
    import numpy as np

    m = np.eye(4)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    m[:3, :3] = d @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def add_volume(scene, array_kji, ijk_to_ras=None, name="vol", class_name="vtkMRMLScalarVolumeNode"):
    """A volume node holding ``array_kji`` with the given 4x4 IJK-to-RAS matrix."""
    import numpy as np
    import slicer

    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    if ijk_to_ras is not None:
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras, float)))
    return node


def add_roi(scene, center, size, rotation_matrix=None, name="roi"):
    """A markups ROI node (``center``/``size`` in RAS mm, optional 3x3 rotation)."""
    import numpy as np
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    node.SetSize(*[float(v) for v in size])
    m = np.eye(4)
    if rotation_matrix is not None:
        m[:3, :3] = rotation_matrix
    m[:3, 3] = center
    node.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(m))
    return node


def add_roi_on_ijk(scene, volume, center_ijk, size_ijk, name="roi"):
    """An axis-aligned ROI centred on voxel ``center_ijk`` of ``volume``, ``size_ijk`` voxels big."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    center = m.MultiplyPoint([*center_ijk, 1])[:3]
    spacing = volume.GetSpacing()
    return add_roi(scene, center, [s * sp for s, sp in zip(size_ijk, spacing)], name=name)


def add_rgb_video(scene, frames, selected=0, name="video"):
    """A sequence browser over RGB ``frames`` (``H x W x 3`` uint8 each), showing ``selected``."""
    import slicer

    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    seq.SetIndexName("frame")
    seq.SetIndexUnit("")
    for t, rgb in enumerate(frames):
        node = slicer.vtkMRMLVectorVolumeNode()
        slicer.util.updateVolumeFromArray(node, rgb[None])
        seq.SetDataNodeAtValue(node, str(t))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "browser")
    browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    browser.SetSelectedItemNumber(selected)
    return browser


def add_volume_sequence(scene, volumes, ijk_to_ras=None, selected=0, name="ct4d", logic=None):
    """A sequence browser over scalar ``volumes`` (``K x J x I`` each), one time point each.

    Every time point gets ``ijk_to_ras`` (4x4, default identity). With the sequences ``logic``
    the proxy volume is created at once.
    """
    import numpy as np
    import slicer

    matrix = slicer.util.vtkMatrixFromArray(np.eye(4) if ijk_to_ras is None else np.asarray(ijk_to_ras, float))
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    seq.SetIndexName("time")
    seq.SetIndexUnit("s")
    for t, array in enumerate(volumes):
        node = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(node, np.asarray(array))
        node.SetIJKToRASMatrix(matrix)
        seq.SetDataNodeAtValue(node, str(t))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    browser.SetSelectedItemNumber(selected)
    if logic is not None:
        logic.UpdateProxyNodesFromSequences(browser)
    return browser


def add_linear_transform(scene, matrix4, name="T"):
    """A linear transform node with ``matrix4`` as its to-parent matrix."""
    import numpy as np
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.asarray(matrix4, float)))
    return node


def run_action(action, engine, *, progress=None, cancel=None, **fields):
    """``polypsam.mrml.run`` of one action on the calling thread (``fields``: the request's)."""
    from polypsam import mrml

    context = mrml.RunContext()
    if progress is not None:
        context.progress = progress
    if cancel is not None:
        context.cancel = cancel
    return mrml.run(mrml.Request(action, **fields), engine, context)


def run_in_background(action, engine, *, while_waiting=lambda: None, interval_s=0.01,
                      progress=None, cancel=None, **fields):
    """One action with its model work on a worker thread, polled the way the module's widget
    polls it: wait in short steps, serving ``while_waiting`` on this thread, then write."""
    from polypsam import mrml
    from polypsam.background import EngineWorker

    worker = EngineWorker()
    try:
        context = mrml.RunContext(worker=worker)
        if progress is not None:
            context.progress = progress
        if cancel is not None:
            context.cancel = cancel
        started = mrml.start(mrml.Request(action, **fields), engine, context)
        while not started.wait(interval_s):
            while_waiting()
        return started.write()
    finally:
        worker.close()
