"""PythonQt's signal and slot rules over PyQt5 signals (R4, R5 of :mod:`wrapping`).

Python callables are connected through a receiver object, a child of the sender, as
PythonQtSignalReceiver does; each call passes only the arguments the callable takes and prints
an exception instead of raising it. Everything here works on PyQt5 objects; :mod:`wrapping`
converts what Python sees.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable

from PyQt5 import QtCore

_META = QtCore.QMetaMethod


def print_error(message: str) -> None:
    """What PythonQt writes to ``std::cerr``: sent through ``sys.excepthook`` as a RuntimeError so
    that a harness collecting printed errors sees it too."""
    try:
        raise RuntimeError(message)
    except RuntimeError:
        sys.excepthook(*sys.exc_info())


def handle_error() -> None:
    """PythonQt::handleError: print the current exception (``PyErr_Print`` -> ``sys.excepthook``)
    and carry on."""
    sys.excepthook(*sys.exc_info())


def first_signature(q: Any, name: str) -> str:
    """The signature PythonQt binds ``obj.<name>`` to: the first method of that name, searching
    the most derived class first, each class in declaration order
    (PythonQtClassInfo::findDecoratorSlotsFromDecoratorProvider)."""
    meta = q.metaObject()
    while meta is not None:
        for index in range(meta.methodOffset(), meta.methodCount()):
            method = meta.method(index)
            if bytes(method.name()).decode() == name and method.methodType() == _META.Signal:
                return bytes(method.methodSignature()).decode()
        meta = meta.superClass()
    raise AttributeError(f"no signal {name} on {q.metaObject().className()}")



#: C++ argument types that stand-ins carry as Python objects (VTK objects through signals)
PYOBJECT_TYPES = ("vtkMRMLScene*", "vtkMRMLNode*", "vtkObject*")


def bound_signal(q: Any, signature: str):
    """The PyQt5 bound signal for a C++ signature ("2clicked(bool)" or "clicked(bool)"), its
    index and its parameter count; ``None`` if ``q`` has no such signal
    (PythonQtSignalReceiver::getSignalIndex)."""
    text = signature[1:] if signature[:1].isdigit() else signature
    meta = q.metaObject()
    index = meta.indexOfSignal(text)
    if index < 0:
        index = meta.indexOfSignal(bytes(QtCore.QMetaObject.normalizedSignature(text)).decode())
    if index < 0 and getattr(type(q), "_pythonqt_standin", False):
        mapped = text
        for cpp in PYOBJECT_TYPES:
            mapped = mapped.replace(cpp, "PyQt_PyObject")
        index = meta.indexOfSignal(bytes(QtCore.QMetaObject.normalizedSignature(mapped)).decode())
    if index < 0:
        return None
    method = meta.method(index)
    bound = getattr(q, bytes(method.name()).decode())
    types_ = [bytes(t).decode() for t in method.parameterTypes()]
    if types_:
        bound = bound[types_[0] if len(types_) == 1 else tuple(types_)]
    elif bound.signal[1:] != bytes(method.methodSignature()).decode():
        try:
            bound = bound[()]
        except KeyError:  # a clone without the defaulted arguments, e.g. clicked() of clicked(bool)
            pass  # PyQt5 has only the full overload: connect to it, pass no arguments
    return bound, index, len(types_)


def python_arg_count(callable_: Any) -> int:
    """How many signal arguments PythonQtSignalTarget::call passes: a function's positional
    parameter count, a bound method's minus self, -1 (all) for *args and other callables."""
    func, bound = callable_, 0
    if isinstance(callable_, types.MethodType):
        func, bound = callable_.__func__, 1
    if not isinstance(func, types.FunctionType):
        return -1
    code = func.__code__
    if code.co_flags & 0x04:  # CO_VARARGS
        return -1
    return code.co_argcount - bound


class SlotCall:
    """One connection of a signal to a Python callable (PythonQtSignalTarget)."""

    def __init__(self, callable_: Any, parameters: int, convert: Callable[[Any], Any]) -> None:
        self.callable = callable_
        self.parameters = parameters
        self.convert = convert

    def __call__(self, *args: Any) -> None:
        call_slot(self.callable, args[: self.parameters], self.convert)


def call_slot(callable_: Any, args: tuple, convert: Callable[[Any], Any]) -> Any:
    """PythonQtSignalTarget::call: pass only the arguments the callable takes, converted for
    Python (``convert``), and print (not raise) an exception that leaves it."""
    count = python_arg_count(callable_)
    if count != -1:
        args = args[:count]
    try:
        return callable_(*[convert(a) for a in args])
    except BaseException:  # noqa: BLE001 - PythonQt::handleError prints everything
        handle_error()
        return None


class _Receiver(QtCore.QObject):
    """PythonQtSignalReceiver: a child of the sender holding its Python connections."""

    def __init__(self, sender: QtCore.QObject) -> None:
        super().__init__(sender)
        self.setObjectName("PythonQtSignalReceiver")
        self.targets: list[tuple[int, Any, SlotCall, Any]] = []


def _receiver(q: QtCore.QObject, create: bool) -> _Receiver | None:
    for child in q.children():
        if isinstance(child, _Receiver):
            return child
    return _Receiver(q) if create else None


def add_signal_handler(q: QtCore.QObject, signature: str, callable_: Any,
                       convert: Callable[[Any], Any]) -> bool:
    """PythonQt::addSignalHandler with PythonQtStdDecorators::connect's messages; ``convert``
    turns each signal argument into what Python sees."""
    found = bound_signal(q, signature)
    if found is None:
        print_error(f"PythonQt: QObject::connect() signal '{signature}' does not exist on"
                    f" {q.metaObject().className()}")
        return False
    bound, index, parameters = found
    target = SlotCall(callable_, parameters, convert)
    bound.connect(target)
    _receiver(q, create=True).targets.append((index, callable_, target, bound))
    return True


def remove_signal_handler(q: QtCore.QObject, signature: str, callable_: Any | None) -> bool:
    """PythonQtSignalReceiver::removeSignalHandler: the first connection whose callable compares
    equal (all of them when ``callable_`` is None)."""
    found = bound_signal(q, signature)
    if found is None:
        print_error(f"PythonQt: QObject::disconnect() signal '{signature}' does not exist on"
                    f" {q.metaObject().className()}")
        return False
    _bound, index, _parameters = found
    receiver = _receiver(q, create=False)
    removed = False
    for entry in list(receiver.targets if receiver else []):
        if entry[0] == index and (callable_ is None or entry[1] == callable_):
            entry[3].disconnect(entry[2])
            receiver.targets.remove(entry)
            removed = True
            if callable_ is not None:
                break
    return removed


def single_shot(msec: int, callable_: Any) -> None:
    """``QTimer.singleShot(msec, callable)`` (PythonQtStdDecorators::static_QTimer_singleShot):
    the callable is called with no arguments; an exception is printed."""

    def fire() -> None:
        try:
            callable_()
        except BaseException:  # noqa: BLE001
            handle_error()

    QtCore.QTimer.singleShot(int(msec), fire)


