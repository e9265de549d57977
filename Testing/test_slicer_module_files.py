"""The Slicer module's files, checked without desktop Slicer.

``PolypSAM.py`` imports Qt (through ``slicer.ScriptedLoadableModule``) and cannot be imported
here; it is compiled and parsed with ``ast`` so that every ``self.ui.<name>`` it binds exists in
the ``.ui`` file and every ``SlicerParameterName`` of the ``.ui`` is a parameter node field.
Its Qt-free helpers are imported and exercised: the first-use dependency flow with fake
installers, the engine factory with a random-weight checkpoint, and the operations on real
MRML scenes from ``slicer-core``.
"""

from __future__ import annotations

import ast
import os
import py_compile
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from slicer_fixtures import add_rgb_video, add_roi_on_ijk

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "PolypSAM"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PolypSAM.ui"
MODULE_FILE = MODULE_DIR / "PolypSAM.py"

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


# -- static checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in MODULE_DIR.glob("*.py")))
def test_module_python_files_compile(name, tmp_path):
    py_compile.compile(str(MODULE_DIR / name), cfile=str(tmp_path / (name + "c")), doraise=True)


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    widgets = {}
    for w in root.iter("widget"):
        name = w.get("name")
        assert name not in widgets, f"duplicate widget name {name} in PolypSAM.ui"
        widgets[name] = w
    return widgets


def _ui_names_used_in_module() -> set[str]:
    tree = ast.parse(MODULE_FILE.read_text())
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def _parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "PolypSAMParameterNode":
            decorators = [ast.unparse(d) for d in node.decorator_list]
            assert "parameterNodeWrapper" in decorators
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
    raise AssertionError("PolypSAMParameterNode not found")


def test_ui_is_wellformed_designer_xml():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "PolypSAM"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("qMRML", "ctk"))}
    assert custom <= declared, f"custom widgets used but not declared: {custom - declared}"


def test_every_ui_name_bound_in_module_exists_in_ui():
    used = _ui_names_used_in_module()
    widgets = _ui_widgets()
    assert used, "PolypSAM.py binds no self.ui widgets?"
    missing = sorted(used - set(widgets))
    assert not missing, f"PolypSAM.py uses self.ui.{missing} which PolypSAM.ui does not define"
    for required in ("inputSelector", "sequenceBrowserSelector", "outputSegmentationSelector",
                     "addBoxButton", "roiListWidget", "segmentButton", "propagateButton",
                     "trackButton", "refineButton", "keySliceSpinBox", "sliceRangeStartSpinBox",
                     "sliceRangeEndSpinBox", "settingsCollapsibleButton", "engineComboBox",
                     "modelComboBox", "checkpointPathLineEdit", "deviceComboBox",
                     "imageSizeSpinBox", "windowPresetComboBox"):
        assert required in widgets, required


def test_ui_parameter_names_are_parameter_node_fields():
    fields = _parameter_fields()
    widgets = _ui_widgets()
    bound = {}
    for name, w in widgets.items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.findtext("string")
    assert bound, "no widget is bound to the parameter node"
    unknown = {w: p for w, p in bound.items() if p not in fields}
    assert not unknown, f"SlicerParameterName without a parameter node field: {unknown}"
    # The GUI-bound fields not in the .ui are managed by the widget code (the ROI list).
    assert set(fields) - set(bound.values()) == {"rois"}
    assert "vtkMRMLScalarVolumeNode" in fields["inputVolume"]
    assert "vtkMRMLVectorVolumeNode" in fields["inputVolume"]
    assert fields["outputSegmentation"] == "vtkMRMLSegmentationNode"


