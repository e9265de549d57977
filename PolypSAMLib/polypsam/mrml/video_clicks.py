"""Clicks on the frames of a video sequence: which frame a click belongs to, and tracking with them.

Every frame of an RGB video sequence is a single-slice volume on the same grid, so a click's
position cannot say which frame it was placed on. The frame is recorded on the control point
itself when the point is placed: its description becomes ``"frame <item>"`` (the browser's item
shown at that moment; :func:`observe_click_frames` installs the observer, as
:func:`~polypsam.mrml.scene.place_box` does for an ROI). The description travels with the point
(deleting other points does not shift it, it is saved with the scene and visible in the Markups
module). A point with no recorded frame (added by a script or the Markups module) belongs to the
browser's current item when the operation runs, as an ROI without a recorded frame does.

:func:`track_with_clicks` (the module's "Propagate clicks" on a sequence browser) tracks one
segment through the whole video: frames with clicks become SAM2 conditioning frames exactly as
the video predictor's ``add_new_points_or_box`` takes them, the result goes into the
segmentation sequence synchronised with the browser as one undo step (as Track does), and given
the previous result only the directions a new click affects are tracked again.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import slicer

from .. import propagation
from ..engine import FramePrompt, Prompt
from ..errors import InvalidInputError
from .clicks import Click, clicks_from_markups
from .jobs import (
    Background, Job, ProgressFn, RunResult, frame_of, noop_progress, require_output, run,
)
from .roi import roi_to_voxel_box
from .tracking import sequence_proxy, write_sequence
from .volumes import frames_from_sequence, sequence_holds_volumes

_FRAME_TEXT = "frame {}"
_FRAME_PATTERN = re.compile(r"\s*frame\s+(-?\d+)\s*")


# -- which frame a click belongs to ---------------------------------------------------------------
def recorded_frame(point_list: Any, n: int) -> Optional[int]:
    """The frame recorded on control point ``n`` of ``point_list`` (``None``: none recorded)."""
    found = _FRAME_PATTERN.fullmatch(point_list.GetNthControlPointDescription(n) or "")
    return int(found.group(1)) if found else None


def click_frame(point_list: Any, n: int, browser_node: Any) -> int:
    """The frame control point ``n`` of ``point_list`` belongs to: the one recorded when it was
    placed, else the item ``browser_node`` shows now. For the widget (e.g. to jump to a click's
    frame or list clicks per frame)."""
    recorded = recorded_frame(point_list, n)
    if recorded is not None:
        return recorded
    return max(0, int(browser_node.GetSelectedItemNumber()))


def record_click_frames(point_list: Any, browser_node: Any) -> list[int]:
    """Record the browser's current item on every placed point of ``point_list`` that has no
    frame yet; returns the indices of the points stamped."""
    frame = int(browser_node.GetSelectedItemNumber())
    stamped = []
    for n in range(point_list.GetNumberOfControlPoints()):
        if point_list.GetNthControlPointPositionStatus(n) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        if recorded_frame(point_list, n) is None and frame >= 0:
            point_list.SetNthControlPointDescription(n, _FRAME_TEXT.format(frame))
            stamped.append(n)
    return stamped


_observed: "weakref.WeakKeyDictionary[Any, tuple[Any, int]]" = weakref.WeakKeyDictionary()


def observe_click_frames(point_list: Any, browser_node: Any) -> None:
    """From now on, every point placed in ``point_list`` records the frame ``browser_node`` shows
    at that moment (:func:`record_click_frames` on ``PointPositionDefinedEvent``). Calling it
    again for the same list and browser does nothing; for another browser, the observer moves."""
    entry = _observed.get(point_list)
    if entry is not None:
        browser_ref, tag = entry
        if browser_ref() is browser_node:
            return
        point_list.RemoveObserver(tag)
    browser_ref = weakref.ref(browser_node)

    def on_defined(caller: Any, event: str) -> None:
        del event
        browser = browser_ref()
        if browser is not None and browser.GetScene() is not None:
            record_click_frames(caller, browser)

    tag = point_list.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, on_defined)
    _observed[point_list] = (browser_ref, tag)


# -- tracking with clicks ------------------------------------------------------------------------
@dataclass
class TrackClicksResult(RunResult):
    """What :func:`track_with_clicks` wrote; pass ``tracking`` back as ``previous`` next time."""

    segment: str = ""
    key_frame: int = -1
    tracking: Optional[propagation.TrackResult] = None


def _clicks_per_frame(clicks: list[Click], lists: dict[bool, Any], browser_node: Any,
                      n_frames: int) -> dict[int, tuple[list[tuple[float, float]], list[int]]]:
    out: dict[int, tuple[list[tuple[float, float]], list[int]]] = {}
    for c in clicks:
        frame = click_frame(lists[c.include], c.point, browser_node)
        if not 0 <= frame < n_frames:
            raise InvalidInputError(
                f"{c.source} was placed on frame {frame}, but the sequence has frames"
                f" 0..{n_frames - 1}")
        points, labels = out.setdefault(frame, ([], []))
        points.append((c.x, c.y))
        labels.append(c.label)
    return dict(sorted(out.items()))


def track_with_clicks(
    engine: Any,
    browser_node: Any,
    segmentation_node: Any,
    segment: str,
    *,
    include: Any = None,
    exclude: Any = None,
    roi: Any = None,
    key_frame: int = -1,
    previous: Optional[propagation.TrackResult] = None,
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> TrackClicksResult:
    """Track ``segment`` through the browser's video from clicks (and optionally a box).

    Each click belongs to the frame it was placed on (:func:`click_frame`). Key frame:
    ``key_frame`` if >= 0, else the ROI's frame, else the frame of the first include click; its
    prompt is the ROI's box plus the clicks there. Clicks on every other frame become conditioning
    frames (SAM2 ``add_new_points_or_box``). The segment is written on every frame of the
    segmentation sequence synchronised with the browser (one undo step). With ``previous`` (the
    last :attr:`TrackClicksResult.tracking` for the same key frame) only the directions whose
    clicks changed are tracked again; the other frames are copied from it.
    """
    progress = progress or noop_progress
    if browser_node is None:
        raise InvalidInputError("no sequence browser selected: tracking clicks needs a video sequence")
    segmentation_node = require_output(segmentation_node)
    if not segment:
        raise InvalidInputError("no segment name given for the clicks")
    if sequence_holds_volumes(browser_node):
        raise InvalidInputError(
            "clicks through time on a 4-D sequence are not supported: propagate clicks on one time"
            " point's volume, or Track with a box")
    source = frames_from_sequence(browser_node)
    proxy = sequence_proxy(browser_node, browser_node.GetMasterSequenceNode())
    total = len(source)
    current = max(0, int(browser_node.GetSelectedItemNumber()))
    clicks = clicks_from_markups(proxy, include, exclude)
    by_frame = _clicks_per_frame(clicks, {True: include, False: exclude}, browser_node, total)
    box = roi_to_voxel_box(roi, proxy).box_on_slice(0) if roi is not None else None
    if key_frame >= 0:
        key = int(key_frame)
    elif roi is not None:
        key = frame_of(roi, current)
    else:
        first = next((click_frame(include, c.point, browser_node) for c in clicks if c.include),
                     None)
        if first is None:
            raise InvalidInputError("no include click and no box: place an include point first")
        key = first
    if not 0 <= key < total:
        raise InvalidInputError(f"key frame {key} lies outside the sequence's frames 0..{total - 1}")
    if roi is not None and frame_of(roi, key) != key:
        raise InvalidInputError(
            f"the box was drawn on frame {frame_of(roi, key)}, not on the key frame {key}")
    points, labels = by_frame.get(key, ([], []))
    if box is None and 1 not in labels:
        raise InvalidInputError(
            f"no include click and no box on the key frame {key}: nothing to track from")
    key_prompt = Prompt(box=box, points=points, labels=labels)
    key_prompt.validate(source.width, source.height)
    refinements = [FramePrompt(f, 1, points=p, labels=lab)
                   for f, (p, lab) in by_frame.items() if f != key]
    for r in refinements:
        r.validate(source.width, source.height)
    if previous is not None and previous.labels.shape[0] != total:
        raise InvalidInputError(
            f"the previous result has {previous.labels.shape[0]} frames, the sequence {total}")
    progress(0, total, "reading frames")
    frames = np.stack([source[t] for t in range(total)])  # main thread: MRML reads end here
    info = engine.info.provenance()

    def compute() -> propagation.TrackResult:
        def report(done: int, count: int) -> None:
            progress(done, count or total, f"tracking clicks: frame {done}/{count or total}")

        return propagation.track(engine, frames, key, [key_prompt], refinements=refinements,
                                 previous=previous, cancel=cancel, progress=report)

    def write(out: propagation.TrackResult) -> TrackClicksResult:
        per_frame = {t: {segment: out.labels[t] == 1} for t in range(out.labels.shape[0])}
        progress(total, total, "writing the segmentation sequence")
        seq = write_sequence(browser_node, segmentation_node, per_frame, [segment], {
            **info, "operation": "track-clicks", "start_frame": key,
            "prompt": key_prompt.to_dict(),
            "refinement_frames": tuple(p.frame for p in refinements)}, "polyp")
        result = TrackClicksResult(segment=segment, key_frame=key, tracking=out,
                                   segment_ids={segment: segment})
        result.scores["key frame"] = float(out.scores.get(1, float("nan")))
        tracked = ", ".join(f"{d} {n}" for d, n in out.tracked.items()) or "none"
        result.summary = (f"tracked '{segment}' from frame {key} with clicks on"
                          f" {len(by_frame)} frame(s) into {seq.GetName()} (tracked: {tracked})")
        return result

    return run(Job(compute, write), background=background, cancel=cancel)
