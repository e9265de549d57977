"""Answers before the click: the slice a slice view shows of the input, encoded in the background.

SAM2's image encoder is most of what a first box or click on a slice waits for. While the module
is shown and an engine is loaded, :class:`BackgroundEncoding` keeps the slice (or video frame)
that the Red slice view shows of the module's input encoded in the background
(:class:`polypsam.prefetch.Prefetcher`): moving to another slice cancels that encoding and
encodes the new slice, so a box or click placed there runs only SAM2's decoder. It observes the
slice node's ``ModifiedEvent`` (offset, orientation) and the input volume's content, display
(window/level) and transform events: no timer polls.

:func:`shown_slice_index` maps the view's plane into the volume's voxel grid through its
IJK-to-RAS matrix and parent transforms (no axis order assumed): the view shows slice ``k`` of
the volume where its plane is one of the volume's ``K`` planes, the slices the module's
operations segment. An oblique view, or one across another axis, shows no such slice and nothing
is encoded. :func:`shown_image` gives that slice as the operations give it to the engine (a view
of the node's voxels, nothing copied; an RGB frame as RGB) with the same intensity mapping, so the
embedding cache, keyed by content, serves the next box on that slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import vtk

from ..errors import InvalidInputError
from ..prefetch import Prefetch, Prefetcher
from .nodes import ijk_to_world, image_dims, matrix_to_numpy
from .shapes import Request
from .volumes import frame_from_vector_node, intensity_for, slice_voxels

VIEW = "Red"  # the slice view whose slice is encoded
_ALIGNED = 1e-4  # |K component| of an in-plane axis, relative to its length, for "a K plane"
_EPS = 1e-6


def view_node(scene: Any, layout_name: str = VIEW) -> Any:
    """The slice node of the slice view ``layout_name`` (``None`` if the scene has no such view)."""
    return scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode") if scene is not None else None


def shown_slice_index(slice_node: Any, volume_node: Any) -> Optional[int]:
    """The slice ``k`` of ``volume_node``'s voxels ``[k, j, i]`` that ``slice_node`` shows, or
    ``None`` if its plane is not one of the volume's K planes (oblique, another axis) or lies
    outside the volume (farther than half a voxel from its first or last slice)."""
    world_to_ijk = np.linalg.inv(ijk_to_world(volume_node))
    plane = world_to_ijk @ matrix_to_numpy(slice_node.GetSliceToRAS())
    for axis in (plane[:3, 0], plane[:3, 1]):  # the view's in-plane directions, in IJK
        if abs(axis[2]) > _ALIGNED * max(float(np.linalg.norm(axis)), _EPS):
            return None
    k, depth = float(plane[2, 3]), image_dims(volume_node, "volume")[2]
    if not -0.5 - _EPS <= k <= depth - 0.5 + _EPS:
        return None
    return min(max(int(math.floor(k + 0.5)), 0), depth - 1)


@dataclass(frozen=True)
class ShownImage:
    """The slice ``k`` a view shows, as the operations give it to the engine."""

    image: np.ndarray
    intensity: Any
    k: int


def shown_image(slice_node: Any, volume_node: Any,
                window_preset: str = "display") -> Optional[ShownImage]:
    """What the view shows of ``volume_node`` as the model's input (``None``: no slice of it):
    a scalar volume's slice (a read-only view of its voxels) with the intensity mapping of
    ``window_preset``; an RGB frame's pixels. Raises :class:`InvalidInputError` for a volume the
    operations refuse (a label map, several components, no image)."""
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(f"'{volume_node.GetName()}' is a label map")
    k = shown_slice_index(slice_node, volume_node)
    if k is None:
        return None
    if volume_node.IsA("vtkMRMLVectorVolumeNode"):
        return ShownImage(frame_from_vector_node(volume_node), None, k)
    image = slice_voxels(volume_node, k)
    if image.ndim != 2:
        raise InvalidInputError(f"volume '{volume_node.GetName()}' has several components")
    return ShownImage(image, intensity_for(volume_node, window_preset), k)


_INPUT_EVENTS = (vtk.vtkCommand.ModifiedEvent, "ImageDataModifiedEvent", "DisplayModifiedEvent",
                 "TransformModifiedEvent")


class BackgroundEncoding:
    """Keeps what a slice view shows of the module's input encoded on the loaded engine.

    ``engine()`` returns the loaded engine or ``None`` (nothing is encoded without one; it is
    asked at every change, so a released or replaced engine is never used). The widget calls
    :meth:`follow` with the module's parameter node whenever it changes (and ``None`` when the
    module is left or the scene closes); the node events call :meth:`update`.
    """

    def __init__(self, scene: Any, engine: Callable[[], Any], view: str = VIEW) -> None:
        self.scene, self.view = scene, view
        self._engine = engine
        self.prefetcher = Prefetcher()
        self._input: Any = None
        self._preset = "display"
        self._observed: list[tuple[Any, int]] = []
        self._state: Optional[tuple] = None

    @property
    def current(self) -> Optional[Prefetch]:
        """The encoding of the slice shown now (``None`` when nothing is encoded)."""
        return self.prefetcher.current

    def follow(self, parameters: Any) -> Optional[Prefetch]:
        """Encode what the view shows of ``parameters``' input (the module's parameter node: its
        input volume, else its sequence browser's frame) now and whenever it changes; ``None``
        stops."""
        if parameters is None:
            self.stop()
            return None
        request = Request.from_parameter_node("segment", parameters)
        self._input, self._preset = request.reference_volume, request.window_preset
        self._watch([view_node(self.scene, self.view), self._input])
        return self.update()

    def update(self, *_event: Any) -> Optional[Prefetch]:
        """Show the engine the slice on screen now: a new slice cancels and replaces the previous
        encoding; nothing to show hides it. Never raises for what is on screen."""
        engine, node = self._engine(), self._input
        slice_node = view_node(self.scene, self.view)
        shown = None
        if engine is not None and slice_node is not None and node is not None \
                and node.GetScene() is not None:
            try:
                shown = shown_image(slice_node, node, self._preset)
            except InvalidInputError:
                shown = None
        if shown is None:
            self._hide()
            return None
        image_data = node.GetImageData()
        state = (engine, node.GetID(), shown.k, image_data.GetMTime(), repr(shown.intensity))
        if state == self._state and self.current is not None:
            return self.current  # the same slice, content and window: nothing to do (no hashing)
        try:
            handle = self.prefetcher.show(engine, shown.image, intensity=shown.intensity)
        except InvalidInputError:  # the engine was closed meanwhile
            self._hide()
            return None
        self._state = state
        return handle

    def stop(self) -> None:
        """Observe nothing any more and cancel the encoding (the module was left)."""
        self._watch([])
        self._input = None
        self._hide()

    def _hide(self) -> None:
        self.prefetcher.hide()
        self._state = None

    def _watch(self, nodes: list) -> None:
        for obj, tag in self._observed:
            obj.RemoveObserver(tag)
        self._observed = []
        for n, node in enumerate(nodes):
            if node is None:
                continue
            events = (vtk.vtkCommand.ModifiedEvent,) if n == 0 else _INPUT_EVENTS
            for event in events:
                event_id = getattr(node, event) if isinstance(event, str) else event
                self._observed.append((node, node.AddObserver(event_id, self.update)))
