"""Boot a Slicer-like Python environment with real Qt widgets: :func:`boot` returns a :class:`Harness`.

Order of :func:`boot`: PyQt5's QApplication on the offscreen platform (``QT_QPA_PLATFORM``),
settings in a temporary folder, printed errors collected through ``sys.excepthook``, slicer-core
MRML initialised as the tests do (``Testing/slicer_fixtures.py``), the ``qt``/``ctk``/``PythonQt``
modules (:mod:`qtmodule`), then Slicer's own ``slicer.util``, ``slicer.i18n``,
``slicer.parameterNodeWrapper`` and ``slicer.ScriptedLoadableModule`` from a Slicer source tree
(default ``../shared/vendor/Slicer``, or ``POLYPSAM_SLICER_SOURCE``), ``slicer.app`` and the main
window. It changes process-wide state (``sys.modules['qt']``, ``slicer.util``, the excepthook):
run it in a process of its own (``Testing/pythonqt/worker.py``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
import traceback
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SLICER_SOURCE = Path(os.environ.get("POLYPSAM_SLICER_SOURCE",
                                            REPO.parent / "shared" / "vendor" / "Slicer"))


class PrintedErrors:
    """Everything PythonQt, VTK or Qt would print to Slicer's console as an error (an exception
    leaving a slot, a VTK observer or a module call; a failed connect), kept for the test."""

    def __init__(self) -> None:
        self.entries: list[str] = []

    def excepthook(self, kind, value, tb) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(text)
        self.entries.append(text)

    def take(self) -> list[str]:
        entries, self.entries = self.entries, []
        return entries


class SliceViews:
    """What the markups widgets of Slicer's slice views do to MRML when the user clicks in place
    mode (vtkSlicerMarkupsWidget::PlacePoint, vtkSlicerROIWidget): the point is added to the
    active place node and defined (PointPositionDefinedEvent); a one-time place mode ends.
    Mouse events, rendering and picking are not reproduced."""

    def __init__(self, app_logic: Any) -> None:
        self._logic = app_logic

    def _active(self, class_name: str) -> Any:
        import slicer

        selection = self._logic.GetSelectionNode()
        interaction = self._logic.GetInteractionNode()
        if interaction.GetCurrentInteractionMode() != interaction.Place:
            raise AssertionError("the slice views are not in place mode: a click would not place anything")
        node = slicer.mrmlScene.GetNodeByID(selection.GetActivePlaceNodeID() or "")
        if node is None or not node.IsA(class_name):
            found = node.GetClassName() if node is not None else None
            raise AssertionError(f"the active place node is {found}, not a {class_name}")
        return node, interaction

    @staticmethod
    def _end_one_time_place(interaction: Any) -> None:
        if not interaction.GetPlaceModePersistence():
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def click(self, ras: tuple[float, float, float]) -> int:
        """A click in place mode on a point list: a new control point at ``ras`` (added and
        defined in one step: PointAddedEvent, then PointPositionDefinedEvent)."""
        import vtk

        node, interaction = self._active("vtkMRMLMarkupsFiducialNode")
        index = node.AddControlPointWorld(vtk.vtkVector3d(*[float(v) for v in ras]))
        self._end_one_time_place(interaction)
        return index

    def draw_box(self, center: tuple[float, float, float], size: tuple[float, float, float]) -> Any:
        """Click-drag of an ROI in place mode: its centre and size set, its position defined."""
        node, interaction = self._active("vtkMRMLMarkupsROINode")
        node.SetSize(*size)
        node.SetCenterWorld(*center)  # the first control point: PointPositionDefinedEvent
        self._end_one_time_place(interaction)
        return node


class Harness:
    """The booted environment: ``qt``, ``slicer``, the main window, dialogs, slice views, errors."""

    def __init__(self, qapp, app, window, core, modules, errors, slicer_source) -> None:
        from . import dialogs

        self.qapp = qapp
        self.app = app  # the SlicerApplication stand-in (unwrapped)
        self.window = window
        self.core = core
        self.qt = modules["qt"]
        self.ctk = modules["ctk"]
        self.errors = errors
        self.dialogs = dialogs.SCRIPT
        self.views = SliceViews(core.app)
        self.slicer_source = slicer_source

    @property
    def scene(self) -> Any:
        return self.core.scene

    def load_module(self, path: str | Path):
        from .application import load_scripted_module

        return load_scripted_module(self.app, str(path))

    def select_module(self, name: str) -> Any:
        """Show and enter a module as its toolbar entry does; its Python widget object."""
        import slicer

        slicer.util.selectModule(name)
        return slicer.modules.__dict__[name + "Widget"]

    def unload_module(self, name: str) -> None:
        from .application import unload_module

        unload_module(self.app, name)

    def process_events(self) -> None:
        self.qapp.processEvents()

    def check(self) -> list[str]:
        """What went wrong since the last check: printed errors, unanswered dialogs, unused answers."""
        return self.errors.take() + self.dialogs.reset()


def _load(name: str, path: Path, package: bool = False) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path / "__init__.py" if package else path,
        submodule_search_locations=[str(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _slicer_names(base: Path) -> set[str]:
    """The ``slicer.q*`` classes Slicer's Python framework refers to (compared against with
    ``type(widget) == slicer.qMRMLSpinBox`` and the like)."""
    names: set[str] = set()
    for path in base.rglob("*.py"):
        names.update(re.findall(r"\bslicer\.(q[A-Z][A-Za-z]+)", path.read_text()))
    return names


def boot(slicer_source: Path = DEFAULT_SLICER_SOURCE) -> Harness:
    """Start Qt and install the Slicer-like modules in this process (once)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="polypsam-xdg-"))
    base = slicer_source / "Base" / "Python" / "slicer"
    if not (base / "ScriptedLoadableModule.py").is_file():
        raise FileNotFoundError(f"Slicer's Python framework not found under {base}")
    from PyQt5 import QtCore, QtWidgets

    errors = PrintedErrors()
    sys.excepthook = errors.excepthook
    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["Slicer"])
    settings_dir = tempfile.mkdtemp(prefix="polypsam-qsettings-")
    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
    QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, settings_dir)
    QtCore.QCoreApplication.setOrganizationName("PolypSAM-harness")
    QtCore.QCoreApplication.setApplicationName("Slicer")

    sys.path.insert(0, str(REPO / "Testing"))
    from slicer_fixtures import init_slicer_core

    core = init_slicer_core()
    import slicer

    from . import qtmodule
    from .application import MainWindow, SlicerApplication
    from .wrapping import wrap

    modules = qtmodule.build_modules()
    sys.modules.update(modules)
    slicer.util = _load("slicer.util", base / "util.py")
    slicer.i18n = _load("slicer.i18n", base / "i18n.py")
    for name, cls in qtmodule.slicer_classes().items():
        setattr(slicer, name, cls)
    from . import application
    from .wrapping import wrapper_class

    for cls in (application.ScriptedModule, application.ScriptedModuleWidget):
        setattr(slicer, cls._pythonqt_name, wrapper_class(cls))
    for name in _slicer_names(base):
        if not hasattr(slicer, name):
            setattr(slicer, name, qtmodule.slicer_placeholder(name))
    app = SlicerApplication(qapp, core.app, core.scene, tempfile.mkdtemp(prefix="polypsam-slicer-tmp-"))
    slicer.app = wrap(app)
    window = MainWindow(app)
    window.resize(1000, 800)
    window.show()  # offscreen: visibility and geometry are real, nothing is drawn on a screen
    slicer.parameterNodeWrapper = _load("slicer.parameterNodeWrapper", base / "parameterNodeWrapper", True)
    slicer.ScriptedLoadableModule = _load("slicer.ScriptedLoadableModule", base / "ScriptedLoadableModule.py")
    return Harness(qapp, app, window, core, modules, errors, slicer_source)
