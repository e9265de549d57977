"""Stand-ins for the CTK widgets PolypSAM.ui and Slicer's Python code use.

``ctkCollapsibleButton`` (Libs/Widgets/ctkCollapsibleButton.h) and ``ctkMessageBox``
(Libs/Widgets/ctkMessageBox.h) of CTK dd4caeae, the commit Slicer 5.10.0 builds: real Qt widgets
with those headers' Q_PROPERTYs and signals. The collapsible button is a checkable QAbstractButton
that hides its child widgets when collapsed; the message box is a QMessageBox whose
"don't show again" properties are stored but whose check box is not drawn.
"""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets


class ctkCollapsibleButton(QtWidgets.QAbstractButton):  # noqa: N801 - CTK's class name
    """``ctkCollapsibleButton``: ``collapsed`` (NOTIFY ``contentsCollapsed(bool)``), ``collapsedHeight``,
    ``flat``, ``contentsFrameShape``/``Shadow``, ``contentsLineWidth``/``MidLineWidth``,
    ``buttonTextAlignment``, ``indicatorAlignment``."""

    _pythonqt_standin = True
    _pythonqt_api = ("setCollapsed", "setCollapsedHeight", "setFlat", "isFlat")
    contentsCollapsed = QtCore.pyqtSignal(bool)

    def __init__(self, *args) -> None:
        text = args[0] if args and isinstance(args[0], str) else ""
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        super().__init__(parent)
        self.setText(text)
        self.setCheckable(True)
        self.setChecked(True)
        self._collapsed = False
        self._collapsedHeight = 10
        self._flat = False
        self._frameShape = QtWidgets.QFrame.StyledPanel
        self._frameShadow = QtWidgets.QFrame.Raised
        self._lineWidth = 1
        self._midLineWidth = 0
        self._textAlignment = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        self._indicatorAlignment = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        self.toggled.connect(lambda checked: self.setCollapsed(not checked))

    def setCollapsed(self, collapsed: bool) -> None:
        collapsed = bool(collapsed)
        if self.isChecked() == collapsed:
            self.setChecked(not collapsed)  # calls back through toggled
            return
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        for child in self.children():
            if isinstance(child, QtWidgets.QWidget):
                child.setVisible(not collapsed)
        self.contentsCollapsed.emit(collapsed)

    def setCollapsedHeight(self, height: int) -> None:
        self._collapsedHeight = int(height)

    def setFlat(self, flat: bool) -> None:
        self._flat = bool(flat)

    def isFlat(self) -> bool:
        return self._flat

    collapsed = QtCore.pyqtProperty(bool, lambda self: self._collapsed,
                                    lambda self, value: self.setCollapsed(value), notify=contentsCollapsed)
    collapsedHeight = QtCore.pyqtProperty(int, lambda self: self._collapsedHeight,
                                          lambda self, value: self.setCollapsedHeight(value))
    flat = QtCore.pyqtProperty(bool, lambda self: self._flat, lambda self, value: self.setFlat(value))
    contentsFrameShape = QtCore.pyqtProperty(int, lambda self: int(self._frameShape),
                                             lambda self, value: setattr(self, "_frameShape", value))
    contentsFrameShadow = QtCore.pyqtProperty(int, lambda self: int(self._frameShadow),
                                              lambda self, value: setattr(self, "_frameShadow", value))
    contentsLineWidth = QtCore.pyqtProperty(int, lambda self: self._lineWidth,
                                            lambda self, value: setattr(self, "_lineWidth", int(value)))
    contentsMidLineWidth = QtCore.pyqtProperty(int, lambda self: self._midLineWidth,
                                               lambda self, value: setattr(self, "_midLineWidth", int(value)))
    buttonTextAlignment = QtCore.pyqtProperty(int, lambda self: self._textAlignment,
                                              lambda self, value: setattr(self, "_textAlignment", int(value)))
    indicatorAlignment = QtCore.pyqtProperty(
        int, lambda self: self._indicatorAlignment,
        lambda self, value: setattr(self, "_indicatorAlignment", int(value)))

    # uic sets these through their setters
    def setContentsFrameShape(self, value) -> None:
        self._frameShape = value

    def setContentsFrameShadow(self, value) -> None:
        self._frameShadow = value

    def childEvent(self, event: QtCore.QChildEvent) -> None:
        """ctkCollapsibleButton::childEvent: a widget added while collapsed is hidden."""
        super().childEvent(event)
        child = event.child()
        added = event.type() == QtCore.QEvent.ChildAdded and isinstance(child, QtWidgets.QWidget)
        if added and getattr(self, "_collapsed", False):
            child.setVisible(False)

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # QAbstractButton's is pure virtual
        painter = QtGui.QPainter(self)
        painter.drawText(self.rect().adjusted(4, 0, 0, 0), self._textAlignment, self.text())

    def sizeHint(self) -> QtCore.QSize:
        return QtCore.QSize(200, 24)


class ctkMessageBox(QtWidgets.QMessageBox):  # noqa: N801 - CTK's class name
    """``ctkMessageBox``: ``dontShowAgain``, ``dontShowAgainSettingsKey``, ``dontShowAgainVisible``
    (``dontShowAgainButtonRoles``, a list of enums, is left out)."""

    _pythonqt_standin = True
    _pythonqt_api = ("addDontShowAgainButtonRole",)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._dontShowAgain = False
        self._settingsKey = ""
        self._dontShowAgainVisible = False

    def addDontShowAgainButtonRole(self, role) -> None:
        del role

    dontShowAgain = QtCore.pyqtProperty(bool, lambda self: self._dontShowAgain,
                                        lambda self, value: setattr(self, "_dontShowAgain", bool(value)))
    dontShowAgainSettingsKey = QtCore.pyqtProperty(str, lambda self: self._settingsKey,
                                                   lambda self, value: setattr(self, "_settingsKey", value))
    dontShowAgainVisible = QtCore.pyqtProperty(
        bool, lambda self: self._dontShowAgainVisible,
        lambda self, value: setattr(self, "_dontShowAgainVisible", bool(value)))
