"""Undo history: the one room for PolypSAM's undo states, and the hooks that let other histories follow.

Each segmentation node has a stack of undo steps (at most :data:`MAX_STEPS`). A step restores
either the node's segments (a deep copy taken before a write) or, for Track, the segmentation
sequence the write changed: undo puts back the stored segmentations the write replaced (the step
holds them, taken out of the sequence, instead of a copy of the whole sequence), or removes the
sequence from the browser and the scene when the write created it. At most
:data:`MAX_SEQUENCE_VERSIONS` steps hold a replaced sequence, so undo memory stays at two
versions of a sequence however often it is tracked again.

Steps are keyed by the segmentation *node*, not by its ``vtkSegmentation``: with save-changes
on, Slicer's Sequences logic swaps the proxy node's ``vtkSegmentation`` object whenever the
browser moves, so a history bound to that object (as ``vtkSegmentationHistory`` is) silently
stops working after a Track. The key is a random token stored on the node as an attribute (a
new node at a freed node's address, with its ID, is not mistaken for it). A step never keeps the
segmentation node alive (segment snapshots are copies; a Track step holds only the stored
segmentations its write took out of the sequence); steps of nodes that left their scene are
dropped on every access.

Before-write hooks run after PolypSAM saved its own step and before it writes, so that another
undo history can follow PolypSAM's writes. The Slicer module does not need one: it saves the
Segment Editor's undo state itself, right before it writes a run (the library never calls it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import slicer

from .nodes import require_node

MAX_STEPS = 10
#: At most this many of a segmentation's undo steps hold a replaced version of its segmentation
#: sequence (each one a whole sequence's masks); the steps before the oldest of them are dropped.
MAX_SEQUENCE_VERSIONS = 2

#: Called with the segmentation node right after PolypSAM saved its undo step and before it writes.
BeforeWriteHook = Callable[[Any], None]
_before_write_hooks: list[BeforeWriteHook] = []


def add_before_write_hook(hook: BeforeWriteHook) -> None:
    if hook not in _before_write_hooks:
        _before_write_hooks.append(hook)


def remove_before_write_hook(hook: BeforeWriteHook) -> None:
    if hook in _before_write_hooks:
        _before_write_hooks.remove(hook)


def _copy_segments(segmentation_node: Any) -> Any:
    copy = slicer.vtkSegmentation()
    copy.DeepCopy(segmentation_node.GetSegmentation())
    return copy


def _restore_segments(segmentation_node: Any, copy: Any) -> None:
    was_modifying = segmentation_node.StartModify()
    try:
        segmentation_node.GetSegmentation().DeepCopy(copy)
    finally:
        segmentation_node.EndModify(was_modifying)
    segmentation_node.Modified()


@dataclass
class _SegmentsStep:
    """The node's segments before a write."""

    segments: Any

    def restore(self, node: Any) -> "_SegmentsStep":
        current = _SegmentsStep(_copy_segments(node))
        _restore_segments(node, self.segments)
        return current


@dataclass
class SequenceStep:
    """A Track write: the node's segments before it, and what it did to its segmentation sequence.

    The write hands over what it replaces instead of the step copying the sequence first:
    :meth:`replaced` keeps a stored segmentation the write took out of the sequence (it leaves the
    scene, so the step holds it without a copy), :meth:`added` notes an item the write added.
    Without a sequence before the write, undo removes the one it created.
    """

    segments: Any
    browser_id: str
    existed: bool
    old_items: dict[str, Any] = field(default_factory=dict)  # index value -> the stored node
    new_items: list[str] = field(default_factory=list)

    def replaced(self, index_value: str, stored_node: Any) -> None:
        self.old_items.setdefault(index_value, stored_node)

    def added(self, index_value: str) -> None:
        self.new_items.append(index_value)

    def restore(self, node: Any) -> None:
        scene = node.GetScene()
        browser = scene.GetNodeByID(self.browser_id) if scene is not None else None
        sequence = browser.GetSequenceNode(node) if browser is not None else None
        if sequence is not None and not self.existed:  # created by the write: remove it as a whole
            browser.RemoveSynchronizedSequenceNode(sequence.GetID())
            scene.RemoveNode(sequence)
        elif sequence is not None:
            for value, stored in self.old_items.items():
                sequence.SetDataNodeAtValue(stored, value)
            for value in self.new_items:
                sequence.RemoveDataNodeAtValue(value)
            sequence.Modified()
            shown = sequence.GetDataNodeAtValue(_shown_index_value(browser))
            if shown is not None:  # the proxy shows the restored item, as browsing does
                node.CopyContent(shown, False)
                node.Modified()
                return None
        _restore_segments(node, self.segments)
        return None


