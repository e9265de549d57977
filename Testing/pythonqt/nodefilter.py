"""How ``qMRMLNodeComboBox`` chooses its rows (Slicer v5.10.0), for :mod:`mrmlwidgets`.

:func:`accepts` is qMRMLSortFilterProxyModel::filterAcceptsNode; :func:`extra_items` builds the
rows around the nodes as qMRMLNodeComboBoxPrivate::updateNoneItem and updateActionItems do.
"""

from __future__ import annotations

from typing import Any

from PyQt5 import QtCore, QtGui

EXTRA_ROLE = QtCore.Qt.UserRole + 2  # qMRMLSceneModel::ExtraItemsRole


def accepts(node: Any, combo: Any) -> bool:
    """qMRMLSortFilterProxyModel::filterAcceptsNode for a combo's settings (v5.10.0)."""
    if node is None or not node.GetID():
        return True
    if not combo._showHidden and node.GetHideFromEditors():
        return False
    if not combo._nodeTypes:
        return True
    for node_type in combo._nodeTypes:
        if not node.IsA(node_type):
            continue
        if not combo._showChildNodeTypes and node_type != node.GetClassName():
            continue
        if combo._showChildNodeTypes and any(node.IsA(t) for t in combo._hideChildNodeTypes):
            return False
        if node_type in combo._attributes:
            name, value = combo._attributes[node_type]
            found = node.GetAttribute(name)
            if found is None or (value is not None and str(value) != found):
                return False
        return True
    return False



def extra_items(combo: Any) -> tuple[list[QtGui.QStandardItem], list[QtGui.QStandardItem]]:
    """qMRMLNodeComboBoxPrivate::updateNoneItem / updateActionItems: "None" before the nodes; the
    separator and the action items after them."""
    pre = []
    if combo._noneEnabled:
        pre.append(QtGui.QStandardItem(combo._noneDisplay))
    post = []
    if combo._scene is not None:
        label = combo.nodeTypeLabel(combo._nodeTypes[0] if len(combo._nodeTypes) == 1 else "")
        actions = []
        if combo._renameEnabled:
            actions.append((f"Rename current {label}", f"RENAME/{label}"))
        if combo._editEnabled:
            actions.append((f"Edit current {label}", f"EDIT/{label}"))
        if combo._addEnabled:
            for node_type in combo._nodeTypes:
                type_label = combo.nodeTypeLabel(node_type)
                actions.append((f"Create new {type_label}", f"CREATE/{type_label}"))
                if combo._renameEnabled:
                    actions.append((f"Create new {type_label} as...", f"CREATE_AS/{type_label}"))
        if combo._removeEnabled:
            actions.append((f"Delete current {label}", f"DELETE/{label}"))
        if actions:
            separator = QtGui.QStandardItem("")
            separator.setData("SEPARATOR", EXTRA_ROLE)
            separator.setData("separator", QtCore.Qt.AccessibleDescriptionRole)
            separator.setFlags(QtCore.Qt.NoItemFlags)
            post.append(separator)
        for text, data in actions:
            item = QtGui.QStandardItem(text)
            item.setData(data, EXTRA_ROLE)
            post.append(item)
    return pre, post

