"""What the PolypSAM buttons do, without Qt: Slicer nodes in, an engine in the middle, segments out.

Each operation reads the input through :mod:`polypsam.mrml`, runs an
:class:`polypsam.engine.Engine` (given, never built here) directly or through
:mod:`polypsam.propagation`, and only when every mask is computed saves an undo state and
writes the results. A failed or cancelled run therefore leaves the segmentation untouched; a
failure while writing restores the saved state.

``progress(done, total, message)`` is called at frame boundaries and ``cancel`` (a
:class:`polypsam.engine.CancelToken`) is checked there. The Slicer module's logic passes a
progress dialog; tests and scripts can pass nothing.

Every operation has three phases: read the scene, compute, write the scene. Only the compute
phase runs the engine, and it touches no MRML object, so ``background`` (a callable that runs a
function and returns its result, e.g. :func:`polypsam.background.run_in_worker` bound to a
UI-pumping callback) can move it to a worker thread: Slicer stays responsive during the model
work, and reads and writes stay on the calling thread. ``progress`` is then called from the
worker (use a :class:`polypsam.background.ProgressRelay`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

ProgressFn = Callable[[int, int, str], None]
#: Runs the compute phase: ``background(fn)`` returns ``fn()`` (possibly from another thread).
Background = Callable[[Callable[[], Any]], Any]

#: Segment colours (RGB 0..1) given to boxes in order; a box's own ROI colour is not used
#: because ROIs of one scene usually share the default colour.
PALETTE = (
    (0.95, 0.45, 0.40), (0.35, 0.75, 0.95), (0.55, 0.85, 0.40), (0.95, 0.80, 0.30),
    (0.75, 0.50, 0.90), (0.30, 0.85, 0.75), (0.95, 0.55, 0.80), (0.60, 0.60, 0.95),
)


#: Called with the segmentation node right after PolypSAM saved its own undo state and before it
#: writes: the Slicer widget registers one that lets the Segment Editor's Undo revert the write.
BeforeWriteHook = Callable[[Any], None]
_before_write_hooks: list[BeforeWriteHook] = []


def add_before_write_hook(hook: BeforeWriteHook) -> None:
    if hook not in _before_write_hooks:
        _before_write_hooks.append(hook)


def remove_before_write_hook(hook: BeforeWriteHook) -> None:
    if hook in _before_write_hooks:
        _before_write_hooks.remove(hook)


def _save_undo_state(segmentation_node: Any) -> None:
    """PolypSAM's own undo snapshot, then every registered hook (e.g. the Segment Editor's)."""
    from polypsam import mrml

    mrml.save_state_for_undo(segmentation_node)
    for hook in list(_before_write_hooks):
        hook(segmentation_node)


@dataclass
class RunResult:
    """What one operation wrote: segment ids per box name, and a one-line summary."""

    segment_ids: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    scores: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Scene set-up (Add box, new output segmentation)
# --------------------------------------------------------------------------------------------


FRAME_ATTRIBUTE = "PolypSAM.frame"  # set on an ROI placed while a sequence browser showed a frame


def place_box(scene: Any, selection_node: Any, interaction_node: Any, name: str = "Polyp",
              frame: Optional[int] = None) -> Any:
    """A new ROI with the slice views in place mode for it: the user's next click-drag draws it.

    ``frame`` (the sequence browser's current item) is remembered on the ROI for Track/Refine.
    """
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(name))
    roi.CreateDefaultDisplayNodes()
    if frame is not None:
        roi.SetAttribute(FRAME_ATTRIBUTE, str(int(frame)))
    selection_node.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsROINode")
    selection_node.SetActivePlaceNodeID(roi.GetID())
    interaction_node.SetPlaceModePersistence(0)
    interaction_node.SetCurrentInteractionMode(interaction_node.Place)
    return roi


def new_segmentation(scene: Any, reference_volume: Any = None, name: str = "PolypSAM") -> Any:
    """A new segmentation node whose reference geometry is ``reference_volume`` (if given)."""
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return segmentation


def _noop_progress(done: int, total: int, message: str) -> None:
    del done, total, message


def _check_cancel(cancel) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def _compute(work: Callable[[], Any], background: Optional[Background]) -> Any:
    """Run the compute phase here or through ``background``."""
    return work() if background is None else background(work)


def intensity_for(node: Any, preset: str):
    """The intensity policy for a scalar volume: a preset, percentiles or the display window.

    ``"display"`` (default) reads the volume's current window/level from its display node; the
    voxels are never modified. Vector (RGB) inputs return ``None`` (passthrough).
    """
    from polypsam.preprocess import Percentile, Window, parse_intensity

    if node is None or node.IsA("vtkMRMLVectorVolumeNode"):
        return None
    preset = (preset or "display").strip().lower()
    if preset in ("display", "auto", ""):
        display = node.GetDisplayNode()
        if display is not None and hasattr(display, "GetWindow") and display.GetWindow() > 0:
            return Window(float(display.GetLevel()), float(display.GetWindow()))
        return Percentile()
    return parse_intensity(preset)


def _require_rois(rois: Sequence[Any]) -> list[Any]:
    from polypsam.errors import InvalidInputError

    rois = [r for r in rois if r is not None]
    if not rois:
        raise InvalidInputError("no box: add a box ROI (Add box) and check it in the list")
    return rois


def _require_input(node: Any) -> Any:
    from polypsam.errors import InvalidInputError

    if node is None:
        raise InvalidInputError("no input image selected")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(f"'{node.GetName()}' is a label map; choose an image as input")
    return node


def _require_output(node: Any) -> Any:
    from polypsam.errors import InvalidInputError

    if node is None:
        raise InvalidInputError("no output segmentation selected")
    return node


def _segment_name(roi: Any) -> str:
    return roi.GetName() or "Polyp"


def _color(index: int) -> tuple[float, float, float]:
    return PALETTE[index % len(PALETTE)]


def _write_all(segmentation_node: Any, writes: list[dict], reference: Any) -> RunResult:
    """Save an undo state, then write every mask on ``reference``'s grid; restore the state if
    any write fails."""
    from polypsam import mrml

    result = RunResult()
    _save_undo_state(segmentation_node)
    try:
        for item in writes:
            name = item.pop("segment")
            result.segment_ids[name] = mrml.write_mask_to_segment(
                segmentation_node, name, reference=reference, **item
            )
    except Exception:
        mrml.undo(segmentation_node)
        raise
    return result


# --------------------------------------------------------------------------------------------
# Segment (2-D) and Refine
# --------------------------------------------------------------------------------------------


def _image_and_boxes(input_node: Any, rois: Sequence[Any], key_slice: int):
    """``(is_vector, [(roi, k, Box)])``: the slice and 2-D box prompt of each ROI."""
    from polypsam import mrml

    vector = input_node.IsA("vtkMRMLVectorVolumeNode")
    prompts = []
    for roi in rois:
        vb = mrml.roi_to_voxel_box(roi, input_node)
        k = 0 if vector else (key_slice if key_slice >= 0 else vb.key_slice)
        prompts.append((roi, k, vb.box_on_slice(k) if vb.k0 <= k <= vb.k1 else vb.box()))
    return vector, prompts


def segment_2d(
    engine: Any,
    input_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    key_slice: int = -1,
    window_preset: str = "display",
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """One segment per ROI from a 2-D box prompt on one slice (volume) or on an RGB frame.

    The mask replaces the segment on that slice only (the changed region); other slices and
    other segments are kept.
    """
    from polypsam import mrml

    progress = progress or _noop_progress
    input_node = _require_input(input_node)
    segmentation_node = _require_output(segmentation_node)
    rois = _require_rois(rois)
    vector, prompts = _image_and_boxes(input_node, rois, key_slice)
    if vector:
        volume_array = mrml.frame_from_vector_node(input_node)[None]
        intensity = None
    else:
        volume_array = mrml.volume_from_node(input_node).array
        intensity = intensity_for(input_node, window_preset)
    height, width = volume_array.shape[1:3]
    slices = sorted({k for _, k, _ in prompts})
    # Scene reads stay here; the compute phase below sees plain values only.
    items = [(k, rois.index(roi), _segment_name(roi), roi.GetID(), box) for roi, k, box in prompts]
    info = engine.info

    def compute() -> tuple[list[dict], dict[str, float]]:
        writes, scores = [], {}
        for n, k in enumerate(slices):
            _check_cancel(cancel)
            progress(n, len(slices), f"segmenting slice {k}")
            here = [item for item in items if item[0] == k]
            results = engine.segment_2d(volume_array[k], [item[4] for item in here],
                                        intensity=intensity)
            for (_, index, name, roi_id, box), res in zip(here, results):
                scores[name] = float(res.score)
                writes.append(dict(
                    segment=name,
                    mask_kji=np.asarray(res.mask, dtype=bool)[None],
                    region=(0, width - 1, 0, height - 1, k, k),
                    color=_color(index),
                    engine_info=info,
                    provenance={"operation": "segment", "box": box, "key_slice": k,
                                "roi": roi_id, "score": f"{res.score:.4f}"},
                ))
        return writes, scores

    writes, scores = _compute(compute, background)
    _check_cancel(cancel)
    progress(len(slices), len(slices), "writing segments")
    result = _write_all(segmentation_node, writes, input_node)
    result.scores = scores
    result.summary = f"segmented {len(writes)} box(es) on slice(s) {', '.join(map(str, slices))}"
    return result


# --------------------------------------------------------------------------------------------
# Propagate (3-D through a volume)
# --------------------------------------------------------------------------------------------


def _frame_of(roi: Any, default: int) -> int:
    value = roi.GetAttribute(FRAME_ATTRIBUTE) if hasattr(roi, "GetAttribute") else None
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def propagate(
    engine: Any,
    input_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    key_slice: int = -1,
    slice_range: tuple[int, int] = (-1, -1),
    window_preset: str = "display",
    refinement_rois: Sequence[Any] = (),
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """Segment each ROI on its key slice and propagate through its slice range (both ways).

    Key slice: the override if >= 0, else the slice the box was drawn on (the middle of its
    extent along K). Slice range: the override where >= 0, else the box's extent along K,
    widened to cover the ``refinement_rois`` (extra boxes on other slices for the first ROI's
    object, see :func:`refine`). The segment is replaced inside the written slices only.
    """
    from polypsam import mrml, propagation
    from polypsam.engine import FramePrompt
    from polypsam.errors import InvalidInputError

    progress = progress or _noop_progress
    input_node = _require_input(input_node)
    if input_node.IsA("vtkMRMLVectorVolumeNode"):
        raise InvalidInputError("Propagate needs a scalar volume; use Segment for an RGB frame"
                                " or Track for a video")
    segmentation_node = _require_output(segmentation_node)
    rois = _require_rois(rois)
    volume = mrml.volume_from_node(input_node)
    depth, height, width = volume.shape
    intensity = intensity_for(input_node, window_preset)
    refinements = []
    refine_slices = []
    for roi in refinement_rois:
        vb = mrml.roi_to_voxel_box(roi, input_node)
        refinements.append(FramePrompt(frame=vb.key_slice, obj_id=1, box=vb.box_on_slice(vb.key_slice)))
        refine_slices.append(vb.key_slice)
    jobs = []  # scene reads: one (key, k0, k1, box, name, roi id) per ROI
    for index, roi in enumerate(rois):
        vb = mrml.roi_to_voxel_box(roi, input_node)
        k0 = slice_range[0] if slice_range[0] >= 0 else vb.k0
        k1 = slice_range[1] if slice_range[1] >= 0 else vb.k1
        extra = refine_slices if index == 0 else []
        k0, k1 = min([k0, k1, *extra]), max([k0, k1, *extra])
        k0, k1 = max(0, k0), min(depth - 1, k1)
        key = key_slice if key_slice >= 0 else vb.key_slice
        if not k0 <= key <= k1:
            raise InvalidInputError(f"key slice {key} is outside the slice range {k0}..{k1}")
        box = vb.box_on_slice(key) if vb.k0 <= key <= vb.k1 else vb.box()
        jobs.append((key, k0, k1, box, _segment_name(roi), roi.GetID()))
    info = engine.info

    def compute() -> list[dict]:
        writes = []
        for index, (key, k0, k1, box, name, roi_id) in enumerate(jobs):
            _check_cancel(cancel)

            def box_progress(done: int, total: int, _index=index) -> None:
                progress(_index * 1000 + int(1000 * done / max(total, 1)), len(jobs) * 1000,
                         f"box {_index + 1}/{len(jobs)}: slice {done}/{total}")

            out = propagation.propagate(engine, volume, [box], (k0, k1), key,
                                        refinements=refinements if index == 0 else (),
                                        intensity=intensity, cancel=cancel, progress=box_progress)
            s0, s1 = (int(v) for v in out.slices)
            refined = bool(refinements) and index == 0
            writes.append(dict(
                segment=name, mask_kji=np.asarray(out.labelmap.array[s0:s1 + 1] == 1),
                region=(0, width - 1, 0, height - 1, s0, s1), color=_color(index),
                engine_info=info,
                provenance={"operation": "refine" if refined else "propagate",
                            "box": box, "key_slice": key, "slice_range": (s0, s1),
                            "refinement_slices": tuple(refine_slices) if index == 0 else (),
                            "score": f"{out.scores.get(1, float('nan')):.4f}", "roi": roi_id},
            ))
        return writes

    writes = _compute(compute, background)
    _check_cancel(cancel)
    progress(len(rois) * 1000, len(rois) * 1000, "writing segments")
    result = _write_all(segmentation_node, writes, input_node)
    result.summary = f"propagated {len(writes)} box(es)"
    return result


# --------------------------------------------------------------------------------------------
# Track (through a sequence)
# --------------------------------------------------------------------------------------------


def track(
    engine: Any,
    browser_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    refinement_rois: Sequence[Any] = (),
    window_preset: str = "display",
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """Track the ROIs through the whole sequence, both ways from the frame they were drawn on.

    An ROI's frame is its ``PolypSAM.frame`` attribute (set by Add box), else the browser's
    current frame. ``refinement_rois`` are extra boxes for the first ROI's object on other
    frames. Writes one segmentation per frame into a segmentation sequence synchronised to the
    browser (the output node becomes its proxy). Nothing is written unless every frame succeeded.
    A sequence of 3-D volumes (4-D CT) is tracked through time by :func:`_track_volumes`;
    ``window_preset`` applies there.
    """
    from polypsam import mrml, propagation
    from polypsam.engine import FramePrompt
    from polypsam.errors import InvalidInputError

    progress = progress or _noop_progress
    if browser_node is None:
        raise InvalidInputError("no sequence browser selected: Track needs a video sequence")
    segmentation_node = _require_output(segmentation_node)
    rois = _require_rois(rois)
    if mrml.sequence_holds_volumes(browser_node):
        return _track_volumes(engine, browser_node, rois, segmentation_node, list(refinement_rois),
                              window_preset, progress, cancel, background)
    frames = mrml.frames_from_sequence(browser_node)
    proxy = _sequence_proxy(browser_node, browser_node.GetMasterSequenceNode())
    current = max(0, int(browser_node.GetSelectedItemNumber()))
    frame_index = _frame_of(rois[0], current)
    boxes = [mrml.roi_to_voxel_box(roi, proxy).box_on_slice(0) for roi in rois]
    refinements = [
        FramePrompt(frame=_frame_of(roi, current), obj_id=1,
                    box=mrml.roi_to_voxel_box(roi, proxy).box_on_slice(0))
        for roi in refinement_rois
    ]
    names = [_segment_name(roi) for roi in rois]
    total = len(frames)

    def frame_progress(done: int, count: int) -> None:
        progress(done, count or total, f"tracking: frame {done}/{count or total}")

    # The worker reads frames from the sequence's data nodes (voxel arrays, read-only) while the
    # modal progress dialog keeps the scene unchanged; everything else was read above.
    out = _compute(lambda: propagation.track(engine, frames, frame_index, boxes,
                                             refinements=refinements, cancel=cancel,
                                             progress=frame_progress), background)
    _check_cancel(cancel)
    per_frame = {
        t: {name: out.labels[t] == label for label, name in enumerate(names, start=1)}
        for t in range(out.labels.shape[0])
    }
    progress(total, total, "writing the segmentation sequence")
    _save_undo_state(segmentation_node)
    seq = mrml.write_tracked_masks_to_sequence(
        browser_node, segmentation_node, per_frame,
        colors={name: _color(i) for i, name in enumerate(names)},
        engine_info=engine.info,
        provenance={"operation": "refine" if refinements else "track", "start_frame": frame_index,
                    "boxes": ";".join(",".join(f"{v:g}" for v in b.to_list()) for b in boxes),
                    "refinement_frames": tuple(p.frame for p in refinements)},
    )
    result = RunResult(segment_ids={name: name for name in names})
    result.summary = f"tracked {len(names)} box(es) through {len(per_frame)} frame(s) into {seq.GetName()}"
    return result


def _sequence_proxy(browser_node: Any, master: Any) -> Any:
    from polypsam.errors import InvalidInputError

    proxy = browser_node.GetProxyNode(master)
    if proxy is None:
        raise InvalidInputError(f"sequence browser '{browser_node.GetName()}' shows no frame")
    return proxy


def _mask_box(mask: np.ndarray) -> Any:
    """The bounding box (x = I, y = J) of a non-empty 2-D mask."""
    from polypsam.geometry import Box

    rows, cols = np.nonzero(mask)
    return Box(float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))


def _track_volumes(engine, browser_node, rois, segmentation_node, refinement_rois, window_preset,
                   progress, cancel, background) -> RunResult:
    """Track ROIs through the time points of a 4-D sequence (one 3-D volume per time point).

    Per ROI: its key slice (the slice it was drawn on) is tracked through time with SAM2's
    video predictor from the time point the ROI was drawn on; at every time point where the
    object is found, the bounding box of the tracked key-slice mask prompts a 3-D propagation
    through the ROI's slice range of that time point's volume. A time point where the object is
    lost gets an empty segment. ``refinement_rois`` add boxes for the first ROI on other time
    points (on its key slice).
    """
    from polypsam import mrml, propagation
    from polypsam.engine import FramePrompt

    volumes = mrml.volumes_from_sequence(browser_node)
    proxy = _sequence_proxy(browser_node, volumes.sequence_node)
    depth = volumes.shape[0]
    n_times = len(volumes)
    current = max(0, int(browser_node.GetSelectedItemNumber()))
    preset = intensity_for(proxy, window_preset)
    jobs = []
    for index, roi in enumerate(rois):
        vb = mrml.roi_to_voxel_box(roi, proxy)
        k0, k1, key = max(0, vb.k0), min(depth - 1, vb.k1), vb.key_slice
        refinements = []
        for extra in refinement_rois if index == 0 else []:
            evb = mrml.roi_to_voxel_box(extra, proxy)
            box = evb.box_on_slice(key) if evb.k0 <= key <= evb.k1 else evb.box()
            refinements.append(FramePrompt(frame=_frame_of(extra, current), obj_id=1, box=box))
        jobs.append(dict(name=_segment_name(roi), time=_frame_of(roi, current), key=key, k0=k0,
                         k1=k1, box=vb.box_on_slice(key), refinements=refinements))
    steps = len(jobs) * 2 * n_times

    def compute() -> dict[int, dict[str, np.ndarray]]:
        per_time: dict[int, dict[str, np.ndarray]] = {t: {} for t in range(n_times)}
        for index, job in enumerate(jobs):
            base = index * 2 * n_times
            # a window stays; percentiles are taken once, over the ROI's slices where it was drawn
            intensity = propagation.volume_intensity(
                volumes[job["time"]][job["k0"]:job["k1"] + 1], preset)
            tracked = propagation.track(
                engine, volumes.slices(job["key"]), job["time"], [job["box"]],
                refinements=job["refinements"], intensity=intensity, cancel=cancel,
                progress=lambda done, total, _b=base, _i=index: progress(
                    _b + done, steps, f"box {_i + 1}/{len(jobs)}: key slice through time {done}/{total}"))
            for t in range(n_times):
                _check_cancel(cancel)
                found = tracked.labels[t] == 1
                if found.any():
                    out = propagation.propagate(engine, volumes[t], [_mask_box(found)],
                                                (job["k0"], job["k1"]), job["key"],
                                                intensity=intensity, cancel=cancel)
                    per_time[t][job["name"]] = out.labelmap.array == 1
                progress(base + n_times + t + 1, steps,
                         f"box {index + 1}/{len(jobs)}: time point {t + 1}/{n_times} in 3-D")
        return per_time

    per_time = _compute(compute, background)
    _check_cancel(cancel)
    names = [job["name"] for job in jobs]
    for name in names:  # a name with no mask anywhere still gets its (empty) segment
        per_time.setdefault(0, {}).setdefault(name, np.zeros(volumes.shape, dtype=bool))
    progress(steps, steps, "writing the segmentation sequence")
    _save_undo_state(segmentation_node)
    first = jobs[0]
    seq = mrml.write_tracked_masks_to_sequence(
        browser_node, segmentation_node, per_time,
        colors={name: _color(i) for i, name in enumerate(names)},
        engine_info=engine.info,
        provenance={"operation": "refine" if first["refinements"] else "track",
                    "start_frame": first["time"], "key_slice": first["key"],
                    "slice_range": (first["k0"], first["k1"]),
                    "boxes": ";".join(",".join(f"{v:g}" for v in job["box"].to_list()) for job in jobs),
                    "refinement_frames": tuple(p.frame for p in first["refinements"])},
    )
    result = RunResult(segment_ids={name: name for name in names})
    result.summary = (f"tracked {len(names)} box(es) through {n_times} time point(s) in 3-D"
                      f" into {seq.GetName()}")
    return result


def refine(
    engine: Any,
    input_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    browser_node: Any = None,
    key_slice: int = -1,
    slice_range: tuple[int, int] = (-1, -1),
    window_preset: str = "display",
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """Re-run the first ROI's object with the other ROIs as extra boxes on other slices/frames.

    * a scalar volume: propagation with the extra boxes as conditioning slices;
    * a sequence (browser given, and the input is none, an RGB frame or the browser's proxy):
      tracking with the extra boxes as conditioning frames (time points of a 4-D sequence);
    * a single RGB frame: each box re-segments the first ROI's segment in 2-D.
    """
    rois = _require_rois(rois)
    first, extra = rois[0], list(rois[1:])
    if browser_node is not None and (input_node is None or input_node.IsA("vtkMRMLVectorVolumeNode")
                                     or browser_node.IsProxyNodeID(input_node.GetID())):
        return track(engine, browser_node, [first], segmentation_node, refinement_rois=extra,
                     window_preset=window_preset, progress=progress, cancel=cancel,
                     background=background)
    input_node = _require_input(input_node)
    if not input_node.IsA("vtkMRMLVectorVolumeNode"):
        return propagate(engine, input_node, [first], segmentation_node, key_slice=key_slice,
                         slice_range=slice_range, window_preset=window_preset,
                         refinement_rois=extra, progress=progress, cancel=cancel,
                         background=background)
    target = _segment_name(first)
    out = segment_2d(engine, input_node, [_Renamed(roi, target) for roi in rois], segmentation_node,
                     window_preset=window_preset, progress=progress, cancel=cancel,
                     background=background)
    out.summary = f"refined segment '{target}' with {len(rois)} box(es)"
    return out


class _Renamed:
    """An ROI node seen under another name (the segment a Refine writes to)."""

    def __init__(self, roi: Any, name: str) -> None:
        self._roi = roi
        self._name = name

    def GetName(self) -> str:  # noqa: N802 - MRML naming
        return self._name

    def __getattr__(self, attr: str):
        return getattr(self._roi, attr)
