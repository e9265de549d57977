"""The Slicer module's files, checked without desktop Slicer.

``PolypSAM.py`` imports Qt (through ``slicer.ScriptedLoadableModule``) and cannot be imported
here; it is compiled and parsed with ``ast`` so that every ``self.ui.<name>`` it binds exists in
the ``.ui`` file and every ``SlicerParameterName`` of the ``.ui`` is a parameter node field.
Its Qt-free helpers live in the library and are tested in ``test_dependencies.py``,
``test_engines.py`` and ``test_mrml_operations.py``; ``test_slicer_framework.py`` imports the
module itself with Slicer's own Python framework.
"""

from __future__ import annotations

import ast
import py_compile
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

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

    import slicer
    from polypsam import engines

    tree = ast.parse(MODULE_FILE.read_text())
    body = [n for n in tree.body
            if (isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) and t.id.endswith("_CHOICES")
                                                  for t in n.targets))
            or (isinstance(n, ast.ClassDef) and n.name == "PolypSAMParameterNode")]
    for node in body:
        if isinstance(node, ast.ClassDef):
            node.decorator_list = []
    namespace = {"Annotated": typing.Annotated, "Optional": typing.Optional, "Union": typing.Union,
                 "Choice": _Choice, "WithinRange": _WithinRange, "engines": engines}
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
    # No timers and no installs at import/construction time (a placed click's run is deferred
    # with a zero timer: in its slot, not at construction).
    assert "pip_install" not in text
    module_level = [ast.unparse(n) for n in tree.body if not isinstance(n, ast.ClassDef)]
    assert not any("QTimer" in source for source in module_level)
    for class_name, method in (("PolypSAM", "__init__"), ("PolypSAMWidget", "__init__"),
                               ("PolypSAMWidget", "setup"), ("PolypSAMLogic", "__init__")):
        assert "QTimer" not in _method_source(class_name, method), (class_name, method)


def test_module_folder_holds_nothing_slicer_would_mistake_for_a_module():
    """Slicer's scripted module factory loads every .py directly in a module folder as a module
    and fails unless it defines a class of the file's name (qSlicerScriptedLoadableModuleFactory);
    helpers belong in a package."""
    for path in MODULE_DIR.glob("*.py"):
        classes = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}
        assert path.stem in classes, f"{path.name} defines no class {path.stem}: Slicer would fail to load it"
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["PolypSAM.py"]


def _method_source(class_name: str, method: str) -> str:
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method)
    return ast.unparse(fn)


def test_module_test_runs_the_librarys_scenarios():
    """The SAM2 scenarios are the library's, which Testing/test_mrml_scenarios.py runs here too;
    without torch and sam2 they are reported skipped (Testing/test_self_test_without_torch.py)."""
    assert "scenarios.run_all" in _method_source("PolypSAMTest", "test_sam2_scenarios")


MAX_MODULE_LINES = 600


def test_module_file_stays_thin():
    """Module, parameter node, widget, thin logic and self-test in at most 600 lines: the work and
    the state between clicks belong in the library, where slicer-core tests reach them."""
    lines = len(MODULE_FILE.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"PolypSAM.py has {lines} lines (at most {MAX_MODULE_LINES})"


def _library_imports() -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from polypsam... import name`` in PolypSAM.py."""
    found = []
    for node in ast.walk(ast.parse(MODULE_FILE.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "polypsam":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "polypsam" for a in node.names), "import polypsam.x"
    return found


def test_module_uses_the_librarys_public_api():
    """No ``_private`` library name in the module; the operations, their state and the undo
    history are reached through ``polypsam.mrml``'s public API (no operation module by name)."""
    imports = _library_imports()
    assert ("polypsam", "mrml") in imports
    assert not [name for _, name in imports if name.startswith("_")]
    operation_modules = {"operations", "tracking", "interactive", "session", "writer", "history",
                         "video_clicks", "shapes", "jobs"}
    assert not [(m, n) for m, n in imports if n in operation_modules
                or m.split(".")[-1] in operation_modules]
    from polypsam import mrml

    text = MODULE_FILE.read_text()
    used = set(re.findall(r"(?<![\w.])mrml\.([A-Za-z_]+)", text))
    assert used and used <= set(mrml.__all__), used - set(mrml.__all__)


def test_widget_keeps_no_operation_state():
    """The widget's attributes bind the UI only: no click result, candidates or previous
    propagation (the library's session keeps them), and no hook the library would call back."""
    widget = next(n for n in ast.parse(MODULE_FILE.read_text()).body
                  if isinstance(n, ast.ClassDef) and n.name == "PolypSAMWidget")
    attributes = set()
    for node in ast.walk(widget):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    attributes.add(t.attr)
    assert attributes == {"logic", "ui", "_panel", "_buttons", "_shortcuts", "_parameterNode",
                          "_parameterNodeGuiTag", "_updatingRoiList", "_roiRows", "_busy"}, attributes
    assert "before_write_hook" not in MODULE_FILE.read_text()


def test_widget_disables_the_whole_panel_while_busy():
    busy = _method_source("PolypSAMWidget", "_busyPanel")
    assert "self._panel.enabled = False" in busy and "self._panel.enabled = True" in busy
    for handler in ("run", "onUndo", "onDependencies", "onReleaseEngine", "onLoadVideo", "onExport"):
        assert "self._busyPanel()" in _method_source("PolypSAMWidget", handler), handler


def test_extension_metadata_follows_the_extensions_index_conventions():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text()
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', cmake).group(1)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c.strip()) for c in contributors.split(","))
    shot = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', cmake).group(1)
    local = REPO / shot.split("/main/", 1)[1]
    from PIL import Image

    assert Image.open(local).size[0] >= 400, "a real screenshot at the URL the metadata names"
    assert 'VERSION_LESS "5.10"' in cmake
    assert "documentation" in MODULE_FILE.read_text() and "DOCUMENTATION_URL" in MODULE_FILE.read_text()