class _Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class _WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _parameter_node_types(slicer_core) -> dict[str, object]:
    """PolypSAMParameterNode's annotations as typing objects (its class body run from the AST).

    The decorator is left out and ``Choice``/``WithinRange`` are recorded, not validated: what
    is checked below is the shape Slicer's parameterNodeWrapper accepts.
    """
    import typing

    import PolypSAMEngines
    import slicer

    tree = ast.parse(MODULE_FILE.read_text())
    body = [n for n in tree.body
            if (isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) and t.id.endswith("_CHOICES")
                                                  for t in n.targets))
            or (isinstance(n, ast.ClassDef) and n.name == "PolypSAMParameterNode")]
    for node in body:
        if isinstance(node, ast.ClassDef):
            node.decorator_list = []
    namespace = {"Annotated": typing.Annotated, "Optional": typing.Optional, "Union": typing.Union,
                 "Choice": _Choice, "WithinRange": _WithinRange, "PolypSAMEngines": PolypSAMEngines}
    namespace.update({name: getattr(slicer, name) for name in dir(slicer) if name.startswith("vtkMRML")})
    exec(compile(ast.Module(body=body, type_ignores=[]), str(MODULE_FILE), "exec", dont_inherit=True),
         namespace)
    cls = namespace["PolypSAMParameterNode"]
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: (hint, getattr(cls, name, None)) for name, hint in hints.items()}


def _node_classes(hint) -> list | None:
    """The node classes of a node field (one class, or a union of classes with None); else None."""
    import typing

    import slicer

    if isinstance(hint, type) and issubclass(hint, slicer.vtkMRMLNode):
        return [hint]
    if typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        classes = [a for a in args if a is not type(None)]
        if all(isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode) for a in classes):
            # Slicer writes the default (None) through the union: without None in it, building
            # the parameter node fails ("Unable to write value 'None'").
            assert type(None) in args, f"a union of node types needs None (Optional[...]): {hint}"
            return classes
    return None


def test_ui_bindings_have_slicer_gui_connectors(slicer_core):
    """Each bound (widget, field) pair is one Slicer's parameterNodeWrapper can connect.

    Slicer's connectors (``slicer/parameterNodeWrapper/guiConnectors.py``) match on the exact
    widget class: qMRMLNodeComboBox - node or union of nodes (its nodeTypes are set from the
    field); QSpinBox - int; QComboBox - a type annotated with ``Choice`` (items are replaced by
    the choices); QLineEdit - str. Defaults must pass the field's own validators.
    """
    import typing

    fields = _parameter_node_types(slicer_core)
    for name, w in _ui_widgets().items():
        bound = [p.findtext("string") for p in w.findall("property") if p.get("name") == "SlicerParameterName"]
        if not bound:
            continue
        hint, default = fields[bound[0]]
        base, *extras = typing.get_args(hint) if typing.get_origin(hint) is typing.Annotated else (hint,)
        widget_class = w.get("class")
        if widget_class == "qMRMLNodeComboBox":
            classes = _node_classes(base)
            assert classes, f"{name} binds {bound[0]}, which is not a node field: {hint}"
            ui_types = [s.text for s in w.find("property[@name='nodeTypes']").iter("string")]
            assert ui_types == [c.__name__ for c in classes], (name, ui_types)
        elif widget_class == "QSpinBox":
            assert base is int, (name, hint)
            ranges = [e for e in extras if isinstance(e, _WithinRange)]
            assert ranges and ranges[0].minimum <= default <= ranges[0].maximum, (name, default)
        elif widget_class == "QComboBox":
            choices = [e for e in extras if isinstance(e, _Choice)]
            assert base in (str, int, float, bool) and choices, f"{name}: a QComboBox needs Choice: {hint}"
            assert default in choices[0].choices, (name, default, choices[0].choices)
        elif widget_class == "QLineEdit":
            assert base is str, (name, hint)
        else:
            raise AssertionError(f"{name}: no Slicer GUI connector is checked for {widget_class}")
    rois, _ = fields["rois"]
    assert typing.get_origin(rois) is list and _node_classes(typing.get_args(rois)[0])


def test_node_selectors_follow_the_scene():
    root = ET.parse(UI_FILE).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers


