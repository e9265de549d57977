"""The MRML adapter: Slicer nodes <-> NumPy + geometry. The only package that imports ``slicer``.

No Qt: everything here runs in desktop Slicer and in ``slicer-core`` (plain MRML in Python).
Data flows one way through it, one module per step:

* :mod:`.roi` turns a markups ROI into the voxel box of a volume (and a 2-D box per slice);
* :mod:`.volumes` reads pixels plus their grid from volumes, frames and sequences;
* :mod:`.segments` writes masks into segments over the changed region only, with provenance
  tags, all-or-nothing, and reads segments back as labels;
* :mod:`.sequences` writes tracked masks as a segmentation sequence;
* :mod:`.history` is the one room for undo steps (and hooks for the Segment Editor's own undo);
* :mod:`.jobs`, :mod:`.operations`, :mod:`.tracking` and :mod:`.scene` are what the module's
  buttons do (read → compute → write); :mod:`.exporting` the Export button;
  :mod:`.video_files` Load video; :mod:`.dependencies` the first-use installs;
* :mod:`.clicks` maps markups point lists to pixel clicks on a volume's slices,
  :mod:`.masking` applies the Segment Editor's masking settings to writes, and
  :mod:`.interactive` holds the click tools' operations (clicks, candidates, start from segment);
  :mod:`.video_clicks` records the frame each click on a video was placed on and tracks a
  segment through the video with them.

Coordinates: "world" is Slicer's RAS after all parent transforms. A volume's IJK-to-world matrix
is its parent (linear) transform times its IJKToRAS matrix; :func:`volume_from_node` hardens the
transform into the returned :class:`~polypsam.geometry.VolumeGeometry`, so a geometry always
describes the grid in world coordinates, and writing masks maps world into the segmentation
node's own coordinates (through the inverse of its parent transform).

The names below are the package's public API (``from polypsam import mrml``).
"""

from .clicks import Click, clicks_from_markups
from .masking import EditorMasking
from .nodes import Extent, ijk_to_world
from .roi import VoxelBox, roi_to_voxel_box
from .segments import (
    TAG_PREFIX, export_segment_labelmap, read_provenance, write_mask_to_segment,
)
from .sequences import write_tracked_masks_to_sequence
from .history import (
    add_before_write_hook, forget_undo_history, redo, remove_before_write_hook,
    save_sequence_state_for_undo, save_state_for_undo, undo, undo_history_count,
)
from .volumes import (
    SequenceFrames, SequenceVolumes, frame_from_vector_node, frames_from_sequence,
    sequence_holds_volumes, volume_from_node, volumes_from_sequence,
)

__all__ = [
    "Click", "clicks_from_markups", "EditorMasking", "Extent", "ijk_to_world", "VoxelBox", "roi_to_voxel_box", "TAG_PREFIX",
    "export_segment_labelmap", "read_provenance", "write_mask_to_segment",
    "write_tracked_masks_to_sequence", "add_before_write_hook", "forget_undo_history", "redo",
    "remove_before_write_hook", "save_sequence_state_for_undo", "save_state_for_undo", "undo",
    "undo_history_count", "SequenceFrames", "SequenceVolumes", "frame_from_vector_node",
    "frames_from_sequence", "sequence_holds_volumes", "volume_from_node", "volumes_from_sequence",
]
