"""The one writer: every operation's masks reach the scene here.

Operations return typed writes (:class:`RegionWrite`: a mask over a region of the reference grid,
such as one slice or the propagated slab; :class:`SequenceWrite`: the masks of a tracked sequence)
and :func:`write` owns what every write needs:

* the Segment Editor's masking (editable area, intensity range, overwrite mode) for region writes
  (:mod:`.masking`), checked before any model work by :func:`check_masking`;
* nodes still in the scene: a node removed (or a scene closed) while the model ran is refused
  with one clear error and nothing is written (:func:`require_in_scene`);
* one undo step for the whole run (:mod:`.history`), restored if any write fails;
* provenance: the run's tags (the engine's provenance) plus each write's own, as segment tags;
* the writes themselves: region writes into segments (:mod:`.segments`), sequence writes into a
  segmentation sequence synchronised with the browser (:mod:`.sequences`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from . import history
from .masking import EditorMasking, apply_masking, check_masking_applies, intensity_source
from .nodes import Extent
from .segments import write_mask_to_segment
from .sequences import write_tracked_masks_to_sequence

#: Segment colours (RGB 0..1) given to boxes in order; a box's own ROI colour is not used
#: because ROIs of one scene usually share the default colour.
PALETTE = (
    (0.95, 0.45, 0.40), (0.35, 0.75, 0.95), (0.55, 0.85, 0.40), (0.95, 0.80, 0.30),
    (0.75, 0.50, 0.90), (0.30, 0.85, 0.75), (0.95, 0.55, 0.80), (0.60, 0.60, 0.95),
)


def colour(index: int) -> tuple[float, float, float]:
    """The colour of the ``index``-th box's segment."""
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True, eq=False)
class RegionWrite:
    """``mask`` (bool ``K x J x I``) over ``extent`` (inclusive ``i0, i1, j0, j1, k0, k1``) of the
    reference grid into ``segment`` (an id or name; created with ``color`` and ``terminology`` if
    missing). Voxels of the segment outside the extent are kept. ``provenance`` are this write's
    own tags (``None``: the segment's tags stay as they are)."""

    segment: str
    mask: np.ndarray
    extent: Extent
    color: Optional[tuple[float, float, float]] = None
    terminology: Optional[str] = None
    provenance: Optional[Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SequenceWrite:
    """Per-frame masks ``masks[frame] = {segment name: mask}`` of a tracked sequence, written into
    the segmentation sequence that ``browser`` synchronises with the output node. ``masks`` may
    compute each frame when it is read (so a long sequence is never held unpacked at once);
    ``names`` are the segments in box order (colours follow it)."""

    browser: Any
    masks: Mapping[int, Mapping[str, np.ndarray]]
    names: Sequence[str]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    terminology: Optional[str] = None


@dataclass
class Written:
    """What :func:`write` wrote: segment ids by name, and the segmentation sequence (if any)."""

    segment_ids: dict[str, str] = field(default_factory=dict)
    sequence: Any = None


def check_masking(editor_node: Any, rgb: bool, reference: Any = None) -> EditorMasking:
    """The Segment Editor's masking settings of ``editor_node`` (``None``: none), refused where
    they cannot apply (an intensity range on an RGB frame, or of a source volume on another grid
    than ``reference``): called before any model work."""
    masking = EditorMasking.from_editor_node(editor_node)
    check_masking_applies(masking, rgb)
    if not rgb:
        intensity_source(masking, reference, None)
    return masking


def require_in_scene(node: Any, what: str) -> None:
    """Refuse a node that left its scene (removed, or its scene closed) since the run read it."""
    if node is not None and node.GetScene() is None:
        raise InvalidInputError(
            f"the {what} '{node.GetName()}' was removed from the scene (or the scene was closed)"
            " while PolypSAM ran: nothing was written")


def write(
    segmentation_node: Any,
    writes: Sequence[RegionWrite | SequenceWrite],
    *,
    reference: Any = None,
    source: Optional[np.ndarray] = None,
    editor_node: Any = None,
    provenance: Optional[Mapping[str, Any]] = None,
) -> Written:
    """Write ``writes`` as one undo step; on any failure the step is restored (nothing changed).

    Region writes are on ``reference``'s grid (a volume node) and follow the Segment Editor's
    masking of ``editor_node``; ``source`` are the reference's voxels (an intensity range applies
    to the Segment Editor's source volume's voxels, which are the reference's unless it is set
    to another volume on the same grid).
    ``provenance`` is added to every write's own tags. A run writes regions or one sequence.
    """
    if not writes:  # nothing to write: no undo step either
        return Written()
    require_in_scene(segmentation_node, "output segmentation")
    require_in_scene(reference, "input")
    for w in writes:
        require_in_scene(getattr(w, "browser", None), "sequence browser")
    base = dict(provenance or {})
    sequences = [w for w in writes if isinstance(w, SequenceWrite)]
    if sequences:
        if len(sequences) != len(writes) or len(sequences) > 1:
            raise ValueError("a run writes one sequence, or regions")
        return _write_sequence(segmentation_node, sequences[0], base)
    masking = check_masking(editor_node, rgb=source is None)
    source = intensity_source(masking, reference, source)  # the Segment Editor's source volume's
    final: list[RegionWrite] = []
    for w in writes:
        mask, others = apply_masking(segmentation_node, w.segment, w.mask, w.extent, reference,
                                     masking, source)
        tags = None if w.provenance is None else {**base, **w.provenance}
        final.append(RegionWrite(w.segment, mask, w.extent, w.color, w.terminology, tags))
        final += [RegionWrite(sid, crop, w.extent, provenance=None) for sid, crop in others]
    written = Written()
    history.save_state_for_undo(segmentation_node)
    try:
        for w in final:
            written.segment_ids[w.segment] = write_mask_to_segment(
                segmentation_node, w.segment, w.mask, reference, region=w.extent, color=w.color,
                provenance=w.provenance, terminology=w.terminology)
    except Exception:
        history.undo(segmentation_node)
        raise
    return written


def _write_sequence(segmentation_node: Any, w: SequenceWrite, base: dict) -> Written:
    step = history.save_sequence_state_for_undo(segmentation_node, w.browser)
    try:
        sequence = write_tracked_masks_to_sequence(
            w.browser, segmentation_node, w.masks, names=list(w.names),
            colors={name: colour(i) for i, name in enumerate(w.names)},
            provenance={**base, **w.provenance}, terminology=w.terminology, undo=step)
    except Exception:
        history.undo(segmentation_node)
        raise
    return Written({name: name for name in w.names}, sequence)