def test_module_declares_template_classes():
    tree = ast.parse(MODULE_FILE.read_text())
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["PolypSAM"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["PolypSAMWidget"]
    assert classes["PolypSAMLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["PolypSAMTest"] == ["ScriptedLoadableModuleTest"]
    text = MODULE_FILE.read_text()
    assert '"Segmentation"' in text and "tryWithErrorDisplay" in text
    # The logic never builds SAM2 itself: only the engine factory does.
    assert "SAM2Engine" not in text and "build_sam" not in text
    # No timers and no installs at import/construction time.
    assert "QTimer" not in text and "pip_install" not in text


# -- first-use dependencies -----------------------------------------------------------------------
class _FakeEnv:
    """Which modules import; installs "add" modules; records the calls and SAM2_BUILD_CUDA."""

    PIP_TO_MODULE = {"torch": "torch", "torchvision": "torchvision", "sam2": "sam2",
                     "hydra-core": "hydra", "iopath": "iopath", "tqdm": "tqdm",
                     "platformdirs": "platformdirs", "pillow": "PIL", "setuptools": "setuptools",
                     "wheel": "wheel"}

    def __init__(self, present, install_works=True):
        self.present = set(present)
        self.calls = []
        self.install_works = install_works

    def find_spec(self, name):
        return object() if name in self.present else None

    def pip_install(self, requirements):
        self.calls.append((requirements, os.environ.get("SAM2_BUILD_CUDA")))
        if self.install_works:
            for token in requirements.split():
                if not token.startswith("-"):
                    base = token.split("=")[0].split(">")[0]
                    self.present.add(self.PIP_TO_MODULE.get(base, base))


ALL = {"torch", "torchvision", "sam2", "hydra", "iopath", "tqdm", "platformdirs", "PIL",
       "setuptools", "wheel"}


def test_dependencies_present_needs_no_dialog():
    import PolypSAMDependencies as deps

    env = _FakeEnv(ALL)
    status = deps.ensure_dependencies(confirm=lambda text: pytest.fail("asked"),
                                      pip_install=env.pip_install, torch_installer=None,
                                      find_spec=env.find_spec)
    assert status.ready and not env.calls


def test_torch_without_torchvision_is_enough():
    """PolypSAM never imports torchvision (a CPU-only torch has no PyPI torchvision here)."""
    import PolypSAMDependencies as deps

    env = _FakeEnv(ALL - {"torchvision"})
    status = deps.ensure_dependencies(confirm=lambda text: pytest.fail("asked"),
                                      pip_install=env.pip_install, torch_installer=None,
                                      find_spec=env.find_spec)
    assert status.ready and not env.calls
    assert not any("torchvision" in r for r in deps.requirements_summary())


def test_dependencies_declined_installs_nothing():
    import PolypSAMDependencies as deps

    env = _FakeEnv(ALL - {"torch", "torchvision", "sam2"})
    asked = []
    status = deps.ensure_dependencies(confirm=lambda text: asked.append(text) or False,
                                      pip_install=env.pip_install, torch_installer=None,
                                      find_spec=env.find_spec)
    assert status.declined and not status.ready and not env.calls
    assert f"torch=={deps.TORCH_VERSION}" in asked[0] and f"sam2=={deps.SAM2_VERSION}" in asked[0]


def test_dependencies_pip_flow_pins_torch_and_builds_sam2_without_cuda(monkeypatch):
    import PolypSAMDependencies as deps

    monkeypatch.delitem(sys.modules, "torch", raising=False)  # a fresh Slicer: torch not loaded
    monkeypatch.delenv("SAM2_BUILD_CUDA", raising=False)
    env = _FakeEnv({"PIL", "setuptools", "wheel"})
    status = deps.ensure_dependencies(confirm=lambda text: True, pip_install=env.pip_install,
                                      torch_installer=None, find_spec=env.find_spec)
    assert status.ready and not status.restart_needed, status
    reqs = [c[0] for c in env.calls]
    assert reqs[0] == f"torch=={deps.TORCH_VERSION}", "torchvision is not needed"
    assert reqs[-1] == f"--no-deps --no-build-isolation sam2=={deps.SAM2_VERSION}"
    assert env.calls[-1][1] == "0", "sam2 must be built with SAM2_BUILD_CUDA=0"
    assert all(flag is None for _, flag in env.calls[:-1])
    assert "SAM2_BUILD_CUDA" not in os.environ, "the environment is restored"
    assert any("hydra-core" in r for r in reqs)
    assert not any("polypsam" in r for r in reqs), "the library ships with the module"


def test_dependencies_use_pytorch_extension_when_present(monkeypatch):
    import PolypSAMDependencies as deps

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    env = _FakeEnv(ALL - {"torch", "torchvision"})
    used = []

    def installer(torch_req, vision_req):
        used.append((torch_req, vision_req))
        env.present |= {"torch", "torchvision"}
        return object()

    status = deps.ensure_dependencies(confirm=lambda text: True, pip_install=env.pip_install,
                                      torch_installer=installer, find_spec=env.find_spec)
    assert status.ready
    assert used == [(f"=={deps.TORCH_VERSION}", f"=={deps.TORCHVISION_VERSION}")]
    assert not env.calls


def test_dependencies_report_restart_when_still_not_importable(monkeypatch):
    import PolypSAMDependencies as deps

    env = _FakeEnv(ALL - {"sam2"}, install_works=False)
    status = deps.ensure_dependencies(confirm=lambda text: True, pip_install=env.pip_install,
                                      torch_installer=None, find_spec=env.find_spec)
    assert status.restart_needed and not status.ready
    assert "restart" in status.message.lower()


def test_dependencies_install_failure_is_one_clear_error():
    import PolypSAMDependencies as deps

    env = _FakeEnv(ALL - {"sam2"})

    def failing(requirements):
        raise RuntimeError("pip exited with status 1")

    with pytest.raises(deps.DependencyInstallError, match="pip exited with status 1"):
        deps.ensure_dependencies(confirm=lambda text: True, pip_install=failing,
                                 torch_installer=None, find_spec=env.find_spec)


def test_library_path_for_a_source_checkout(monkeypatch):
    import PolypSAMDependencies as deps

    monkeypatch.setattr(sys, "path", [p for p in sys.path])
    added = deps.ensure_library_on_path(str(MODULE_DIR))
    assert added == str(REPO / "PolypSAMLib") and sys.path[0] == added


# -- engine factory -------------------------------------------------------------------------------
def test_weights_to_download_only_for_uncached_registry_models(tmp_path, monkeypatch):
    import PolypSAMEngines as engines

    monkeypatch.setenv("POLYPSAM_CACHE_DIR", str(tmp_path))
    spec = engines.weights_to_download(engines.EngineSettings(model="sam2.1_hiera_tiny"))
    assert spec is not None and spec.name == "sam2.1_hiera_tiny"
    (tmp_path / spec.filename).write_bytes(b"x")
    assert engines.weights_to_download(engines.EngineSettings(model="sam2.1_hiera_tiny")) is None
    custom = engines.EngineSettings(checkpoint=str(tmp_path / "mine.pt"))
    assert engines.weights_to_download(custom) is None


def test_engine_factory_refuses_silent_download(tmp_path, monkeypatch):
    import PolypSAMEngines as engines
    from polypsam.errors import CheckpointError, InvalidInputError

    monkeypatch.setenv("POLYPSAM_CACHE_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the cache"):
        engines.create_engine(engines.EngineSettings(model="sam2.1_hiera_tiny"))
    with pytest.raises(InvalidInputError, match="unknown engine"):
        engines.create_engine(engines.EngineSettings(kind="cloud"))


@pytest.fixture(scope="module")
def module_engine(tiny_checkpoint):
    import PolypSAMEngines as engines

    cache = engines.EngineCache()
    settings = engines.EngineSettings(model="sam2.1_hiera_tiny", checkpoint=str(tiny_checkpoint),
                                      device="cpu", image_size=256)
    engine = cache.get(settings)
    assert cache.get(settings) is engine, "same settings reuse the loaded engine"
    yield engine
    cache.close()


def test_engine_factory_builds_custom_checkpoint(module_engine, tiny_checkpoint):
    info = module_engine.info
    assert info.image_size == 256 and info.device == "cpu"
    assert Path(info.checkpoint) == Path(tiny_checkpoint)
    assert len(info.checkpoint_sha256) == 64


# -- operations on real MRML (slicer-core) ---------------------------------------------------------
def _rgb_frame_node(scene, rgb):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(node, rgb[None])
    return node


def test_add_box_puts_the_views_in_place_mode_for_a_new_roi(slicer_scene, slicer_core):
    import PolypSAMOperations as ops

    selection, interaction = slicer_core.app.GetSelectionNode(), slicer_core.app.GetInteractionNode()
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    first = ops.place_box(slicer_scene, selection, interaction)
    second = ops.place_box(slicer_scene, selection, interaction, frame=7)
    assert first.IsA("vtkMRMLMarkupsROINode") and first.GetDisplayNode() is not None
    assert first.GetName() != second.GetName() and first.GetName().startswith("Polyp")
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    assert selection.GetActivePlaceNodeID() == second.GetID()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert not interaction.GetPlaceModePersistence()
    assert first.GetAttribute(ops.FRAME_ATTRIBUTE) is None
    assert second.GetAttribute(ops.FRAME_ATTRIBUTE) == "7"
    assert first.GetNumberOfControlPoints() == 0  # drawn by the user's click-drag
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)


def test_new_segmentation_takes_the_input_geometry(slicer_scene):
    import PolypSAMOperations as ops
    import slicer
    import vtk

    volume = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(volume, np.zeros((5, 6, 7), dtype=np.int16))
    volume.SetSpacing(0.7, 0.8, 2.5)
    volume.SetOrigin(10, -20, 30)
    seg = ops.new_segmentation(slicer_scene, volume)
    assert seg.GetDisplayNode() is not None and seg.GetName().startswith("PolypSAM")
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    numbers = [float(v) for v in geometry.split(";") if v]  # IJK→RAS (row-major), then the extent
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    assert numbers[:16] == pytest.approx([ijk_to_ras.GetElement(r, c) for r in range(4) for c in range(4)])
    assert numbers[16:] == [0, 6, 0, 5, 0, 4]
    assert ops.new_segmentation(slicer_scene).GetName() != seg.GetName()


def test_segment_2d_on_rgb_frame_writes_named_segments(slicer_scene, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml

    from conftest import synthetic_rgb

    rgb = synthetic_rgb(96, 128)
    frame = _rgb_frame_node(slicer_scene, rgb)
    rois = [add_roi_on_ijk(slicer_scene, frame, (51, 48, 0), (40, 40, 1), "Polyp A"),
            add_roi_on_ijk(slicer_scene, frame, (100, 30, 0), (20, 20, 1), "Polyp B")]
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    steps = []
    result = ops.segment_2d(module_engine, frame, rois, seg,
                            progress=lambda d, t, m: steps.append((d, t)))
    assert sorted(result.segment_ids) == ["Polyp A", "Polyp B"]
    assert steps[-1][0] == steps[-1][1]
    labels = mrml.export_segment_labelmap(seg, frame)
    assert labels.shape == (1, 96, 128)
    tags = mrml.read_provenance(seg, "Polyp A")
    assert tags["operation"] == "segment" and tags["key_slice"] == "0"
    assert tags["checkpoint_sha256"] == module_engine.info.checkpoint_sha256
    assert mrml.undo(seg) and seg.GetSegmentation().GetNumberOfSegments() == 0


def test_segment_2d_on_volume_replaces_only_the_key_slice(slicer_scene, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml
    from slicer_fixtures import add_volume

    array = np.full((8, 48, 56), -200, dtype=np.int16)
    array[2:6, 14:34, 16:38] = 80
    volume = add_volume(slicer_scene, array, name="ct")
    roi = add_roi_on_ijk(slicer_scene, volume, (27, 24, 4), (24, 22, 1), "Lesion")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    prior = np.zeros(array.shape, dtype=bool)
    prior[1, 5:10, 5:10] = True  # something on another slice of the same segment
    mrml.write_mask_to_segment(seg, "Lesion", prior, volume)
    ops.segment_2d(module_engine, volume, [roi], seg, window_preset="abdomen")
    labels = mrml.export_segment_labelmap(seg, volume, ["Lesion"])
    assert labels[1, 5:10, 5:10].all(), "other slices of the segment are kept"
    assert mrml.read_provenance(seg, "Lesion")["key_slice"] == "4"


def test_failed_run_leaves_segments_untouched(slicer_scene, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml
    from polypsam.engine import CancelToken
    from polypsam.errors import CancelledError, InvalidInputError
    from slicer_fixtures import add_volume

    array = np.zeros((4, 32, 32), dtype=np.int16)
    volume = add_volume(slicer_scene, array, name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    keep = np.zeros(array.shape, dtype=bool)
    keep[2, 3:8, 3:8] = True
    mrml.write_mask_to_segment(seg, "Existing", keep, volume)
    before = mrml.export_segment_labelmap(seg, volume).copy()
    inside = add_roi_on_ijk(slicer_scene, volume, (16, 16, 2), (12, 12, 1), "Polyp")
    outside = add_roi_on_ijk(slicer_scene, volume, (500, 500, 2), (12, 12, 1), "Far")
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(CancelledError):
        ops.segment_2d(module_engine, volume, [inside], seg, cancel=cancel)
    with pytest.raises(InvalidInputError):
        ops.segment_2d(module_engine, volume, [inside, outside], seg)
    with pytest.raises(InvalidInputError, match="no box"):
        ops.segment_2d(module_engine, volume, [], seg)
    with pytest.raises(InvalidInputError, match="no input"):
        ops.segment_2d(module_engine, None, [inside], seg)
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(mrml.export_segment_labelmap(seg, volume), before)


def test_before_write_hook_lets_another_undo_history_revert_the_write(slicer_scene, module_engine):
    """The widget registers the Segment Editor's saveStateForUndo as a before-write hook; here a
    second vtkSegmentationHistory (the class the Segment Editor's undo uses) stands in for it."""
    import slicer

    import PolypSAMOperations as ops
    from polypsam import mrml
    from slicer_fixtures import add_volume

    array = np.full((3, 40, 48), -100, dtype=np.int16)
    volume = add_volume(slicer_scene, array, name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    existing = np.zeros(array.shape, dtype=bool)
    existing[0, 2:6, 2:6] = True
    mrml.write_mask_to_segment(seg, "Existing", existing, volume)
    editor_history = slicer.vtkSegmentationHistory()
    editor_history.SetSegmentation(seg.GetSegmentation())
    seen = []

    def hook(node):
        seen.append(node.GetSegmentation().GetNumberOfSegments())
        editor_history.SaveState()

    ops.add_before_write_hook(hook)
    try:
        roi = add_roi_on_ijk(slicer_scene, volume, (24, 20, 1), (20, 16, 1), "Lesion")
        ops.segment_2d(module_engine, volume, [roi], seg)
        bad = add_roi_on_ijk(slicer_scene, volume, (900, 900, 1), (10, 10, 1), "Far")
        with pytest.raises(Exception):
            ops.segment_2d(module_engine, volume, [bad], seg)
    finally:
        ops.remove_before_write_hook(hook)
    assert seen == [1], "called once, before the write, and not for the failed run"
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    assert editor_history.RestorePreviousState()
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(mrml.export_segment_labelmap(seg, volume) > 0, existing)


def test_display_window_is_read_not_written(slicer_scene):
    import PolypSAMOperations as ops
    from polypsam.preprocess import Window
    from slicer_fixtures import add_volume

    array = (np.arange(4 * 16 * 16).reshape(4, 16, 16) % 300).astype(np.int16)
    volume = add_volume(slicer_scene, array, name="ct")
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(350, 50)
    assert ops.intensity_for(volume, "display") == Window(50, 350)
    assert ops.intensity_for(volume, "lung") == Window(-600, 1500)
    import slicer

    assert np.array_equal(slicer.util.arrayFromVolume(volume), array)


def _lesion_volume(scene):
    from slicer_fixtures import add_volume

    kk, yy, xx = np.mgrid[:10, :48, :48]
    array = np.full((10, 48, 48), -150, dtype=np.int16)
    array[(kk - 5) ** 2 / 9 + (yy - 24) ** 2 / 64 + (xx - 22) ** 2 / 64 < 1] = 70
    return array, add_volume(scene, array, name="ct")


def test_propagate_writes_only_the_slice_range_and_keeps_other_segments(slicer_scene, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml

    array, volume = _lesion_volume(slicer_scene)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    other = np.zeros(array.shape, dtype=bool)
    other[0, 1:6, 1:6] = True
    mrml.write_mask_to_segment(seg, "Other", other, volume)
    outside = np.zeros(array.shape, dtype=bool)
    outside[9, 30:40, 30:40] = True
    mrml.write_mask_to_segment(seg, "Lesion", outside, volume)
    roi = add_roi_on_ijk(slicer_scene, volume, (22, 24, 5), (20, 20, 5), "Lesion")
    steps = []
    result = ops.propagate(module_engine, volume, [roi], seg, window_preset="abdomen",
                           progress=lambda d, t, m: steps.append((d, t)))
    assert set(result.segment_ids) == {"Lesion"}
    assert steps and steps[-1][0] == steps[-1][1]
    labels = mrml.export_segment_labelmap(seg, volume, ["Other", "Lesion"])
    assert (labels[0, 1:6, 1:6] == 1).all(), "another segment is untouched"
    assert (labels[9, 30:40, 30:40] == 2).all(), "slices outside the range are kept"
    tags = mrml.read_provenance(seg, "Lesion")
    assert tags["operation"] == "propagate" and tags["key_slice"] == "5"
    assert tags["slice_range"] == "3,7"


def test_refine_volume_uses_extra_boxes_as_conditioning(slicer_scene, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml

    array, volume = _lesion_volume(slicer_scene)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    first = add_roi_on_ijk(slicer_scene, volume, (22, 24, 5), (20, 20, 1), "Lesion")
    extra = add_roi_on_ijk(slicer_scene, volume, (22, 24, 3), (14, 14, 1), "extra box")
    ops.refine(module_engine, volume, [first, extra], seg, window_preset="abdomen")
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    tags = mrml.read_provenance(seg, "Lesion")
    assert tags["operation"] == "refine" and tags["refinement_slices"] == "3"
    assert tags["slice_range"] == "3,5"


def test_track_writes_a_synchronised_segmentation_sequence(slicer_scene, slicer_core, module_engine):
    import PolypSAMOperations as ops

    from conftest import synthetic_rgb

    browser = add_rgb_video(slicer_scene, [synthetic_rgb(64, 80, seed=t) for t in range(4)],
                            selected=1)
    slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    assert proxy is not None
    roi = add_roi_on_ijk(slicer_scene, proxy, (32, 32, 0), (24, 24, 1), "Polyp")
    roi.SetAttribute(ops.FRAME_ATTRIBUTE, "1")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    result = ops.track(module_engine, browser, [roi], seg)
    assert "4 frame" in result.summary
    seg_seq = browser.GetSequenceNode(seg)
    assert seg_seq is not None and seg_seq.GetNumberOfDataNodes() == 4


class _CallCounter:
    """The real engine, counting calls (and the slices/frames handed to each track call)."""

    def __init__(self, engine):
        self.engine, self.segment_2d_calls, self.track_frames = engine, 0, []

    @property
    def info(self):
        return self.engine.info

    def segment_2d(self, *args, **kwargs):
        self.segment_2d_calls += 1
        return self.engine.segment_2d(*args, **kwargs)

    def track(self, frames, prompts, *args, **kwargs):
        self.track_frames.append(len(frames))
        return self.engine.track(frames, prompts, *args, **kwargs)


def _ct_4d(slicer_scene, slicer_core, n_times=3, selected=1):
    """A 4-D CT (7 x 40 x 48 per time point, oblique 0.8/0.9/2.5 mm) whose lesion moves in I."""
    from slicer_fixtures import add_volume_sequence, rotation

    kk, jj, ii = np.mgrid[:7, :40, :48]
    volumes = []
    for t in range(n_times):
        array = np.full((7, 40, 48), -80, np.int16)
        array[((kk - 3) / 2.0) ** 2 + ((jj - 20) / 7.0) ** 2 + ((ii - 18 - 3 * t) / 7.0) ** 2 < 1] = 70
        volumes.append(array)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation("z", 20) @ np.diag([0.8, -0.9, 2.5])
    ijk_to_ras[:3, 3] = (5.0, 30.0, -12.0)
    browser = add_volume_sequence(slicer_scene, volumes, ijk_to_ras, selected=selected,
                                  logic=slicer_core.logics["sequences"])
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode")
    return browser, proxy, volumes


def _sequence_labels(seg_seq, name, reference, n_times):
    from polypsam import mrml

    out = []
    for t in range(n_times):
        stored = seg_seq.GetNthDataNode(t)
        out.append(mrml.export_segment_labelmap(stored, reference, [name]) > 0
                   if stored.GetSegmentation().GetSegmentIdBySegmentName(name) else None)
    return out


def test_track_4d_ct_tracks_the_key_slice_through_time_then_propagates_each_time_point(
        slicer_scene, slicer_core, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml

    browser, proxy, volumes = _ct_4d(slicer_scene, slicer_core)
    roi = add_roi_on_ijk(slicer_scene, proxy, (18, 20, 3), (18, 18, 3), "Lesion")  # slices 2..4
    roi.SetAttribute(ops.FRAME_ATTRIBUTE, "1")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    engine = _CallCounter(module_engine)
    steps = []
    result = ops.track(engine, browser, [roi], seg, window_preset="abdomen",
                       progress=lambda d, t, m: steps.append((d, t)))
    assert "3 time point(s) in 3-D" in result.summary
    assert steps[-1][0] == steps[-1][1] and all(d <= t for d, t in steps)
    seg_seq = browser.GetSequenceNode(seg)
    assert seg_seq is not None and seg_seq.GetNumberOfDataNodes() == 3
    # the key slice through time first (3 frames, from time point 1 both ways), then one 3-D
    # propagation (segment_2d on the key slice, tracking within slices 2..4) per time point found
    # (random weights: the model finds something at every time point here)
    labels = _sequence_labels(seg_seq, "Lesion", proxy, 3)
    found = [t for t, mask in enumerate(labels) if mask is not None and mask.any()]
    assert found == [0, 1, 2]
    assert engine.segment_2d_calls == 1 + len(found)
    assert engine.track_frames == [3, 3] + [7, 7] * len(found)
    for t in found:
        assert labels[t].shape == volumes[t].shape and labels[t][3].any()
        assert not labels[t][:2].any() and not labels[t][5:].any(), "only the ROI's slices 2..4"
    tags = mrml.read_provenance(seg_seq.GetNthDataNode(1), "Lesion")
    assert tags["operation"] == "track" and tags["key_slice"] == "3"
    assert tags["slice_range"] == "2,4" and tags["start_frame"] == "1" and tags["frame"] == "1"


def test_refine_4d_ct_uses_a_box_on_another_time_point(slicer_scene, slicer_core, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml

    browser, proxy, _ = _ct_4d(slicer_scene, slicer_core, selected=0)
    first = add_roi_on_ijk(slicer_scene, proxy, (18, 20, 3), (18, 18, 3), "Lesion")
    first.SetAttribute(ops.FRAME_ATTRIBUTE, "0")
    extra = add_roi_on_ijk(slicer_scene, proxy, (24, 20, 3), (16, 16, 1), "extra box")
    extra.SetAttribute(ops.FRAME_ATTRIBUTE, "2")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    ops.refine(module_engine, proxy, [first, extra], seg, browser_node=browser)
    seg_seq = browser.GetSequenceNode(seg)
    assert seg_seq.GetNumberOfDataNodes() == 3
    tags = mrml.read_provenance(seg_seq.GetNthDataNode(0), "Lesion")
    assert tags["operation"] == "refine" and tags["refinement_frames"] == "2"


def test_cancelled_4d_track_leaves_the_segmentation_untouched(slicer_scene, slicer_core, module_engine):
    import PolypSAMOperations as ops
    from polypsam import mrml
    from polypsam.engine import CancelToken
    from polypsam.errors import CancelledError

    browser, proxy, volumes = _ct_4d(slicer_scene, slicer_core)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    before = np.zeros(volumes[0].shape, bool)
    before[0, 2:6, 2:6] = True
    mrml.write_mask_to_segment(seg, "Other", before, proxy)
    roi = add_roi_on_ijk(slicer_scene, proxy, (18, 20, 3), (18, 18, 3), "Lesion")
    cancel = CancelToken()

    def progress(done, total, message):
        if "in 3-D" in message:
            cancel.cancel()  # after the key slice was tracked, during the 3-D time points

    with pytest.raises(CancelledError):
        ops.track(module_engine, browser, [roi], seg, progress=progress, cancel=cancel)
    assert browser.GetSequenceNode(seg) is None
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, proxy, ["Other"]) > 0, before)
