"""The ``qt``, ``ctk`` and ``PythonQt`` modules that Slicer's Python sees, built over PyQt5.

``qt`` holds every class of QtCore, QtGui and QtWidgets (CTK's ``qt/__init__.py.in`` imports
PythonQt's QtCore, QtGui, QtUiTools, ... kits into one module) as PythonQt-rule wrappers
(:mod:`wrapping`), plus ``QUiLoader``, which loads a .ui file with PyQt5's ``uic`` and the
stand-ins of :mod:`mrmlwidgets` and :mod:`ctkwidgets`. ``ctk`` holds the CTK stand-ins; any
other CTK class is a placeholder that can be compared (``type(w) == ctk.ctkSliderWidget``) but
not created. Modal dialogs are answered by :mod:`dialogs`.
"""

from __future__ import annotations

import io
import re
import sys
import types
from pathlib import Path
from typing import Any

from PyQt5 import QtCore, QtGui, QtWidgets, sip, uic

from . import ctkwidgets, dialogs, mrmlwidgets, signals, wrapping
from .wrapping import BoolResult, Wrapper, unwrap, wrap, wrapper_class

_KITS = (QtCore, QtGui, QtWidgets)

#: custom classes of .ui files -> stand-in classes
STANDINS: dict[str, type] = {
    "qMRMLWidget": mrmlwidgets.qMRMLWidget,
    "qMRMLNodeComboBox": mrmlwidgets.qMRMLNodeComboBox,
    "ctkCollapsibleButton": ctkwidgets.ctkCollapsibleButton,
    "ctkMessageBox": ctkwidgets.ctkMessageBox,
}


def _exec(self: Wrapper) -> int:
    """The modal loop of ``exec_()``: answered by the test script (dialogs.run_modal)."""
    return dialogs.run_modal(unwrap(self))


def _progress_show(self: Wrapper) -> None:
    dialogs.progress_shown(unwrap(self))


def _parent_title(args: tuple, index: int) -> str:
    return str(args[index]) if len(args) > index and args[index] is not None else ""


def _file_static(kind: str):
    def static(*args: Any) -> str:
        """PythonQt's generated wrapper returns the QString only; the script gives the path."""
        return dialogs.static_path(f"QFileDialog.{kind}", _parent_title(args, 1))

    return staticmethod(static)


def _get_item(parent, title, label, items, current=0, editable=True, ok=None, *rest) -> str:
    return dialogs.static_item(str(title), str(label), list(items), int(current), ok)


def _get_text(parent, title, label, echo=None, text="", ok=None, *rest) -> str:
    return dialogs.static_text(str(title), str(label), str(text), ok if ok is not None else BoolResult())


def _message_static(kind: str):
    def static(parent, title, text, *rest) -> int:
        return dialogs.static_message(kind, str(title), str(text))

    return staticmethod(static)


def _register_harness_members() -> None:
    wrapping.register_extras(QtWidgets.QDialog, {"exec_": _exec, "exec": _exec})
    wrapping.register_extras(QtWidgets.QProgressDialog, {"show": _progress_show})
    wrapping.register_extras(QtWidgets.QFileDialog, {
        name: _file_static(name) for name in ("getOpenFileName", "getOpenFileNames",
                                              "getSaveFileName", "getExistingDirectory")})
    wrapping.register_extras(QtWidgets.QInputDialog, {"getItem": staticmethod(_get_item),
                                                      "getText": staticmethod(_get_text)})
    wrapping.register_extras(QtWidgets.QMessageBox, {
        name: _message_static(name) for name in ("question", "information", "warning", "critical")})
    wrapping.register_extras(QtCore.QTimer, {"singleShot": staticmethod(signals.single_shot)})


class QUiLoader(QtCore.QObject):
    """``QUiLoader.load(QFile)``: PyQt5's uic with the stand-ins for the .ui's custom classes.

    uic imports a custom class from the module named by its ``<header>``, and connects
    ``<connections>`` by PyQt5 signal signatures: the headers are pointed at this module and the
    VTK pointer types of signal signatures (``vtkMRMLScene*``) become ``PyQt_PyObject``.
    """

    _pythonqt_standin = True
    _pythonqt_api = ("load",)

    def load(self, device: QtCore.QIODevice, parent: QtWidgets.QWidget | None = None):
        path = device.fileName()
        text = Path(path).read_text()
        text = re.sub(r"<header>[^<]*</header>", f"<header>{__name__}.h</header>", text)
        for cpp in signals.PYOBJECT_TYPES:
            text = text.replace(cpp, "PyQt_PyObject")
        return uic.loadUi(io.StringIO(text))


def _ctk_placeholder(name: str) -> type:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"{name}: the PythonQt harness has no stand-in for this class")

    return type(name, (Wrapper,), {"__init__": __init__, "__module__": "ctk"})


def build_modules() -> dict[str, types.ModuleType]:
    """``qt``, ``ctk`` and ``PythonQt`` as modules (put them in ``sys.modules``)."""
    _register_harness_members()
    qt = types.ModuleType("qt", "PyQt5's QtCore, QtGui and QtWidgets under PythonQt's rules")
    cache: dict[str, Any] = {"QUiLoader": wrapper_class(QUiLoader)}

    def qt_getattr(name: str) -> Any:
        if name in cache:
            return cache[name]
        for kit in _KITS:
            value = getattr(kit, name, None)
            if value is not None:
                break
        else:
            raise AttributeError(f"module 'qt' has no attribute '{name}'")
        if isinstance(value, sip.wrappertype) and not wrapping._is_flags_class(value):
            value = wrapper_class(value)
        cache[name] = value
        return value

    qt.__getattr__ = qt_getattr
    ctk = types.ModuleType("ctk", "CTK stand-ins (ctkCollapsibleButton, ctkMessageBox)")
    placeholders: dict[str, type] = {}
    for name, standin in STANDINS.items():
        if name.startswith("ctk"):
            setattr(ctk, name, wrapper_class(standin))

    def ctk_getattr(name: str) -> Any:
        if not name.startswith("ctk"):
            raise AttributeError(f"module 'ctk' has no attribute '{name}'")
        return placeholders.setdefault(name, _ctk_placeholder(name))

    ctk.__getattr__ = ctk_getattr
    pythonqt = types.ModuleType("PythonQt", "PythonQt's own module: BoolResult")
    pythonqt.BoolResult = BoolResult
    pythonqt.qt = qt
    # uic imports the custom classes from the module named by the rewritten <header>
    this = sys.modules[__name__]
    for name, standin in STANDINS.items():
        setattr(this, name, standin)
    return {"qt": qt, "ctk": ctk, "PythonQt": pythonqt}


def slicer_classes() -> dict[str, Any]:
    """The Slicer widget classes the harness provides, as ``slicer.<name>`` wrappers."""
    return {name: wrapper_class(cls) for name, cls in STANDINS.items() if name.startswith("qMRML")}


def slicer_placeholder(name: str) -> type:
    return _ctk_placeholder(name)


__all__ = ["build_modules", "slicer_classes", "wrap", "unwrap"]
