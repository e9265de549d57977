"""Slicer's application objects around a scripted module: ``slicer.app``, the main window, the
module manager and selector, and the C++ halves of a scripted module and its widget.

Stand-ins with the properties and methods of Slicer's headers at v5.10.0 that Slicer's Python
code and the module use (Base/QTGUI/qSlicerApplication.h, qSlicerScriptedLoadableModule(Widget).h,
qSlicerAbstractCoreModule.h, qSlicerAbstractModuleWidget.h). Loading a module follows
qSlicerScriptedLoadableModule::setPythonSource: the .py file is imported as a module of its own
name, ``<Name>(parent)`` is created with the C++ module as ``parent``; the widget representation
creates ``<Name>Widget(parent)`` and calls ``setup()``; the module selector calls ``exit()`` and
``enter()``; unloading emits ``moduleAboutToBeUnloaded(QString)``. Python errors in these calls
are printed, not raised, as qSlicerPythonCppAPI::callMethod does through PythonQt::handleError.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from PyQt5 import QtCore, QtGui, QtWidgets

from .signals import handle_error
from .wrapping import unwrap, wrap


def _call(callable_: Any, *args: Any) -> Any:
    """qSlicerPythonCppAPI::callMethod: call into Python; print an exception, return None."""
    try:
        return callable_(*args)
    except BaseException:  # noqa: BLE001
        handle_error()
        return None


class SlicerApplication(QtCore.QObject):
    """``slicer.app`` (qSlicerApplication): the QApplication's calls plus Slicer's own."""

    _pythonqt_standin = True
    _pythonqt_name = "qSlicerApplication"
    _pythonqt_api = ("processEvents", "applicationLogic", "setOverrideCursor", "restoreOverrideCursor",
                     "overrideCursor", "testingEnabled", "moduleManager", "topLevelWidgets",
                     "userSettings", "settings", "mrmlScene", "layoutManager", "restart", "clipboard",
                     "keyboardModifiers", "quit", "exit", "translate")

    def __init__(self, qapp: QtWidgets.QApplication, app_logic: Any, scene: Any, temp: str) -> None:
        super().__init__(qapp)
        self._qapp = qapp
        self._logic = app_logic
        self._scene = scene
        self._temp = temp
        self.restarts = 0
        self._moduleManager = ModuleManager(self)

    applicationName = QtCore.pyqtProperty(str, lambda self: "Slicer")
    temporaryPath = QtCore.pyqtProperty(str, lambda self: self._temp)

    def translate(self, context: str, text: str, *args) -> str:
        return QtCore.QCoreApplication.translate(context, text, *args)

    def processEvents(self, *args) -> None:
        self._qapp.processEvents(*args)

    def applicationLogic(self) -> Any:
        return self._logic

    def setOverrideCursor(self, cursor) -> None:
        QtWidgets.QApplication.setOverrideCursor(QtGui.QCursor(cursor) if isinstance(cursor, int) else cursor)

    def restoreOverrideCursor(self) -> None:
        QtWidgets.QApplication.restoreOverrideCursor()

    def overrideCursor(self):
        return QtWidgets.QApplication.overrideCursor()

    def testingEnabled(self) -> bool:
        return False  # dialogs are shown (and answered by the test script)

    def moduleManager(self) -> "ModuleManager":
        return self._moduleManager

    def topLevelWidgets(self) -> list:
        return QtWidgets.QApplication.topLevelWidgets()

    def userSettings(self) -> QtCore.QSettings:
        return QtCore.QSettings()

    settings = userSettings

    def mrmlScene(self) -> Any:
        return self._scene

    def layoutManager(self) -> None:
        return None  # no views: slice-view interaction is not shown by this harness

    def restart(self) -> None:
        self.restarts += 1

    def clipboard(self):
        return QtWidgets.QApplication.clipboard()

    def keyboardModifiers(self):
        return QtWidgets.QApplication.keyboardModifiers()

    def quit(self) -> None:
        raise RuntimeError("the module asked Slicer to quit")

    exit = quit


class ModuleManager(QtCore.QObject):
    """qSlicerModuleManager: ``module(name)`` and ``moduleAboutToBeUnloaded(QString)``."""

    _pythonqt_standin = True
    _pythonqt_name = "qSlicerModuleManager"
    _pythonqt_api = ("module",)
    moduleAboutToBeUnloaded = QtCore.pyqtSignal(str)

    def __init__(self, parent: QtCore.QObject) -> None:
        super().__init__(parent)
        self.modules: dict[str, ScriptedModule] = {}

    def module(self, name: str) -> "ScriptedModule | None":
        return self.modules.get(name)


class ScriptedModule(QtCore.QObject):
    """The C++ half of a scripted module (qSlicerScriptedLoadableModule)."""

    _pythonqt_standin = True
    _pythonqt_name = "qSlicerScriptedLoadableModule"
    _pythonqt_api = ("widgetRepresentation", "createNewWidgetRepresentation")

    def __init__(self, name: str, path: str, parent: QtCore.QObject) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self._name, self._path = name, path
        self._title, self._helpText, self._acknowledgementText = "", "", ""
        self._categories: list[str] = []
        self._contributors: list[str] = []
        self._dependencies: list[str] = []
        self._associatedNodeTypes: list[str] = []
        self._icon = QtGui.QIcon()
        self._hidden = False
        self._index = -1
        self._widget: ScriptedModuleWidget | None = None
        self.python: Any = None

    def _field(attr: str, kind: Any, writable: bool = True):  # noqa: N805 - class-body helper
        def fset(self, value):
            setattr(self, attr, list(value) if kind == "QStringList" else value)

        return QtCore.pyqtProperty(kind, lambda self: getattr(self, attr), fset if writable else None)

    name = _field("_name", str, writable=False)
    path = _field("_path", str, writable=False)
    title = _field("_title", str)
    categories = _field("_categories", "QStringList")
    contributors = _field("_contributors", "QStringList")
    associatedNodeTypes = _field("_associatedNodeTypes", "QStringList")
    helpText = _field("_helpText", str)
    acknowledgementText = _field("_acknowledgementText", str)
    icon = _field("_icon", QtGui.QIcon)
    hidden = _field("_hidden", bool)
    dependencies = _field("_dependencies", "QStringList")
    index = _field("_index", int)
    del _field

    def widgetRepresentation(self) -> "ScriptedModuleWidget":
        if self._widget is None:
            self._widget = self.createNewWidgetRepresentation()
        return self._widget

    def createNewWidgetRepresentation(self) -> "ScriptedModuleWidget":
        """qSlicerScriptedLoadableModuleWidget::setPythonSource, then setup()."""
        widget = ScriptedModuleWidget(self._name)
        module = sys.modules[self._name]
        instance = _call(getattr(module, self._name + "Widget"), wrap(widget))
        if instance is None:
            raise RuntimeError(f"{self._name}Widget could not be created (the error is printed above)")
        widget.python = instance
        import slicer

        setattr(slicer.modules, self._name + "Widget", instance)
        _call(instance.setup)
        return widget


class ScriptedModuleWidget(QtWidgets.QWidget):
    """The C++ half of a scripted module's widget (qSlicerScriptedLoadableModuleWidget)."""

    _pythonqt_standin = True
    _pythonqt_name = "qSlicerScriptedLoadableModuleWidget"
    _pythonqt_api = ("self", "reload")

    def __init__(self, name: str) -> None:
        super().__init__()
        QtWidgets.QVBoxLayout(self)  # the constructor makes the layout the module fills
        self._moduleName = name
        self._entered = False
        self.python: Any = None

    moduleName = QtCore.pyqtProperty(str, lambda self: self._moduleName)
    isEntered = QtCore.pyqtProperty(bool, lambda self: self._entered)

    def self(self) -> Any:  # noqa: PLW0211 - Slicer's name: the Python widget object
        return self.python

    def enter(self) -> None:
        self._entered = True
        _call(self.python.enter)

    def exit(self) -> None:
        self._entered = False
        _call(self.python.exit)

    def reload(self) -> None:
        raise NotImplementedError("reloading a module is not part of the harness")


