"""Import the PolypSAM module with Slicer's own Python code and check its parameter node and .ui.

For developers without desktop Slicer but with a Slicer source checkout (its pure-Python
``Base/Python/slicer``: parameterNodeWrapper, ScriptedLoadableModule, i18n)::

    .venv/bin/python scripts/check_slicer_parameter_node.py /path/to/Slicer

The test suite runs it on every CI run against ``../shared/vendor/Slicer`` (Slicer's framework in
the layout of a checkout), see ``Testing/test_slicer_framework.py``.

``PolypSAM.py`` is imported as Slicer would import it, on real slicer-core MRML. Then
``PolypSAMLogic`` builds the parameter node (defaults, validators); every kind of field is
written, read, saved and reloaded with the scene; Add box and the new output segmentation run;
the logic builds each action's request from this parameter node (the library reads its fields by
name) and the buttons that apply follow; and Slicer's ``connectGui`` chooses a GUI connector for
every ``SlicerParameterName`` in the .ui.
Qt is not available here, so ``qt``/``ctk``, the widgets and ``slicer.app`` are stand-ins: this
checks types, defaults, module-level code and connector choice, not widget behaviour
(``PolypSAMTest`` does that in Slicer). Exits non-zero with the first failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
import types
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "PolypSAM" / "PolypSAM.py"
UI_FILE = REPO / "PolypSAM" / "Resources" / "UI" / "PolypSAM.ui"


class _Signal:
    """Any widget attribute or method: callable, connectable, does nothing."""

    def __call__(self, *args, **kwargs):
        return None

    def connect(self, *args):
        pass

    def disconnect(self, *args):
        pass


def _widget_class(name: str) -> type:
    def __init__(self, properties=None):
        object.__setattr__(self, "_properties", properties or {})

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _Signal()

    return type(name, (), {"__init__": __init__, "__getattr__": __getattr__,
                           "property": lambda self, key: self._properties.get(key)})


def _load(name: str, path: Path, package: bool = False) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path / "__init__.py" if package else path,
        submodule_search_locations=[str(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_polypsam(slicer_source: Path, slicer, app_logic) -> types.ModuleType:
    """``import PolypSAM`` with Slicer's own slicer.parameterNodeWrapper/ScriptedLoadableModule/i18n."""
    base = slicer_source / "Base" / "Python" / "slicer"
    if not (base / "parameterNodeWrapper" / "__init__.py").is_file():
        raise SystemExit(f"no parameterNodeWrapper under {base}: give the root of a Slicer checkout")
    source = "\n".join(p.read_text() for p in [*(base / "parameterNodeWrapper").glob("*.py"),
                                               base / "ScriptedLoadableModule.py"])
    qt, ctk = types.ModuleType("qt"), types.ModuleType("ctk")
    qt.QColor = type("QColor", (), {"__init__": lambda self, *a: None})
    qt.QWidget = _widget_class("QWidget")
    qt.QIcon = type("QIcon", (), {"__init__": lambda self, path: setattr(self, "path", path)})
    owners = {"qt": qt, "ctk": ctk, "slicer": slicer}
    for owner, name in set(re.findall(r"\b(qt|ctk|slicer)\.((?:Q|ctk|qMRML)[A-Za-z]+)", source)):
        if not hasattr(owners[owner], name):
            setattr(owners[owner], name, _widget_class(name))
    sys.modules.update(qt=qt, ctk=ctk)
    slicer.app = types.SimpleNamespace(applicationLogic=lambda: app_logic,
                                       translate=lambda context, text: text)
    slicer.i18n = _load("slicer.i18n", base / "i18n.py")
    slicer.parameterNodeWrapper = _load("slicer.parameterNodeWrapper", base / "parameterNodeWrapper", True)
    slicer.ScriptedLoadableModule = _load("slicer.ScriptedLoadableModule", base / "ScriptedLoadableModule.py")
    sys.path[:0] = [str(REPO / "PolypSAM")]
    import PolypSAM

    return PolypSAM


def _expect_refused(action, what: str) -> None:
    try:
        action()
    except (TypeError, ValueError) as exc:
        print(f"  refused {what}: {exc}".splitlines()[0][:120])
        return
    raise AssertionError(f"{what} was accepted")