def _shown_index_value(browser: Any) -> str:
    master = browser.GetMasterSequenceNode()
    item = min(max(0, browser.GetSelectedItemNumber()), master.GetNumberOfDataNodes() - 1)
    return master.GetNthIndexValue(item)


@dataclass
class _Room:
    scene: Any
    node_id: str
    undo: list = field(default_factory=list)
    redo: list = field(default_factory=list)


# the node's undo key -> its undo and redo steps
_ROOMS: dict[str, _Room] = {}


_KEY_ATTRIBUTE = "PolypSAM.undoKey"


def _key(segmentation_node: Any, create: bool = False) -> str | None:
    key = segmentation_node.GetAttribute(_KEY_ATTRIBUTE)
    if not key and create:
        key = uuid.uuid4().hex
        segmentation_node.SetAttribute(_KEY_ATTRIBUTE, key)
    return key or None


def _prune() -> None:
    for key, room in list(_ROOMS.items()):
        if room.scene is None:  # a node outside any scene: kept until forget_undo_history
            continue
        node = room.scene.GetNodeByID(room.node_id)
        if node is None or _key(node) != key:
            del _ROOMS[key]


def _room(segmentation_node: Any, create: bool) -> _Room | None:
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    _prune()
    key = _key(segmentation_node, create)
    room = _ROOMS.get(key) if key else None
    if room is None and create:
        room = _ROOMS[key] = _Room(segmentation_node.GetScene(), segmentation_node.GetID())
    return room


def _push(segmentation_node: Any, step: Any) -> None:
    room = _room(segmentation_node, create=True)
    room.undo.append(step)
    del room.undo[:-MAX_STEPS]
    versions = [n for n, s in enumerate(room.undo) if isinstance(s, SequenceStep) and s.existed]
    if len(versions) > MAX_SEQUENCE_VERSIONS:
        del room.undo[:versions[-MAX_SEQUENCE_VERSIONS - 1] + 1]
    room.redo.clear()
    for hook in list(_before_write_hooks):
        hook(segmentation_node)


def save_state_for_undo(segmentation_node: Any) -> None:
    """Snapshot the segments before changing them, then run the before-write hooks."""
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    _push(segmentation_node, _SegmentsStep(_copy_segments(segmentation_node)))


def save_sequence_state_for_undo(segmentation_node: Any, browser_node: Any) -> SequenceStep:
    """An undo step for a write into the node's segmentation sequence in ``browser_node`` (Track):
    the node's segments now; the write hands the step what it replaces in the sequence
    (:func:`polypsam.mrml.sequences.write_tracked_masks_to_sequence`'s ``undo``)."""
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    require_node(browser_node, "vtkMRMLSequenceBrowserNode", "sequence browser")
    existed = browser_node.GetSequenceNode(segmentation_node) is not None
    step = SequenceStep(_copy_segments(segmentation_node), browser_node.GetID(), existed)
    _push(segmentation_node, step)
    return step


def undo(segmentation_node: Any) -> bool:
    """Restore the state saved before the last change; ``False`` if there is none."""
    room = _room(segmentation_node, create=False)
    if room is None or not room.undo:
        return False
    step = room.undo.pop()
    redo_step = step.restore(segmentation_node)
    if redo_step is not None:
        room.redo.append(redo_step)
    else:  # a sequence step cannot be re-applied: the redo stack ends here
        room.redo.clear()
    return True


def redo(segmentation_node: Any) -> bool:
    """Re-apply the segment change undone last; ``False`` if there is none."""
    room = _room(segmentation_node, create=False)
    if room is None or not room.redo:
        return False
    step = room.redo.pop()
    room.undo.append(step.restore(segmentation_node))
    return True


def forget_undo_history(segmentation_node: Any = None) -> None:
    """Drop PolypSAM's undo steps of one segmentation node, or of all when ``None``."""
    if segmentation_node is None:
        _ROOMS.clear()
    elif _key(segmentation_node):
        _ROOMS.pop(_key(segmentation_node), None)


def undo_history_count() -> int:
    """How many segmentations PolypSAM currently keeps undo steps for (after pruning)."""
    _prune()
    return len(_ROOMS)
