"""Stand-ins for Slicer's MRML widgets used by PolypSAM.ui: ``qMRMLWidget`` and ``qMRMLNodeComboBox``.

Real Qt widgets (a QComboBox over a QStandardItemModel) with the Q_PROPERTYs, signals and public
methods of Slicer's headers at v5.10.0 (``Libs/MRML/Widgets/qMRMLWidget.h``,
``qMRMLNodeComboBox.h``); Python code reaches them through the PythonQt rules of
:mod:`wrapping`, so only those names exist. Behaviour follows the sources:

* the node list is filtered as ``qMRMLSortFilterProxyModel::filterAcceptsNode`` does
  (nodeTypes, showChildNodeTypes, hideChildNodeTypes, HideFromEditors unless showHidden,
  attribute filters), see :func:`accepts`;
* rows change on the scene events ``qMRMLSceneModel`` listens to (NodeAdded, NodeAboutToBeRemoved,
  EndClose/EndImport rebuild, node Modified for renames and filters), so QComboBox's own rules
  pick the current row when the current node goes away, and ``emitCurrentNodeChanged`` then
  skips extra items as Slicer's does;
* "None" comes first when ``noneEnabled``; after the nodes come the separator and the action items
  of ``updateActionItems`` ("Rename current", "Create new", "Create new ... as...", "Delete
  current"), which act when the user picks them (:meth:`qMRMLNodeComboBox.userChoose`).

The rows are chosen by :mod:`nodefilter`. Not modelled: the tree view of ``qMRMLSceneModel``
(the list is flat), lazy updates, the interaction node used by "Edit current", and VTK objects
crossing a real PythonQt signal (Python objects are passed as they are).
"""

from __future__ import annotations

from typing import Any

import vtk
from PyQt5 import QtCore, QtGui, QtWidgets
from vtkmodules.util.misc import calldata_type
from vtkmodules.util.vtkConstants import VTK_OBJECT

from .nodefilter import EXTRA_ROLE, accepts, extra_items

UID_ROLE = QtCore.Qt.UserRole + 1  # qMRMLSceneModel::UIDRole


class qMRMLWidget(QtWidgets.QWidget):  # noqa: N801 - Slicer's class name
    """``qMRMLWidget``: a QWidget that holds a scene and tells its children (the .ui connects
    ``mrmlSceneChanged(vtkMRMLScene*)`` to their ``setMRMLScene``)."""

    _pythonqt_standin = True
    _pythonqt_api = ("mrmlScene", "setMRMLScene")
    mrmlSceneChanged = QtCore.pyqtSignal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = None

    def mrmlScene(self) -> Any:
        return self._scene

    def setMRMLScene(self, scene: Any) -> None:
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


def _prop(name: str, kind: Any, notify: Any = None, refresh: str = ""):
    attr = "_" + name

    def getter(self):
        return getattr(self, attr)

    def setter(self, value):
        setattr(self, attr, list(value) if kind == "QStringList" else kind(value))
        if refresh:
            getattr(self, refresh)()

    return QtCore.pyqtProperty(kind, getter, setter, notify=notify) if notify else \
        QtCore.pyqtProperty(kind, getter, setter)


