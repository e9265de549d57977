"""Clicks on the frames of a video sequence: which frame each click belongs to.

Every frame of an RGB video sequence is a single-slice volume on the same grid, so a click's
position cannot say which frame it was placed on. The frame is recorded on the control point
itself when the point is placed: its description becomes ``"frame <item>"`` (the browser's item
shown at that moment; :func:`observe_click_frames` installs the observer, as
:func:`~polypsam.mrml.scene.place_box` does for an ROI). The description travels with the point
(deleting other points does not shift it, it is saved with the scene and visible in the Markups
module). A point with no recorded frame (added by a script or the Markups module) belongs to the
browser's current item when the operation runs, as an ROI without a recorded frame does.
:func:`clicks_per_frame` groups clicks by frame for "Propagate clicks" on a video
(:func:`polypsam.mrml.tracking.track_clicks`); :func:`clicks_on_frame` keeps one frame's clicks
(each click re-segments the frame shown from that frame's clicks only).
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Optional

import slicer

from ..errors import InvalidInputError
from .clicks import Click

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


def clicks_per_frame(clicks: list[Click], lists: dict[bool, Any], browser_node: Any,
                     n_frames: int) -> dict[int, tuple[list[tuple[float, float]], list[int]]]:
    """``{frame: (points, labels)}`` of ``clicks`` (``lists[include]`` is each click's point list),
    in frame order; a frame outside ``0..n_frames - 1`` is refused, naming the click."""
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


def clicks_on_frame(clicks: list[Click], lists: dict[bool, Any], browser_node: Any,
                    frame: int) -> list[Click]:
    """The ``clicks`` placed on ``frame`` (``lists[include]`` is each click's point list)."""
    return [c for c in clicks if click_frame(lists[c.include], c.point, browser_node) == frame]
