"""The MRML adapter: Slicer nodes <-> NumPy + geometry. The only package that imports ``slicer``.

No Qt: everything here runs in desktop Slicer and in ``slicer-core`` (plain MRML in Python).
Data flows one way through it, one module per step:

* :mod:`.roi` turns a markups ROI into the voxel box of a volume and into its box prompt on each
  slice (:class:`BoxPrompt`: the one place a box becomes a prompt); :mod:`.clicks` and
  :mod:`.video_clicks` turn markups point lists into pixel clicks on slices or video frames;
* :mod:`.volumes` reads pixels plus their grid from volumes, frames and sequences;
* :mod:`.shapes` holds what every operation shares: one :class:`Request` (read once from the
  module's parameter node), one :class:`RunContext` (worker, progress, cancel), a plan, one
  :class:`Result`;
* :mod:`.operations` (Segment, Propagate, Refine), :mod:`.tracking` (Track, and clicks through a
  video) and :mod:`.interactive` (the click tools) read the scene and return plans: model work
  on plain arrays, then typed writes;
* :mod:`.writer` is the one writer: the Segment Editor's masking (:mod:`.masking`), one undo step
  (:mod:`.history`), provenance tags, region writes (:mod:`.segments`) and segmentation
  sequences (:mod:`.sequences`);
* :mod:`.session` is the one entry point (:func:`check_inputs`, then :func:`start`/:func:`run`)
  for every button and click tool, and :class:`Session` the state the click tools keep between
  runs;
* :mod:`.shown` keeps the slice a slice view shows encoded in the background (answers before
  the click), :mod:`.preferences` keeps the engine choices in the application settings;
* :mod:`.scene` sets the scene up (Add box, click tools' place mode, a new output segmentation);
  :mod:`.exporting` is the Export button, :mod:`.video_files` Load video, :mod:`.dependencies`
  the first-use installs, :mod:`.scenarios` the module's self-test scenarios.

Coordinates: "world" is Slicer's RAS after all parent transforms. A volume's IJK-to-world matrix
is its parent (linear) transform times its IJKToRAS matrix; :func:`volume_from_node` hardens the
transform into the returned :class:`~polypsam.geometry.VolumeGeometry`, so a geometry always
describes the grid in world coordinates, and writing masks maps world into the segmentation
node's own coordinates (through the inverse of its parent transform).

The names below are the package's public API (``from polypsam import mrml``).
"""

from .clicks import Click, click_lists, clicks_from_markups
from .history import (
    add_before_write_hook, forget_undo_history, redo, remove_before_write_hook,
    save_sequence_state_for_undo, save_state_for_undo, undo, undo_history_count,
)
from .masking import EditorMasking
from .preferences import engine_settings, remember_engine_choices, with_engine_choices
from .nodes import Extent, ijk_to_world
from .roi import FRAME_ATTRIBUTE, BoxPrompt, VoxelBox, box_prompts, roi_to_voxel_box
from .scene import box_rows, new_segmentation, place_box, place_clicks
from .segments import (
    TAG_PREFIX, export_segment_labelmap, read_provenance, segment_names, write_mask_to_segment,
)
from .sequences import write_tracked_masks_to_sequence
from .session import PLANS, Run, Session, check_inputs, run, start
from .shown import BackgroundEncoding, ShownImage, shown_image, shown_slice_index, view_node
from .shapes import (
    ACTIONS, BOX_ACTIONS, CLICK_ACTIONS, MODEL_FREE_ACTIONS, Request, Result, RunContext,
    available_actions,
)
from .volumes import (
    SequenceFrames, SequenceVolumes, frame_from_vector_node, frames_from_sequence, intensity_for,
    sequence_holds_volumes, slice_voxels, volume_from_node, volume_voxels, volumes_from_sequence,
)

__all__ = [
    "Click", "click_lists", "clicks_from_markups", "add_before_write_hook", "forget_undo_history",
    "redo", "remove_before_write_hook", "save_sequence_state_for_undo", "save_state_for_undo",
    "undo", "undo_history_count", "EditorMasking", "Extent", "ijk_to_world", "FRAME_ATTRIBUTE",
    "BoxPrompt", "VoxelBox", "box_prompts", "roi_to_voxel_box", "box_rows", "new_segmentation", "place_box",
    "place_clicks", "TAG_PREFIX", "export_segment_labelmap", "read_provenance", "segment_names",
    "write_mask_to_segment", "write_tracked_masks_to_sequence", "PLANS", "Run", "Session",
    "check_inputs", "run",
    "start", "ACTIONS", "BOX_ACTIONS", "CLICK_ACTIONS", "MODEL_FREE_ACTIONS", "Request", "Result",
    "RunContext", "available_actions", "SequenceFrames", "SequenceVolumes",
    "frame_from_vector_node", "frames_from_sequence", "intensity_for", "sequence_holds_volumes",
    "volume_from_node", "volumes_from_sequence", "engine_settings",
    "remember_engine_choices", "with_engine_choices",
    "BackgroundEncoding", "ShownImage", "shown_image", "shown_slice_index", "view_node",
    "slice_voxels", "volume_voxels",
]