class qMRMLNodeComboBox(QtWidgets.QWidget):  # noqa: N801 - Slicer's class name
    """``qMRMLNodeComboBox`` (Libs/MRML/Widgets/qMRMLNodeComboBox.h, .cxx at v5.10.0)."""

    _pythonqt_standin = True
    _pythonqt_api = (
        "mrmlScene", "setNodeTypes", "addAttribute", "removeAttribute", "setBaseName",
        "setNodeTypeLabel", "nodeTypeLabel", "nodeCount", "nodeFromIndex", "currentNode", "nodes",
        "setMRMLScene", "setCurrentNode", "setCurrentNodeID", "setCurrentNodeIndex", "addNode",
        "removeCurrentNode", "renameCurrentNode", "setNoneEnabled", "setAddEnabled",
        "setRemoveEnabled", "setRenameEnabled", "setEditEnabled", "setShowHidden",
        "setShowChildNodeTypes", "setHideChildNodeTypes", "setNoneDisplay",
        "setSelectNodeUponCreation")

    # signals in the header's order: the first currentNodeChanged is (vtkMRMLNode*)
    currentNodeChanged = QtCore.pyqtSignal([object], [bool])
    currentNodeIDChanged = QtCore.pyqtSignal(str)
    nodeActivated = QtCore.pyqtSignal(object)
    nodeAdded = QtCore.pyqtSignal(object)
    nodeAddedByUser = QtCore.pyqtSignal(object)
    nodeAboutToBeRemoved = QtCore.pyqtSignal(object)
    currentNodeRenamed = QtCore.pyqtSignal(str)
    nodeAboutToBeEdited = QtCore.pyqtSignal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = None
        self._observations: list[int] = []
        self._nodeObservations: dict[str, tuple[Any, int]] = {}
        self._nodeTypes: list[str] = []
        self._showHidden = False
        self._showChildNodeTypes = True
        self._hideChildNodeTypes: list[str] = []
        self._noneEnabled = False
        self._addEnabled = True
        self._removeEnabled = True
        self._editEnabled = False
        self._renameEnabled = False
        self._selectNodeUponCreation = True
        self._noneDisplay = "None"
        self._interactionNodeSingletonTag = "Singleton"
        self._baseNames: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        self._attributes: dict[str, tuple[str, Any]] = {}
        self._requested = ""
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._model = QtGui.QStandardItemModel(self)
        self._combo = QtWidgets.QComboBox(self)
        self._combo.setModel(self._model)
        layout.addWidget(self._combo)
        self._combo.currentIndexChanged[int].connect(self._emitCurrentNodeChanged)
        self._combo.activated[int].connect(self._emitNodeActivated)
        self.setEnabled(False)

    # ---- Q_PROPERTYs (PythonQt reads and writes these as attributes, ahead of any method of
    # the same name: in Slicer ``combo.nodeTypes`` is the list and ``combo.nodeTypes()`` fails)
    nodeTypes = _prop("nodeTypes", "QStringList", refresh="_rebuild")
    showHidden = _prop("showHidden", bool, refresh="_rebuild")
    showChildNodeTypes = _prop("showChildNodeTypes", bool, refresh="_rebuild")
    hideChildNodeTypes = _prop("hideChildNodeTypes", "QStringList", refresh="_rebuild")
    noneEnabled = _prop("noneEnabled", bool, refresh="_rebuild")
    addEnabled = _prop("addEnabled", bool, refresh="_rebuild")
    removeEnabled = _prop("removeEnabled", bool, refresh="_rebuild")
    editEnabled = _prop("editEnabled", bool, refresh="_rebuild")
    renameEnabled = _prop("renameEnabled", bool, refresh="_rebuild")
    selectNodeUponCreation = _prop("selectNodeUponCreation", bool)
    noneDisplay = _prop("noneDisplay", str, refresh="_rebuild")
    interactionNodeSingletonTag = _prop("interactionNodeSingletonTag", str)
    baseName = QtCore.pyqtProperty(str, lambda self: self._baseName(""),
                                   lambda self, value: self.setBaseName(value))
    currentNodeID = QtCore.pyqtProperty(str, lambda self: self._currentID(),
                                        lambda self, value: self.setCurrentNodeID(value),
                                        notify=currentNodeIDChanged)
    currentNodeId = QtCore.pyqtProperty(str, lambda self: self._currentID(),
                                        lambda self, value: self.setCurrentNodeID(value))

    # ---- public methods (the header's) ---------------------------------------------------
    def mrmlScene(self) -> Any:
        return self._scene

    def setNodeTypes(self, types_: list[str]) -> None:
        self._nodeTypes = [t for t in types_ if t]
        self._rebuild()

    def setNoneEnabled(self, enable: bool) -> None:
        self._noneEnabled = bool(enable)
        self._rebuild()

    def setAddEnabled(self, enable: bool) -> None:
        self._addEnabled = bool(enable)
        self._rebuild()

    def setRemoveEnabled(self, enable: bool) -> None:
        self._removeEnabled = bool(enable)
        self._rebuild()

    def setRenameEnabled(self, enable: bool) -> None:
        self._renameEnabled = bool(enable)
        self._rebuild()

    def setEditEnabled(self, enable: bool) -> None:
        self._editEnabled = bool(enable)
        self._rebuild()

    def setShowHidden(self, enable: bool) -> None:
        self._showHidden = bool(enable)
        self._rebuild()

    def setShowChildNodeTypes(self, enable: bool) -> None:
        self._showChildNodeTypes = bool(enable)
        self._rebuild()

    def setHideChildNodeTypes(self, types_: list[str]) -> None:
        self._hideChildNodeTypes = list(types_)
        self._rebuild()

    def setNoneDisplay(self, text: str) -> None:
        self._noneDisplay = text
        self._rebuild()

    def setSelectNodeUponCreation(self, value: bool) -> None:
        self._selectNodeUponCreation = bool(value)

    def addAttribute(self, nodeType: str, attributeName: str, attributeValue: Any = None) -> None:
        self._attributes[nodeType] = (attributeName, attributeValue)
        self._rebuild()

    def removeAttribute(self, nodeType: str, attributeName: str) -> None:
        self._attributes.pop(nodeType, None)
        self._rebuild()

    def setBaseName(self, baseName: str, nodeType: str = "") -> None:
        for node_type in [nodeType] if nodeType else self._nodeTypes:
            self._baseNames[node_type] = baseName

    def _baseName(self, nodeType: str = "") -> str:
        node_type = nodeType or (self._nodeTypes[0] if self._nodeTypes else "")
        return self._baseNames.get(node_type, "")

    def setNodeTypeLabel(self, label: str, nodeType: str) -> None:
        self._labels[nodeType] = label
        self._rebuild()

    def nodeTypeLabel(self, nodeType: str) -> str:
        if nodeType in self._labels:
            return self._labels[nodeType]
        if self._scene is not None and nodeType:
            label = self._scene.GetTypeDisplayNameByClassName(nodeType)
            if label:
                return label
        return "node"

    def nodeCount(self) -> int:
        return len(self._nodeRows()) if self._scene is not None else 0

    def nodeFromIndex(self, index: int) -> Any:
        rows = self._nodeRows()
        return self._nodeAt(rows[index]) if 0 <= index < len(rows) else None

    def nodes(self) -> list:
        return [self._nodeAt(row) for row in self._nodeRows()]

    def currentNode(self) -> Any:
        return self._nodeAt(self._combo.currentIndex())

    def _currentID(self) -> str:
        node = self.currentNode()
        return node.GetID() if node is not None else ""

    def setMRMLScene(self, scene: Any) -> None:
        """qMRMLNodeComboBox::setMRMLScene: observe the scene as qMRMLSceneModel does."""
        if scene is self._scene:
            return
        old = self._currentID() if self.nodeCount() > 0 else ""
        if self._scene is not None:
            for tag in self._observations:
                self._scene.RemoveObserver(tag)
            self._forgetNodes()
        self._observations = []
        self._scene = scene
        if scene is not None:
            self._observations = [
                scene.AddObserver(scene.NodeAddedEvent, self._onNodeAdded, 10.0),
                scene.AddObserver(scene.NodeAboutToBeRemovedEvent, self._onNodeAboutToBeRemoved, -10.0),
                scene.AddObserver(scene.EndCloseEvent, self._onSceneReset),
                scene.AddObserver(scene.EndImportEvent, self._onSceneReset),
            ]
        self._rebuild(emit=False)
        self.setCurrentNodeID(old or self._requested)
        self._requested = ""
        self.setEnabled(scene is not None)

    def setCurrentNode(self, node: Any) -> None:
        self.setCurrentNodeID(node.GetID() if node is not None else "")

    def setCurrentNodeID(self, nodeID: str) -> None:
        """qMRMLNodeComboBoxPrivate::setCurrentNodeIDInternal: None (or no selection) if absent."""
        if self._scene is None:
            self._requested = nodeID or ""
        row = self._rowOf(nodeID) if nodeID else -1
        if row < 0:
            row = 0 if self._noneEnabled else -1
        self._combo.setCurrentIndex(row)

    def setCurrentNodeIndex(self, index: int) -> None:
        if index >= self.nodeCount():
            index = -1
        self._combo.setCurrentIndex(index + 1 if self._noneEnabled else index)

    def addNode(self, nodeType: str = "") -> Any:
        """qMRMLNodeComboBox::addNode through qMRMLNodeFactory::createNode."""
        nodeType = nodeType or (self._nodeTypes[0] if self._nodeTypes else "")
        if nodeType not in self._nodeTypes or self._scene is None:
            return None
        node = self._scene.CreateNodeByClass(nodeType)
        node.UnRegister(None)
        base = self._baseNames.get(nodeType) or (None if node.GetName() else node.GetDefaultNodeNamePrefix())
        if base:
            node.SetName(self._scene.GetUniqueNameByString(base))
        for _type, (name, value) in self._attributes.items():
            node.SetAttribute(name, "" if value is None else str(value))
        node = self._scene.AddNode(node)
        if self._selectNodeUponCreation:
            self.setCurrentNode(node)
        self.nodeAddedByUser.emit(node)
        return node

    def removeCurrentNode(self) -> None:
        self._scene.RemoveNode(self.currentNode())

    def renameCurrentNode(self) -> None:
        """Asks for the name with QInputDialog::getText (answered by the harness's dialog script)."""
        node = self.currentNode()
        if node is None:
            return
        from . import dialogs

        name, ok = dialogs.static_text(f"Rename {self.nodeTypeLabel(node.GetClassName())}", "New name:",
                                       node.GetName() or "")
        if ok and name:
            node.SetName(name)
            self.currentNodeRenamed.emit(name)

    # ---- what a user does with the popup -------------------------------------------------
    def userChoose(self, text: str) -> None:
        """Pick the entry shown as ``text`` in the popup, as a user does (activateExtraItem for
        action items, QComboBox::activated for nodes and None)."""
        texts = [self._model.item(r).text() for r in range(self._model.rowCount())]
        if text not in texts:
            raise ValueError(f"{self.objectName()} offers no '{text}': {texts}")
        row = texts.index(text)
        action = self._model.item(row).data(EXTRA_ROLE)
        if action is None:
            self._combo.setCurrentIndex(row)
            self._combo.activated[int].emit(row)
            return
        command, _, label = action.partition("/")
        if command in ("CREATE", "CREATE_AS"):
            node_type = next(t for t in self._nodeTypes if self.nodeTypeLabel(t) == label)
            if command == "CREATE":
                node = self.addNode(node_type)
                if node is not None:
                    self.setCurrentNode(node)
                    self.nodeAddedByUser.emit(node)
            else:
                from . import dialogs

                name, ok = dialogs.static_text(f"Create new {label}", "New name:", "")
                if ok and name:
                    node = self.addNode(node_type)
                    node.SetName(name)
                    self.setCurrentNode(node)
                    self.nodeAddedByUser.emit(node)
        elif command == "DELETE":
            self.removeCurrentNode()
        elif command == "RENAME":
            self.renameCurrentNode()

    def entries(self) -> list[str]:
        """The texts of the popup's rows, in order (for tests)."""
        return [self._model.item(r).text() for r in range(self._model.rowCount())]

    # ---- model ---------------------------------------------------------------------------
    def _nodeRows(self) -> list[int]:
        return [r for r in range(self._model.rowCount()) if self._model.item(r).data(UID_ROLE)]

    def _nodeAt(self, row: int) -> Any:
        if row < 0 or row >= self._model.rowCount() or self._scene is None:
            return None
        node_id = self._model.item(row).data(UID_ROLE)
        return self._scene.GetNodeByID(node_id) if node_id else None

    def _rowOf(self, node_id: str) -> int:
        for row in self._nodeRows():
            if self._model.item(row).data(UID_ROLE) == node_id:
                return row
        return -1

    def _nodeItem(self, node: Any) -> QtGui.QStandardItem:
        item = QtGui.QStandardItem(node.GetName() or "")
        item.setData(node.GetID(), UID_ROLE)
        return item

    def _extraItems(self) -> tuple[list[QtGui.QStandardItem], list[QtGui.QStandardItem]]:
        return extra_items(self)

    def _rebuild(self, emit: bool = True) -> None:
        """Rebuild every row (a property change, or qMRMLSceneModel::updateScene after a scene
        close or import), keeping the current node when it is still listed; the current-node
        signals are emitted once, if the current node changed."""
        before = self._currentID() if self._scene is not None else ""
        blocked = self._combo.blockSignals(True)
        try:
            self._forgetNodes()
            self._model.removeRows(0, self._model.rowCount())
            pre, post = self._extraItems()
            for item in pre:
                self._model.appendRow(item)
            if self._scene is not None:
                for n in range(self._scene.GetNumberOfNodes()):
                    node = self._scene.GetNthNode(n)
                    self._observeNode(node)
                    if accepts(node, self):
                        self._model.appendRow(self._nodeItem(node))
            for item in post:
                self._model.appendRow(item)
            row = self._rowOf(before) if before else -1
            if row < 0:  # None; without None, QComboBox selects the first row of a filled list
                rows = self._nodeRows()
                row = 0 if self._noneEnabled else (rows[0] if rows else -1)
            self._combo.setCurrentIndex(row)
        finally:
            self._combo.blockSignals(blocked)
        if emit and self._scene is not None and self._currentID() != before:
            self._emitCurrentNodeChanged(self._combo.currentIndex())

    def _onSceneReset(self, caller: Any, event: Any) -> None:
        self._rebuild()

    @calldata_type(VTK_OBJECT)
    def _onNodeAdded(self, caller: Any, event: Any, node: Any) -> None:
        """qMRMLSceneModel::onMRMLSceneNodeAdded (not while importing)."""
        if self._scene.IsImporting():
            return
        self._observeNode(node)
        if accepts(node, self) and self._rowOf(node.GetID()) < 0:
            self._insertNode(node)

    @calldata_type(VTK_OBJECT)
    def _onNodeAboutToBeRemoved(self, caller: Any, event: Any, node: Any) -> None:
        """qMRMLSceneModel::onMRMLSceneNodeAboutToBeRemoved (not while closing)."""
        self._unobserveNode(node)
        if self._scene.IsClosing():
            return
        row = self._rowOf(node.GetID())
        if row >= 0:
            self.nodeAboutToBeRemoved.emit(node)
            self._model.removeRow(row)
            self._refreshIfCurrentNodeHidden()

    def _insertNode(self, node: Any) -> None:
        rows = self._nodeRows()
        position = rows[-1] + 1 if rows else (1 if self._noneEnabled else 0)
        self._model.insertRow(position, self._nodeItem(node))
        self.nodeAdded.emit(node)

    def _observeNode(self, node: Any) -> None:
        if node.GetID() and node.GetID() not in self._nodeObservations:
            tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onNodeModified)
            self._nodeObservations[node.GetID()] = (node, tag)

    def _unobserveNode(self, node: Any) -> None:
        found = self._nodeObservations.pop(node.GetID() or "", None)
        if found is not None:
            found[0].RemoveObserver(found[1])

    def _forgetNodes(self) -> None:
        for node, tag in self._nodeObservations.values():
            node.RemoveObserver(tag)
        self._nodeObservations = {}

    def _onNodeModified(self, node: Any, event: Any) -> None:
        """qMRMLSceneModel::onMRMLNodeModified + the proxy's dynamic filter: the name follows the
        node; a node that stops (or starts) passing the filter leaves (or joins) the list."""
        row = self._rowOf(node.GetID())
        if row >= 0 and not accepts(node, self):
            self.nodeAboutToBeRemoved.emit(node)
            self._model.removeRow(row)
            self._refreshIfCurrentNodeHidden()
        elif row >= 0:
            item = self._model.item(row)
            if item.text() != (node.GetName() or ""):
                item.setText(node.GetName() or "")
        elif accepts(node, self) and self._scene is not None and self._scene.IsNodePresent(node):
            self._insertNode(node)

    def _refreshIfCurrentNodeHidden(self) -> None:
        if self.currentNode() is None:
            self.setCurrentNode(None)

    # ---- signal emission (emitCurrentNodeChanged / emitNodeActivated) -------------------------
    def _emitCurrentNodeChanged(self, index: int) -> None:
        node = self._nodeAt(index)
        if node is None and ((not self._noneEnabled and index != -1) or (self._noneEnabled and index != 0)):
            last = self.nodeFromIndex(self.nodeCount() - 1)
            if last is not None:
                self.setCurrentNode(last)
            return
        self.currentNodeChanged[object].emit(node)
        self.currentNodeChanged[bool].emit(node is not None)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _emitNodeActivated(self, index: int) -> None:
        node = self._nodeAt(index)
        if node is not None or (self._noneEnabled and index == 0):
            self.nodeActivated.emit(node)

