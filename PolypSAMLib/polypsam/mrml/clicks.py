"""Click points from markups point lists → pixel positions on a volume's slices.

A click is a control point of a markups point list (``vtkMRMLMarkupsFiducialNode``) placed in
any view. Its world position (all parent transforms of the list included) is mapped through the
inverse of the volume's IJK-to-world matrix (its own parent transforms included): ``x = i`` and
``y = j`` stay continuous (SAM2 takes sub-pixel clicks, in the pixel-index convention of
:class:`~polypsam.geometry.Box`), ``k`` is rounded to the nearest slice, so a click lands on the
voxel its position maps to. Include and exclude clicks come from two lists (as in
SlicerNNInteractive); points still being placed are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InvalidInputError
from .nodes import image_dims, ijk_to_world

#: half a voxel: a click this far beyond the first/last voxel centre is clamped onto it
_EDGE = 0.5


@dataclass(frozen=True)
class Click:
    """One click on slice ``k`` at pixel ``(x, y)`` (x = I, y = J); ``include`` or exclude."""

    x: float
    y: float
    k: int
    include: bool
    source: str = ""  # "<list name> #<n>", for messages
    point: int = -1  # the control point's index in its list

    @property
    def label(self) -> int:
        return 1 if self.include else 0


def _defined_points(node: Any) -> Iterable[tuple[int, np.ndarray]]:
    import slicer

    for n in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(n) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        world = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(n, world)
        yield n, np.array(world, dtype=float)


def clicks_from_markups(volume_node: Any, include: Any = None, exclude: Any = None) -> list[Click]:
    """The clicks of the ``include`` and ``exclude`` point lists on ``volume_node``'s grid.

    A click outside the volume (beyond half a voxel from its edge voxels) raises
    :class:`InvalidInputError` naming the list and the point; the scene is never changed.
    """
    if volume_node is None:
        raise InvalidInputError("no input volume for the clicks")
    ni, nj, nk = image_dims(volume_node, "input volume")
    world_to_ijk = np.linalg.inv(ijk_to_world(volume_node))
    clicks: list[Click] = []
    for node, positive in ((include, True), (exclude, False)):
        if node is None:
            continue
        if not node.IsA("vtkMRMLMarkupsNode"):
            raise InvalidInputError(f"clicks must be a markups point list, got a {node.GetClassName()}")
        for n, world in _defined_points(node):
            i, j, k = (world_to_ijk @ np.append(world, 1.0))[:3]
            source = f"point {n + 1} of '{node.GetName()}'"
            limits = ((i, ni, "I"), (j, nj, "J"), (k, nk, "K"))
            for value, size, axis in limits:
                if not -_EDGE <= value <= size - 1 + _EDGE:
                    raise InvalidInputError(
                        f"{source} lies outside the volume '{volume_node.GetName()}' (voxel"
                        f" {axis} = {value:.1f}, the volume has 0..{size - 1})"
                    )
            clicks.append(Click(
                x=float(np.clip(i, 0, ni - 1)), y=float(np.clip(j, 0, nj - 1)),
                k=int(np.clip(np.floor(k + 0.5), 0, nk - 1)), include=positive, source=source,
                point=n,
            ))
    return clicks


def clicks_by_slice(clicks: Sequence[Click]) -> dict[int, tuple[list[tuple[float, float]], list[int]]]:
    """``{k: (points, labels)}`` in click order, ready for a :class:`~polypsam.engine.Prompt`."""
    out: dict[int, tuple[list[tuple[float, float]], list[int]]] = {}
    for c in clicks:
        points, labels = out.setdefault(c.k, ([], []))
        points.append((c.x, c.y))
        labels.append(c.label)
    return dict(sorted(out.items()))


CLICK_ATTRIBUTE = "PolypSAM.clicks"  # "include" or "exclude"
SEGMENT_ATTRIBUTE = "PolypSAM.segment"  # the segment the point list's clicks are for
_CLICK_COLOURS = {"include": (0.2, 0.85, 0.25), "exclude": (0.95, 0.25, 0.2)}


def click_lists(scene: Any, segment: str) -> tuple[Any, Any]:
    """The include and exclude point lists of ``segment`` (one pair per object), made on first
    use: green include and red exclude points, named after the segment."""
    if not segment:
        raise InvalidInputError("choose the segment the clicks are for")
    found: dict[str, Any] = {}
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    for n in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(n)
        if node.GetAttribute(SEGMENT_ATTRIBUTE) == segment and node.GetAttribute(CLICK_ATTRIBUTE):
            found.setdefault(node.GetAttribute(CLICK_ATTRIBUTE), node)
    for kind, colour in _CLICK_COLOURS.items():
        if kind not in found:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                           scene.GenerateUniqueName(f"{segment} {kind}"))
            node.SetAttribute(SEGMENT_ATTRIBUTE, segment)
            node.SetAttribute(CLICK_ATTRIBUTE, kind)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*colour)
            node.GetDisplayNode().SetColor(*colour)
            found[kind] = node
    return found["include"], found["exclude"]
