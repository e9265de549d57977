"""PythonQt's rules for Python code that touches Qt objects, applied over PyQt5 objects.

Desktop Slicer runs Python against Qt through PythonQt; PyQt5 differs in ways that change what
module code does (``button.text`` is a method in PyQt5 and the property's value in PythonQt, an
empty ``QListWidget`` is false in PyQt5, an exception leaving a slot aborts a PyQt5 program).
Here every Qt object handed to Python is a :class:`Wrapper` that follows PythonQt's rules, each
written from PythonQt's own source, cited as ``file: function`` of commontk/PythonQt branch
``patched-9`` (0580304, the newest commontk branch we could read). Slicer 5.10.0 builds CTK
dd4caeae, which pins PythonQt 4869cbe "patched-v3.6.1-2025-09-30", a commontk branch on
upstream PythonQt 3.6.1: every function cited reads the same in MeVisLab/pythonqt v3.6.1. In short:

* R1 attribute read: Python-side attributes first, then the Qt property, then methods and signals
  (the first-declared overload), then enum values, dynamic properties, a child object of that
  objectName, else ``AttributeError`` (PythonQtInstanceWrapper.cpp: PythonQtInstanceWrapper_getattro;
  PythonQtClassInfo.cpp: PythonQtClassInfo::member, lookForPropertyAndCache, which also maps
  ``name`` to ``objectName``).
* R2 attribute write: a property is written (an error if read-only or the value does not convert);
  methods, signals and enum values cannot be overwritten; a new attribute on a C++ object is an
  ``AttributeError`` (PythonQtInstanceWrapper_setattro). Python subclasses may add attributes.
* R3 truth: a wrapper is true while its C++ object lives (PythonQtInstanceWrapper_builtin_nonzero);
  equality compares the C++ pointers (PythonQtInstanceWrapper_richcompare).
* R4 connections: ``obj.connect('clicked(bool)', callable)`` and ``obj.clicked.connect(callable)``
  (PythonQtStdDecorators.cpp: PythonQtStdDecorators::connect; PythonQtSignal.cpp:
  PythonQtSignalFunction_connect, which connects the first-declared overload); a signal that does
  not exist prints an error and returns False.
* R5 slot calls: a Python function or method gets only as many signal arguments as it takes
  positionally, other callables get all; an exception leaving the slot is printed, not raised
  (PythonQtSignalReceiver.cpp: PythonQtSignalTarget::call; PythonQt.cpp: PythonQt::handleError).
  ``QTimer.singleShot(ms, callable)`` calls the same way (PythonQtStdDecorators.cpp:
  PythonQtSingleShotTimer::slotTimeout).
* R6 calls: keyword arguments to a C++ method are a ``ValueError`` (PythonQtSlot.cpp:
  PythonQtSlotFunction_CallImpl); ``QFlags`` come back as ints (PythonQtConversion.cpp); a
  Python callable is never passed to a C++ method, where PyQt5 would take one and call it
  outside these rules (PythonQt converts arguments to C++ types only).
* R7 values: a QStringList, QVariantList or list of objects comes back as a tuple
  (PythonQtConversion.cpp: QStringListToPyObject, QVariantListToPyObject,
  ConvertQListOfPointerTypeToPythonList), where PyQt5 gives a list.

Printed errors go through ``sys.excepthook`` (PythonQt::handleError calls ``PyErr_Print``, which
calls it), so a harness can collect them: see :func:`print_error`.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

from PyQt5 import QtCore, sip

from .signals import add_signal_handler, bound_signal, first_signature, remove_signal_handler

_WRAPPERS: "weakref.WeakValueDictionary[int, Wrapper]" = weakref.WeakValueDictionary()
_CLASSES: dict[type, type] = {}  # PyQt class -> wrapper class
_EXTRAS: dict[type, dict[str, Any]] = {}  # PyQt class -> harness members of its wrapper class
_MISSING = object()


# ---- wrap / unwrap ------------------------------------------------------------------------------


def _is_flags_class(cls: type) -> bool:
    return hasattr(cls, "__int__") and hasattr(cls, "__invert__") and hasattr(cls, "__or__") \
        and not issubclass(cls, int)


def _is_flags(value: Any) -> bool:
    return _is_flags_class(type(value))


def wrap(value: Any) -> Any:
    """A Qt value as PythonQt hands it to Python (objects wrapped, flags as int, lists as tuples)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Wrapper):
        return value
    if isinstance(value, (list, tuple)):  # QStringList, QVariantList, QList<T*>: tuples
        return tuple(wrap(v) for v in value)
    if isinstance(value, sip.simplewrapper):
        if _is_flags(value):
            return int(value)
        found = _WRAPPERS.get(id(value))
        if found is not None and object.__getattribute__(found, "_qt") is value:
            return found
        wrapper = object.__new__(wrapper_class(type(value)))
        object.__setattr__(wrapper, "_qt", value)
        _WRAPPERS[id(value)] = wrapper
        return wrapper
    return value