class ModuleSelector(QtCore.QObject):
    """The main window's module selector: ``selectModule(name)`` exits the shown module's widget
    and enters the new one (creating it on first use)."""

    _pythonqt_standin = True
    _pythonqt_name = "qSlicerModuleSelectorToolBar"
    _pythonqt_api = ("selectModule",)

    def __init__(self, window: "MainWindow") -> None:
        super().__init__(window)
        self._window = window
        self._current = ""

    selectedModule = QtCore.pyqtProperty(str, lambda self: self._current)

    def selectModule(self, name: str) -> None:
        manager = self._window.app.moduleManager()
        module = manager.module(name)
        if module is None:
            raise RuntimeError(f"no module {name}")
        if self._current and self._current != name:
            manager.module(self._current).widgetRepresentation().exit()
        widget = module.widgetRepresentation()
        self._window.show_panel(widget)
        if self._current != name or not widget.property("isEntered"):
            self._current = name
            widget.enter()


class MainWindow(QtWidgets.QMainWindow):
    """qSlicerMainWindow: found by objectName; module panel, status bar, module selector."""

    _pythonqt_standin = True
    _pythonqt_name = "qSlicerMainWindow"
    _pythonqt_api = ("moduleSelector",)

    def __init__(self, app: SlicerApplication) -> None:
        super().__init__()
        self.setObjectName("qSlicerMainWindow")
        self.app = app
        self._panels = QtWidgets.QStackedWidget(self)
        self.setCentralWidget(self._panels)
        self._selector = ModuleSelector(self)
        self.statusBar()

    def moduleSelector(self) -> ModuleSelector:
        return self._selector

    def show_panel(self, widget: QtWidgets.QWidget) -> None:
        if self._panels.indexOf(widget) < 0:
            self._panels.addWidget(widget)
        self._panels.setCurrentWidget(widget)


def load_scripted_module(app: SlicerApplication, path: str) -> ScriptedModule:
    """qSlicerScriptedLoadableModule::setPythonSource: import ``path`` as the module of its name
    (its folder on ``sys.path``, as Slicer's module factory puts it) and create ``<Name>(parent)``."""
    import slicer

    name = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    cpp = ScriptedModule(name, os.path.abspath(path), app)
    cpp.python = getattr(module, name)(wrap(cpp))
    app.moduleManager().modules[name] = cpp
    setattr(slicer.modules, name.lower(), wrap(cpp))
    setattr(slicer.modules, name + "Instance", cpp.python)
    return cpp


def unload_module(app: SlicerApplication, name: str) -> None:
    """What Slicer does on exit or module reload: ``moduleAboutToBeUnloaded(name)``."""
    app.moduleManager().moduleAboutToBeUnloaded.emit(name)


__all__ = ["SlicerApplication", "MainWindow", "load_scripted_module", "unload_module", "unwrap"]
