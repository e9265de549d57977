"""Tracked masks → a segmentation sequence synchronised with the sequence browser."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import InvalidInputError
from ..terminology import slicer_entry
from .nodes import image_dims, require_node
from .segments import TAG_PREFIX, KEYS_TAG, add_segment, get_tag, reference_grid, find_segment, write_mask_to_segment
from .volumes import master_sequence


def write_tracked_masks_to_sequence(
    browser_node: Any,
    segmentation_node: Any,
    masks_per_frame: Mapping[int, np.ndarray | Mapping[str, np.ndarray]],
    *,
    segment: str = "Polyp",
    colors: Mapping[str, tuple[float, float, float]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    terminology: str | None = None,
) -> Any:
    """Write per-frame masks as a segmentation sequence synchronised with ``browser_node``.

    ``masks_per_frame`` maps a frame's item number in the master sequence to a mask (``H x W``
    for a video frame, ``K x J x I`` for a 4-D sequence's volume), written to segment
    ``segment``, or to ``{segment name: mask}``. Every frame of the master
    sequence gets one segmentation (empty segments where no mask is given) on that frame's grid;
    ``segmentation_node`` becomes (or stays) the browser's proxy for the sequence, which is
    returned. If the node already has a sequence in this browser, only the given frames change.
    All masks are validated before anything changes.
    """
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    master = master_sequence(browser_node)
    n_frames = master.GetNumberOfDataNodes()
    per_frame: dict[int, dict[str, np.ndarray]] = {}
    names: list[str] = []
    for frame, masks in masks_per_frame.items():
        if not isinstance(frame, (int, np.integer)) or not 0 <= frame < n_frames:
            raise InvalidInputError(f"frame {frame!r} is not an item of 0..{n_frames - 1}")
        masks = {segment: masks} if isinstance(masks, np.ndarray) else dict(masks)
        node = master.GetNthDataNode(int(frame))
        i, j, k = image_dims(node, f"frame {frame}")
        for name, mask in masks.items():
            given = np.asarray(mask)
            mask = given[None] if given.ndim == 2 else given
            if mask.shape != (k, j, i):
                raise InvalidInputError(
                    f"mask '{name}' of frame {frame} has shape {given.shape};"
                    f" the frame is {(j, i) if k == 1 else (k, j, i)}"
                )
            masks[name] = mask
            if name not in names:
                names.append(name)
        per_frame[int(frame)] = masks
    if not names:
        raise InvalidInputError("no masks to write")

    segmentation = segmentation_node.GetSegmentation()
    ids = {}
    for name in names:
        segment_id = find_segment(segmentation, name)
        if segment_id is None:
            segment_id = add_segment(segmentation, name, (colors or {}).get(name))
            if terminology:
                segmentation.GetSegment(segment_id).SetTerminology(slicer_entry(terminology))
        ids[name] = segment_id

    def write_frame(target: Any, frame: int, masks: Mapping[str, np.ndarray]) -> None:
        frame_node = master.GetNthDataNode(frame)
        grid = reference_grid(frame_node)
        frame_tags = dict(provenance or {}, frame=frame)
        for name in names:
            mask = masks.get(name)
            if mask is None:
                if target is not segmentation_node:
                    continue  # an existing frame: keep what it has
                _remove_tags(target, ids[name])
                target.GetSegmentation().ClearSegment(ids[name])
                continue
            write_mask_to_segment(
                target, ids[name], mask, grid,
                provenance=frame_tags if name in masks else None,
            )

    current = min(max(0, browser_node.GetSelectedItemNumber()), n_frames - 1)
    seq = browser_node.GetSequenceNode(segmentation_node)
    if seq is None:  # a new sequence: every frame gets a segmentation, the current one last
        seq = segmentation_node.GetScene().AddNewNodeByClass(
            "vtkMRMLSequenceNode", f"{segmentation_node.GetName()}-seq"
        )
        seq.SetIndexName(master.GetIndexName())
        seq.SetIndexUnit(master.GetIndexUnit())
        seq.SetIndexType(master.GetIndexType())
        for frame in [n for n in range(n_frames) if n != current] + [current]:
            write_frame(segmentation_node, frame, per_frame.get(frame, {}))
            seq.SetDataNodeAtValue(segmentation_node, master.GetNthIndexValue(frame))
        browser_node.AddSynchronizedSequenceNode(seq)
        browser_node.AddProxyNode(segmentation_node, seq, False)
    else:  # update the stored segmentations of the given frames; the others are kept
        for frame, masks in per_frame.items():
            value = master.GetNthIndexValue(frame)
            stored = seq.GetDataNodeAtValue(value)
            if stored is None:
                seq.SetDataNodeAtValue(segmentation_node, value)
                stored = seq.GetDataNodeAtValue(value)
            for name in names:
                if find_segment(stored.GetSegmentation(), ids[name]) is None:
                    color = segmentation.GetSegment(ids[name]).GetColor()
                    stored.GetSegmentation().AddEmptySegment(ids[name], name, list(color))
            write_frame(stored, frame, masks)
        if current in per_frame:
            write_frame(segmentation_node, current, per_frame[current])
        seq.Modified()
    browser_node.SetSaveChanges(seq, True)
    return seq


def _remove_tags(segmentation_node: Any, segment_id: str) -> None:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    keys = get_tag(segment, TAG_PREFIX + KEYS_TAG)
    for key in (keys.split(",") if keys else []) + [KEYS_TAG]:
        segment.RemoveTag(TAG_PREFIX + key)