def check_requests(module, logic, p, ct, roi) -> None:
    """The logic builds each action's request once from this (Slicer's) parameter node: the
    library reads its fields by name, adds the click tools' lists, and says which buttons apply."""
    mrml = module.mrml
    p.keySlice, p.sliceRangeStart, p.sliceRangeEnd, p.windowPreset = 3, 1, 5, "lung"
    request = logic.request("propagate", p)
    assert (request.input_node, request.rois, request.segmentation_node) == (ct, (roi,), p.outputSegmentation)
    assert (request.key_slice, request.slice_range, request.window_preset) == (3, (1, 5), "lung")
    assert request.editor_node is None and request.previous is None  # no Segment Editor here
    clicks = logic.request("clicks", p, segment="Polyp", multimask=True)
    assert clicks.include.GetAttribute("PolypSAM.clicks") == "include" and clicks.multimask
    assert clicks.exclude.GetAttribute("PolypSAM.segment") == "Polyp"
    allowed = mrml.available_actions(request)
    assert {"segment", "propagate", "refine", "clicks", "start-from-segment", "undo"} <= allowed, allowed
    assert "track" not in allowed  # no sequence browser
    print("requests:", sorted(allowed))
    p.keySlice, p.sliceRangeStart, p.sliceRangeEnd, p.windowPreset = -1, -1, -1, "display"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slicer_source", type=Path, help="root of a Slicer source checkout")
    args = parser.parse_args()

    sys.path[:0] = [str(REPO / "Testing")]
    from slicer_fixtures import init_slicer_core  # the slicer-core set-up the tests use

    core = init_slicer_core()
    scene = core.scene
    import slicer

    module = _import_polypsam(args.slicer_source, slicer, core.app)
    description = types.SimpleNamespace(path=str(MODULE_FILE))  # what Slicer hands the module
    module.PolypSAM(description)
    assert Path(description.icon.path).is_file(), "no module icon in PolypSAM/Resources/Icons"
    print("module:", description.title, description.categories, Path(description.icon.path).name)
    logic = module.PolypSAMLogic()
    p = logic.getParameterNode()
    ParameterNode = type(p)
    node = p.parameterNode
    assert logic.getParameterNode().parameterNode is node  # one parameter node per scene
    print("defaults:", {name: getattr(p, name) for name in ("engine", "model", "device", "imageSize",
                                                             "windowPreset", "keySlice")})
    frame = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    p.inputVolume = frame
    assert p.inputVolume is frame
    p.inputVolume = ct
    assert p.inputVolume is ct
    first, second = (scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", n) for n in ("A", "B"))
    p.rois.append(first)
    p.rois.append(second)
    assert [r.GetID() for r in ParameterNode(node).rois] == [first.GetID(), second.GetID()]
    scene.RemoveNode(first)
    assert [r and r.GetName() for r in ParameterNode(node).rois] == [None, "B"]
    p.rois = [second]
    p.outputSegmentation = module.mrml.new_segmentation(scene, ct)
    box = module.mrml.place_box(scene, core.app.GetSelectionNode(), core.app.GetInteractionNode())
    assert core.app.GetSelectionNode().GetActivePlaceNodeID() == box.GetID()
    scene.RemoveNode(box)
    check_requests(module, logic, p, ct, second)
    added = module.ensureLibraryOnPath(str(MODULE_FILE.parent))
    assert added == str(REPO / "PolypSAMLib") and sys.path[0] == added, added
    import polypsam

    assert Path(polypsam.__file__).parent == REPO / "PolypSAMLib" / "polypsam"
    assert "torch" not in sys.modules, "importing the module must not import torch"
    _expect_refused(lambda: setattr(p, "engine", "nope"), "an unknown engine")
    _expect_refused(lambda: setattr(p, "imageSize", 4096), "image size 4096")
    _expect_refused(lambda: setattr(p, "inputVolume", p.outputSegmentation), "a segmentation as input")
    print("settings:", module.mrml.engine_settings(p))
    p.engine, p.serverUrl = "server", "http://127.0.0.1:8765"
    remote = module.mrml.engine_settings(p, token="secret-token")
    assert (remote.kind, remote.server_url, remote.token) == ("server", "http://127.0.0.1:8765",
                                                             "secret-token"), remote
    assert "secret-token" not in repr(remote)
    p.engine = "in-process"

    url = os.path.join(tempfile.mkdtemp(prefix="polypsam-pnw-"), "scene.mrml")
    scene.SetURL(url)
    scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(url)
    reloaded.Import()
    assert "secret-token" not in Path(url).read_text(), "the server token is never saved with the scene"
    q = ParameterNode(reloaded.GetFirstNodeByClass("vtkMRMLScriptedModuleNode"))
    assert q.inputVolume.GetName() == "ct" and [r.GetName() for r in q.rois] == ["B"]
    assert q.serverUrl == "http://127.0.0.1:8765"
    assert q.outputSegmentation.GetID() == p.outputSegmentation.GetID()
    print("saved and reloaded with the scene")

    ui = types.SimpleNamespace()
    for w in ET.parse(UI_FILE).getroot().iter("widget"):
        properties = {pr.get("name"): pr.findtext("string") for pr in w.findall("property")
                      if pr.get("name") == "SlicerParameterName"}
        cls = (getattr(slicer, w.get("class"), None) or getattr(sys.modules["qt"], w.get("class"), None)
               or getattr(sys.modules["ctk"], w.get("class"), None) or _widget_class(w.get("class")))
        setattr(ui, w.get("name"), cls(properties))
    tag = p.connectGui(ui)
    for name, connector in p._parameterGUIs[tag].items():
        print(f"  {name:22s} -> {type(connector).__name__}")
    p.disconnectGui(tag)
    print("OK: Slicer's parameterNodeWrapper accepts PolypSAMParameterNode and every .ui binding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