def unwrap(value: Any) -> Any:
    """The PyQt5 object behind a wrapper (lists and tuples element-wise; classes too)."""
    if isinstance(value, Wrapper):
        return object.__getattribute__(value, "_qt")
    if isinstance(value, WrapperType):
        return value._qt_class
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unwrap(v) for v in value)
    return value


def _qt(self: "Wrapper") -> Any:
    try:
        return object.__getattribute__(self, "_qt")
    except AttributeError:
        raise AttributeError(f"{type(self).__name__}: the C++ object was never constructed"
                             " (did a Python subclass skip super().__init__?)") from None


def _alive(q: Any) -> bool:
    return not sip.isdeleted(q)


def _to_property(type_name: str, value: Any) -> Any:
    """PythonQtConv::PyObjToQVariant for a property's type: any sequence of strings for a
    QStringList, any sequence for a QVariantList, wrapped objects unwrapped."""
    if type_name == "QStringList" and isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if type_name == "QVariantList" and isinstance(value, tuple):
        return [unwrap(v) for v in value]
    return unwrap(value)


# ---- classes ------------------------------------------------------------------------------------


def register_extras(pyqt_class: type, members: dict[str, Any]) -> None:
    """Members the harness adds to the wrapper class of ``pyqt_class`` (modal loops answered from a
    script, PythonQt's own static functions). Must be called before the class is first wrapped."""
    if pyqt_class in _CLASSES:
        raise RuntimeError(f"{pyqt_class.__name__} is already wrapped")
    _EXTRAS.setdefault(pyqt_class, {}).update(members)


def _is_native(cls: type) -> bool:
    return cls.__module__.startswith("PyQt5.") or getattr(cls, "_pythonqt_standin", False)


def wrapper_class(pyqt_class: type) -> type:
    """The wrapper class of a PyQt5 class (stand-ins keep the name of the class they stand for);
    Python subclasses of PyQt5 classes made elsewhere are wrapped as their nearest Qt class."""
    found = _CLASSES.get(pyqt_class)
    if found is not None:
        return found
    if not _is_native(pyqt_class):
        for base in pyqt_class.__mro__[1:]:
            if isinstance(base, sip.wrappertype) and _is_native(base):
                cls = wrapper_class(base)
                _CLASSES[pyqt_class] = cls
                return cls
        raise TypeError(f"not a Qt class: {pyqt_class!r}")
    bases = tuple(wrapper_class(b) for b in pyqt_class.__bases__
                  if isinstance(b, sip.wrappertype) and b not in (sip.wrapper, sip.simplewrapper))
    name = getattr(pyqt_class, "_pythonqt_name", pyqt_class.__name__)
    namespace = {"_qt_class": pyqt_class, "__module__": "qt", "__qualname__": name}
    if issubclass(pyqt_class, QtCore.QObject) and not any(issubclass(b, QObjectWrapper) for b in bases):
        bases = bases + (QObjectWrapper,)
    for extra_class in pyqt_class.__mro__:
        for key, member in _EXTRAS.get(extra_class, {}).items():
            namespace.setdefault(key, member)
    cls = WrapperType(name, bases or (Wrapper,), namespace)
    _CLASSES[pyqt_class] = cls
    return cls


class WrapperType(type):
    """PythonQtClassWrapper: calling the class constructs the C++ object; class attributes are
    looked up on the Qt class (static functions, enums, nested classes)."""

    _qt_class: type

    def __call__(cls, *args, **kwargs):
        if "_qt_class" in cls.__dict__:  # a C++ class: construct and wrap
            return wrap(_construct(cls, args, kwargs))
        return super().__call__(*args, **kwargs)  # a Python subclass: its __init__ runs

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(cls._qt_class, name, _MISSING)
        if value is _MISSING:
            raise AttributeError(f"{cls.__name__} has no attribute named '{name}'")
        if isinstance(value, type):
            return wrapper_class(value) if isinstance(value, sip.wrappertype) and not \
                _is_flags_class(value) else value
        if callable(value):
            return Method(value, f"{cls.__name__}.{name}")
        return wrap(value)


def _refuse_callables(name: str, args: tuple) -> None:
    """A C++ method takes no Python callable (PythonQt converts arguments to C++ types only;
    PyQt5 would take one, e.g. QMenu.addAction(text, callable), and call it outside these rules):
    Python code connects callables to signals instead."""
    for arg in args:
        if callable(arg) and not isinstance(arg, (type, Wrapper)):
            raise TypeError(f"{name}: a Python callable ({arg!r}) can not be passed to a C++ method;"
                            " connect it to a signal")


