"""Tracked masks → a segmentation sequence synchronised with the sequence browser.

:func:`check_sequence_output` refuses, before any model work, an output segmentation that a
browser's segmentation sequence cannot use: one already synchronised with another browser (two
browsers would write the same proxy node, each saving its items into the other's sequence), or
one holding segments of another image (another voxel grid, e.g. the CT's segmentation for a
video). The advice is a new output segmentation.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..terminology import slicer_entry
from .masking import reference_to_node
from .nodes import image_dims, require_node
from .segments import (
    KEYS_TAG, TAG_PREFIX, add_segment, find_segment, get_tag, holds_segments_off_lattice,
    reference_grid, write_mask_to_segment,
)
from .volumes import master_sequence


_NEW_OUTPUT = ("choose a new output segmentation for it (Output: \"Create new Segmentation\")"
               " or None, and PolypSAM makes one")


def check_sequence_output(browser_node: Any, segmentation_node: Any) -> None:
    """Refuse ``segmentation_node`` as the output of ``browser_node``'s tracking when another
    browser synchronises it, or when it holds segments on another voxel grid than the frames."""
    if segmentation_node is None or browser_node is None:
        return
    if browser_node.GetSequenceNode(segmentation_node) is not None:
        return  # this browser's own segmentation sequence: its items are updated
    scene = segmentation_node.GetScene()
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode") if scene is not None else None
    for n in range(browsers.GetNumberOfItems() if browsers is not None else 0):
        other = browsers.GetItemAsObject(n)
        if other is not browser_node and other.GetSequenceNode(segmentation_node) is not None:
            raise InvalidInputError(
                f"the output segmentation '{segmentation_node.GetName()}' is already tracked in the"
                f" sequence browser '{other.GetName()}'; to track '{browser_node.GetName()}', "
                + _NEW_OUTPUT)
    master = master_sequence(browser_node)
    frame = master.GetNthDataNode(min(max(0, browser_node.GetSelectedItemNumber()),
                                      master.GetNumberOfDataNodes() - 1))
    if holds_segments_off_lattice(segmentation_node, reference_to_node(segmentation_node, frame)):
        raise InvalidInputError(
            f"the output segmentation '{segmentation_node.GetName()}' holds segments of another"
            f" image (on another voxel grid than the frames of '{browser_node.GetName()}'); "
            + _NEW_OUTPUT)


def write_tracked_masks_to_sequence(
    browser_node: Any,
    segmentation_node: Any,
    masks_per_frame: Mapping[int, np.ndarray | Mapping[str, np.ndarray]],
    *,
    segment: str = "Polyp",
    names: Optional[Sequence[str]] = None,
    colors: Mapping[str, tuple[float, float, float]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    terminology: str | None = None,
    undo: Any = None,
) -> Any:
    """Write per-frame masks as a segmentation sequence synchronised with ``browser_node``.

    ``masks_per_frame`` maps a frame's item number in the master sequence to a mask (``H x W``
    for a video frame, ``K x J x I`` for a 4-D sequence's volume), written to segment
    ``segment``, or to ``{segment name: mask}``. It is read twice, one frame at a time (checked,
    then written), so it may compute each frame when asked. Every frame of the master
    sequence gets one segmentation (empty segments where no mask is given) on that frame's grid;
    ``segmentation_node`` becomes (or stays) the browser's proxy for the sequence, which is
    returned. If the node already has a sequence in this browser, only the given frames change.
    ``names`` fixes the segments' order (default: as first met). All masks are checked before
    anything changes.

    ``undo`` (the step :func:`polypsam.mrml.history.save_sequence_state_for_undo` returned)
    receives every stored segmentation this write replaces: the sequence gets a new one and the
    step keeps the old one, which leaves the scene (nothing is copied for undo).
    """
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    check_sequence_output(browser_node, segmentation_node)
    master = master_sequence(browser_node)
    n_frames = master.GetNumberOfDataNodes()
    order: list[str] = list(names or [])
    frames: list[int] = []
    for frame in list(masks_per_frame.keys()):  # check every frame before anything changes
        if not isinstance(frame, (int, np.integer)) or not 0 <= frame < n_frames:
            raise InvalidInputError(f"frame {frame!r} is not an item of 0..{n_frames - 1}")
        frames.append(int(frame))
        for name in _frame_masks(master, int(frame), masks_per_frame[frame], segment):
            if name not in order:
                order.append(name)
    if not order:
        raise InvalidInputError("no masks to write")
    given_frames = set(frames)
    current = min(max(0, browser_node.GetSelectedItemNumber()), n_frames - 1)
    seq = browser_node.GetSequenceNode(segmentation_node)
    swapped: set[str] = set()

    def stored_node(value: str) -> Any:
        """The stored segmentation of item ``value`` to write into: with ``undo``, a new one,
        the undo step keeping the one it replaces (once per item)."""
        stored = seq.GetDataNodeAtValue(value)
        if stored is None:
            stored = seq.SetDataNodeAtValue(segmentation_node, value)
            if undo is not None:
                undo.added(value)
        elif undo is not None and value not in swapped:
            undo.replaced(value, stored)
            stored = seq.SetDataNodeAtValue(stored, value)
        swapped.add(value)
        return stored

    if seq is not None and undo is not None:
        # The proxy may share its segmentation with the current item (as browsing leaves it):
        # show a new current item first, so that nothing the undo step keeps changes through it.
        shown = master.GetNthIndexValue(current)
        if seq.GetDataNodeAtValue(shown) is not None:
            segmentation_node.CopyContent(stored_node(shown), False)
    segmentation = segmentation_node.GetSegmentation()
    ids = {}
    for name in order:
        segment_id = find_segment(segmentation, name)
        if segment_id is None:
            segment_id = add_segment(segmentation, name, (colors or {}).get(name))
            if terminology:
                segmentation.GetSegment(segment_id).SetTerminology(slicer_entry(terminology))
        ids[name] = segment_id

    def write_frame(target: Any, frame: int) -> None:
        given = masks_per_frame.get(frame) if frame in given_frames else None
        masks = _frame_masks(master, frame, given, segment) if given is not None else {}
        grid = reference_grid(master.GetNthDataNode(frame))
        frame_tags = dict(provenance or {}, frame=frame)
        for name in order:
            mask = masks.get(name)
            if mask is None:
                if target is not segmentation_node:
                    continue  # an existing frame: keep what it has
                remove_provenance(target, ids[name])
                target.GetSegmentation().ClearSegment(ids[name])
                continue
            write_mask_to_segment(target, ids[name], mask, grid, provenance=frame_tags)

    if seq is None:  # a new sequence: every frame gets a segmentation, the current one last
        seq = segmentation_node.GetScene().AddNewNodeByClass(
            "vtkMRMLSequenceNode", f"{segmentation_node.GetName()}-seq"
        )
        seq.SetIndexName(master.GetIndexName())
        seq.SetIndexUnit(master.GetIndexUnit())
        seq.SetIndexType(master.GetIndexType())
        for frame in [n for n in range(n_frames) if n != current] + [current]:
            write_frame(segmentation_node, frame)
            seq.SetDataNodeAtValue(segmentation_node, master.GetNthIndexValue(frame))
        browser_node.AddSynchronizedSequenceNode(seq)
        browser_node.AddProxyNode(segmentation_node, seq, False)
    else:  # update the stored segmentations of the given frames; the others are kept
        for frame in frames:
            stored = stored_node(master.GetNthIndexValue(frame))
            for name in order:
                if find_segment(stored.GetSegmentation(), ids[name]) is None:
                    color = segmentation.GetSegment(ids[name]).GetColor()
                    stored.GetSegmentation().AddEmptySegment(ids[name], name, list(color))
            write_frame(stored, frame)
        if current in given_frames and undo is None:
            write_frame(segmentation_node, current)
        seq.Modified()
    browser_node.SetSaveChanges(seq, True)
    return seq


def _frame_masks(master: Any, frame: int, given: Any, segment: str) -> dict[str, np.ndarray]:
    """One frame's masks as ``{name: K x J x I bool-like}``, checked against the frame's grid."""
    masks = {segment: given} if isinstance(given, np.ndarray) else dict(given)
    i, j, k = image_dims(master.GetNthDataNode(frame), f"frame {frame}")
    out = {}
    for name, mask in masks.items():
        array = np.asarray(mask)
        shaped = array[None] if array.ndim == 2 else array
        if shaped.shape != (k, j, i):
            raise InvalidInputError(
                f"mask '{name}' of frame {frame} has shape {array.shape};"
                f" the frame is {(j, i) if k == 1 else (k, j, i)}"
            )
        out[name] = shaped
    return out


def remove_provenance(segmentation_node: Any, segment_id: str) -> None:
    """Remove PolypSAM's provenance tags from a segment."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    keys = get_tag(segment, TAG_PREFIX + KEYS_TAG)
    for key in (keys.split(",") if keys else []) + [KEYS_TAG]:
        segment.RemoveTag(TAG_PREFIX + key)