def _construct(cls: type, args: tuple, kwargs: dict) -> Any:
    if kwargs:  # PythonQtSlot.cpp: PythonQtSlotFunction_CallImpl
        raise ValueError(f"Called {cls.__name__} constructor with keyword arguments, but called slot"
                         " does not support kwargs.")
    _refuse_callables(f"{cls.__name__} constructor", args)
    return cls._qt_class(*unwrap(args))


class Wrapper(metaclass=WrapperType):
    """PythonQtInstanceWrapper over a PyQt5 object (see the module docstring for the rules)."""

    __slots__ = ("_qt", "__weakref__")

    def __init__(self, *args, **kwargs) -> None:
        """Only reached by Python subclasses (``class ObservedQColor(qt.QColor)``): construct the
        C++ object of the nearest wrapped Qt class and bind this instance to it."""
        cpp = next(c for c in type(self).__mro__ if "_qt_class" in c.__dict__)
        q = _construct(cpp, args, kwargs)
        object.__setattr__(self, "_qt", q)
        _WRAPPERS[id(q)] = self

    # R1 ------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_qt":
            raise AttributeError(name)
        q = _qt(self)
        kind, info = member(q, name)
        if not _alive(q):
            raise ValueError(f"Trying to read '{name}' from a destroyed {type(self).__name__} object")
        if kind == "property":
            return wrap(q.property(info))
        if kind == "signal":
            return SignalWrapper(self, info)
        if kind == "method":
            return Method(getattr(q, name), f"{type(self).__name__}.{name}")
        if kind == "enum":
            return wrap(info)
        if isinstance(q, QtCore.QObject):
            if name.encode() in [bytes(n) for n in q.dynamicPropertyNames()]:
                return wrap(q.property(name))
            for child in q.children():
                if child.objectName() == name:
                    return wrap(child)
        raise AttributeError(f"{type(self).__name__} has no attribute named '{name}'")

    # R2 ------------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        q = _qt(self)
        kind, info = member(q, name)
        where = type(self).__name__
        if kind == "property":
            if not _alive(q):
                raise AttributeError(f"Trying to set property '{name}' on a destroyed {where} object")
            prop = q.metaObject().property(q.metaObject().indexOfProperty(info))
            if not prop.isWritable():
                raise AttributeError(f"Property '{name}' of {where} object is not writable")
            if not q.setProperty(info, _to_property(prop.typeName(), value)):
                raise AttributeError(f"Property '{name}' of type '{prop.typeName()}' does not accept an"
                                     f" object of type {type(value).__name__} ({value!r})")
            return
        if kind in ("method", "signal", "enum"):
            label = {"method": "Slot", "signal": "Signal", "enum": "EnumValue"}[kind]
            raise AttributeError(f"{label} '{name}' can not be overwritten on {where} object")
        if isinstance(q, QtCore.QObject) and name.encode() in [bytes(n) for n in q.dynamicPropertyNames()]:
            q.setProperty(name, unwrap(value))
            return
        if "_qt_class" not in type(self).__dict__:  # a Python subclass may add attributes
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"'{name}' does not exist on {where} and creating new attributes on C++"
                             " objects is not allowed")

    # R3 ------------------------------------------------------------------------------------
    def __bool__(self) -> bool:
        return _alive(_qt(self))

    def __eq__(self, other: Any) -> Any:
        if other is None:
            return not self
        if not isinstance(other, Wrapper):
            return NotImplemented
        a, b = _qt(self), _qt(other)
        if isinstance(a, QtCore.QObject) or not hasattr(type(a), "__eq__"):
            return sip.unwrapinstance(a) == sip.unwrapinstance(b)
        return a == b  # a value class with operator== (PythonQt calls its __eq__ slot)

    def __ne__(self, other: Any) -> Any:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(sip.unwrapinstance(_qt(self)))

    def __repr__(self) -> str:
        q = _qt(self)
        name = type(self).__name__
        if isinstance(q, QtCore.QObject) and _alive(q):
            return f"{name} ({q.metaObject().className()} at: {hex(sip.unwrapinstance(q))})"
        return f"{name} (C++ object at: {hex(sip.unwrapinstance(q))})"

    __str__ = __repr__

    # PythonQt's internal methods (PythonQtInstanceWrapper_methods) -------------------------
    def className(self) -> str:
        return type(self).__name__

    def inherits(self, name: str) -> bool:
        return any(c.__name__ == name for c in type(self).__mro__)

    def delete(self) -> None:
        q = _qt(self)
        if isinstance(q, QtCore.QObject):
            sip.delete(q)


class QObjectWrapper(Wrapper):
    """PythonQtStdDecorators: what PythonQt adds to every QObject."""

    __slots__ = ()

    def connect(self, signal: str, *args: Any) -> bool:
        """``connect('clicked(bool)', callable)`` (PythonQtStdDecorators::connect)."""
        if len(args) == 1 and callable(args[0]) and not isinstance(args[0], Wrapper):
            return add_signal_handler(_qt(self), signal, args[0], wrap)
        raise NotImplementedError("the harness connects signals to Python callables only (PythonQt's"
                                  " sender/receiver form is not used by the module)")

    def disconnect(self, signal: str, callable_: Callable | None = None) -> bool:
        """``disconnect('clicked(bool)'[, callable])`` (PythonQtStdDecorators::disconnect)."""
        return remove_signal_handler(_qt(self), signal, callable_)


# ---- members ------------------------------------------------------------------------------------

_MEMBERS: dict[tuple[type, str], tuple[str, Any]] = {}


def member(q: Any, name: str) -> tuple[str, Any]:
    """PythonQtClassInfo::member for ``name``: ("property", name) | ("signal", signature) |
    ("method", None) | ("enum", value) | ("notfound", None); cached per class like PythonQt."""
    key = (type(q), name)
    found = _MEMBERS.get(key)
    if found is not None:
        return found
    found = ("notfound", None)
    if isinstance(q, QtCore.QObject):  # lookForPropertyAndCache
        meta = q.metaObject()
        prop = name
        if meta.indexOfProperty(prop) < 0 and name == "name":  # PYTHONQT_SUPPORT_NAME_PROPERTY
            prop = "objectName"
        if name == "singleShot" and isinstance(q, QtCore.QTimer):
            prop = ""  # PythonQt hides QTimer's singleShot property
        if prop and meta.indexOfProperty(prop) >= 0:
            found = ("property", prop)
    if found[0] == "notfound":
        value = getattr(type(q), name, _MISSING)
        if value is not _MISSING and not _public_in_header(type(q), name, value):
            value = _MISSING
        if value is not _MISSING:
            if isinstance(value, (QtCore.pyqtSignal, QtCore.pyqtBoundSignal)):
                found = ("signal", first_signature(q, name))
            elif isinstance(value, int) or _is_flags(value):
                found = ("enum", value)
            elif callable(value):
                found = ("method", None)
    _MEMBERS[key] = found
    return found


def _public_in_header(cls: type, name: str, value: Any) -> bool:
    """Whether a member is part of the C++ API: everything PyQt5 defines for Qt's own classes; for
    a stand-in only its signals and the public methods its header declares (``_pythonqt_api``),
    never the stand-in's own helpers."""
    owner = next((c for c in cls.__mro__ if name in c.__dict__), None)
    if owner is None or not owner.__dict__.get("_pythonqt_standin", False):
        return True
    return isinstance(value, QtCore.pyqtSignal) or name in owner.__dict__.get("_pythonqt_api", ())


class SignalWrapper:
    """PythonQtSignalFunctionObject bound to an object: connect, disconnect, emit, call."""

    def __init__(self, owner: Wrapper, signature: str) -> None:
        self._owner = owner
        self._signature = signature

    def connect(self, callable_: Any) -> bool:
        return add_signal_handler(_qt(self._owner), self._signature, callable_, wrap)

    def disconnect(self, callable_: Any = None) -> bool:
        return remove_signal_handler(_qt(self._owner), self._signature, callable_)

    def emit(self, *args: Any) -> None:
        bound, _index, _parameters = bound_signal(_qt(self._owner), self._signature)
        bound.emit(*unwrap(args))

    __call__ = emit

    def __repr__(self) -> str:
        return f"<signal {self._signature} of {self._owner!r}>"


class Method:
    """A C++ method bound to its object (PythonQtSlotFunctionObject): arguments unwrapped, the
    result wrapped, keyword arguments refused."""

    __slots__ = ("_function", "_name")

    def __init__(self, function: Callable, name: str) -> None:
        self._function = function
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise ValueError(f"Called {self._name} with keyword arguments, but called slot does not"
                             " support kwargs.")
        _refuse_callables(self._name, args)
        return wrap(self._function(*unwrap(args)))

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Method) and other._function == self._function

    def __hash__(self) -> int:
        return hash(self._name)

    def __repr__(self) -> str:
        return f"<C++ method {self._name}>"


class BoolResult:
    """PythonQt.BoolResult: pass it where a C++ function takes ``bool* ok`` (PythonQtBoolResult.cpp)."""

    def __init__(self) -> None:
        self._value = False

    def __bool__(self) -> bool:
        return self._value

    def __repr__(self) -> str:
        return f"BoolResult({self._value})"
