"""Volumes, frames and sequences → NumPy arrays plus their grid in world coordinates."""

from __future__ import annotations

from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from ..errors import InvalidInputError
from ..geometry import Volume, VolumeGeometry
from ..preprocess import Percentile, Window, parse_intensity
from .nodes import image_dims, matrix_to_numpy, require_node, ijk_to_world


def geometry_from_ijk_to_world(matrix: np.ndarray, what: str) -> VolumeGeometry:
    """The grid of an IJK-to-world matrix; an error naming ``what`` if its axes are sheared."""
    geometry = VolumeGeometry.from_ijk_to_ras(matrix)
    d = geometry.direction_matrix
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-5):
        raise InvalidInputError(
            f"{what}: IJK-to-world has sheared axes (a sheared parent transform?); "
            "harden the transform by resampling first"
        )
    return geometry


def volume_from_node(volume_node: Any) -> Volume:
    """A copy of a scalar volume's voxels ``[k, j, i]`` and its grid in world coordinates.

    A linear parent transform (rotation, translation) is hardened into the geometry; a
    non-linear one, a label map, a vector (RGB) volume or a missing image raise
    :class:`InvalidInputError`.
    """
    array = np.array(volume_voxels(volume_node), copy=True)
    geometry = geometry_from_ijk_to_world(ijk_to_world(volume_node), volume_node.GetName())
    return Volume(array, geometry)


def volume_voxels(volume_node: Any) -> np.ndarray:
    """A scalar volume's voxels ``[k, j, i]`` as a read-only view of the node's own memory
    (nothing copied: reading a 300-slice 512 x 512 CT costs no 150 MB copy), after the checks of
    :func:`volume_from_node`. Operations that segment a few slices read them through it."""
    require_node(volume_node, "vtkMRMLScalarVolumeNode", "input volume")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(
            f"'{volume_node.GetName()}' is a label map; choose an image volume as input"
        )
    image = volume_node.GetImageData()
    if image is None:
        raise InvalidInputError(f"volume '{volume_node.GetName()}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InvalidInputError(
            f"volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} "
            "components; use frame_from_vector_node for RGB frames"
        )
    geometry_from_ijk_to_world(ijk_to_world(volume_node), volume_node.GetName())  # its checks
    view = _voxels(volume_node, "volume")
    view.flags.writeable = False
    return view


def _voxels(node: Any, what: str) -> np.ndarray:
    """A view of a volume's voxels ``(K, J, I[, C])`` read through its image data.

    ``slicer.util.arrayFromVolume`` refuses streaming volumes (``vtkMRMLStreamingVolumeNode``,
    the node of frames that arrive compressed, e.g. over OpenIGTLink); their ``GetImageData``
    decodes the current frame, so reading the image data serves every volume class alike.
    """
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        extra = (" (a streaming volume whose frame could not be decoded: is its codec"
                 " available?)" if node.IsA("vtkMRMLStreamingVolumeNode") else "")
        raise InvalidInputError(f"{what} '{node.GetName()}' has no image data{extra}")
    i, j, k = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape((k, j, i, components) if components > 1 else (k, j, i))


def slice_voxels(node: Any, k: int) -> np.ndarray:
    """Slice ``k`` of a volume's voxels, ``(J, I[, C])``: a read-only view of the node's own
    memory (nothing copied), on any volume class (streaming volumes included)."""
    array = _voxels(node, "volume")
    if not 0 <= k < array.shape[0]:
        raise InvalidInputError(f"slice {k} is outside volume '{node.GetName()}''s slices"
                                f" 0..{array.shape[0] - 1}")
    view = array[k]
    view.flags.writeable = False
    return view


def frame_from_vector_node(node: Any) -> np.ndarray:
    """One video frame as ``H x W x 3`` uint8 RGB.

    Accepts an RGB(A) vector volume of shape ``(1, H, W, 3|4)`` (alpha dropped) or a single-slice
    uint8 scalar volume (grey, repeated to 3 channels). An RGB volume's frame is a read-only view
    of the node's voxels; the others are copies.
    """
    require_node(node, "vtkMRMLVolumeNode", "frame")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(f"'{node.GetName()}' is a label map, not a video frame")
    return _as_rgb(_checked_frame(_voxels(node, "frame"), node.GetName()))


def _checked_frame(array: np.ndarray, name: str) -> np.ndarray:
    """A frame's voxels ``(1, H, W[, C])`` checked: one slice, 1/3/4 uint8 components."""
    if array.ndim == 3:
        array = array[..., None]
    if array.shape[0] != 1 or array.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(
            f"frame '{name}' has shape {array.shape}; expected (1, H, W, 3) RGB"
        )
    if array.dtype != np.uint8:
        raise InvalidInputError(f"frame '{name}' is {array.dtype}; expected uint8 RGB")
    view = array[0]
    view.flags.writeable = False
    return view


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.shape[-1] == 1:
        return np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


class FrameViews:
    """A sequence's frames as views of the scene's own voxels (a ``FrameSource``).

    The views are taken on the calling thread, where MRML is read; indexing them (on any thread)
    reads no MRML node and copies nothing but the frame asked for when it is not RGB already. The
    views keep the voxel arrays alive, so the frames stay valid even if their nodes go.
    """

    def __init__(self, views: list[np.ndarray]) -> None:
        self._views = views

    def __len__(self) -> int:
        return len(self._views)

    def __getitem__(self, index: int) -> np.ndarray:
        return _as_rgb(self._views[index])


class SequenceFrames:
    """The frames of a browser's master sequence, read on demand (a ``FrameSource``)."""

    def __init__(self, sequence_node: Any, height: int, width: int) -> None:
        self.sequence_node = sequence_node
        self.height = height
        self.width = width

    def __len__(self) -> int:
        return int(self.sequence_node.GetNumberOfDataNodes())

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range 0..{len(self) - 1}")
        return frame_from_vector_node(self.sequence_node.GetNthDataNode(index))

    def views(self) -> FrameViews:
        """Every frame as a view of the scene's voxels (read here, on the calling thread)."""
        nodes = [self.sequence_node.GetNthDataNode(n) for n in range(len(self))]
        return FrameViews([_checked_frame(_voxels(node, f"frame {n}"), node.GetName())
                           for n, node in enumerate(nodes)])


def master_sequence(browser_node: Any) -> Any:
    """The browser's master sequence node; an error if there is none or it is empty."""
    require_node(browser_node, "vtkMRMLSequenceBrowserNode", "sequence browser")
    master = browser_node.GetMasterSequenceNode()
    if master is None or master.GetNumberOfDataNodes() == 0:
        raise InvalidInputError(f"sequence browser '{browser_node.GetName()}' has no frames")
    return master


class SequenceVolumes:
    """The 3-D volumes of a browser's master sequence (a 4-D image), read on demand.

    ``[t]`` is time point ``t``'s voxels ``(K, J, I)`` (a copy); :meth:`slices` is the
    ``FrameSource`` of one slice ``k`` through time. All time points share one grid.
    """

    def __init__(self, sequence_node: Any, shape: tuple[int, int, int]) -> None:
        self.sequence_node = sequence_node
        self.shape = shape  # (K, J, I)

    def __len__(self) -> int:
        return int(self.sequence_node.GetNumberOfDataNodes())

    def _array(self, t: int) -> np.ndarray:
        if not 0 <= t < len(self):
            raise IndexError(f"time point {t} out of range 0..{len(self) - 1}")
        return _voxels(self.sequence_node.GetNthDataNode(t), f"time point {t}")

    def __getitem__(self, t: int) -> np.ndarray:
        return np.array(self._array(t), copy=True)

    def views(self, k0: int, k1: int) -> list[np.ndarray]:
        """Slices ``k0..k1`` of every time point as read-only views of the scene's voxels (read
        here, on the calling thread; nothing is copied)."""
        out = []
        for t in range(len(self)):
            view = self._array(t)[k0:k1 + 1]
            view.flags.writeable = False
            out.append(view)
        return out

    def slices(self, k: int) -> "_SliceThroughTime":
        if not 0 <= k < self.shape[0]:
            raise InvalidInputError(f"slice {k} is outside the volumes' slices 0..{self.shape[0] - 1}")
        return _SliceThroughTime(self, k)


class _SliceThroughTime:
    """Slice ``k`` of every time point: a ``FrameSource`` of 2-D scalar frames."""

    def __init__(self, volumes: SequenceVolumes, k: int) -> None:
        self.volumes, self.k = volumes, k

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, t: int) -> np.ndarray:
        return np.array(self.volumes._array(t)[self.k], copy=True)


def sequence_holds_volumes(browser_node: Any) -> bool:
    """Whether the browser's master sequence holds 3-D volumes (4-D CT) rather than frames."""
    node = master_sequence(browser_node).GetNthDataNode(0)
    return node is not None and node.IsA("vtkMRMLVolumeNode") and image_dims(node, "frame 0")[2] > 1


def volumes_from_sequence(browser_node: Any) -> SequenceVolumes:
    """The scalar volumes of a 4-D sequence; every time point must have the same grid."""
    master = master_sequence(browser_node)
    first_grid = None
    for t in range(master.GetNumberOfDataNodes()):
        node = master.GetNthDataNode(t)
        what = f"time point {t} of '{master.GetName()}'"
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InvalidInputError(f"{what} is not a scalar image volume")
        if node.GetImageData() is None or node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise InvalidInputError(f"{what} is not a single-component volume")
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        grid = (image_dims(node, what), matrix_to_numpy(matrix))
        if first_grid is None:
            first_grid = grid
        elif grid[0] != first_grid[0]:
            raise InvalidInputError(f"{what} has another grid than time point 0: size {grid[0]}, not"
                                    f" {first_grid[0]}; resample the time points onto one grid first")
        elif not np.allclose(grid[1], first_grid[1], atol=1e-4):
            raise InvalidInputError(f"{what} has another grid than time point 0: its origin, spacing or"
                                    " axes differ; resample the time points onto one grid first")
    (i, j, k), _ = first_grid
    return SequenceVolumes(master, (k, j, i))


def frames_from_sequence(browser_node: Any) -> SequenceFrames:
    """The RGB frames of the browser's master sequence; all frames must have one size."""
    master = master_sequence(browser_node)
    sizes: dict[tuple[int, int, int], list[int]] = {}
    for n in range(master.GetNumberOfDataNodes()):
        node = master.GetNthDataNode(n)
        if node is None or not node.IsA("vtkMRMLVolumeNode"):
            raise InvalidInputError(f"frame {n} of '{master.GetName()}' is not a volume")
        sizes.setdefault(image_dims(node, f"frame {n}"), []).append(n)
    if len(sizes) > 1:
        described = ", ".join(f"{i}x{j}x{k} (frames {v[:3]}...)" for (i, j, k), v in sizes.items())
        raise InvalidInputError(f"sequence '{master.GetName()}' mixes frame sizes: {described}")
    (width, height, depth), = sizes
    if depth != 1:
        raise InvalidInputError(f"sequence '{master.GetName()}' holds 3-D volumes, not frames")
    return SequenceFrames(master, height, width)


def intensity_for(node: Any, preset: str):
    """The intensity policy for a scalar volume: a preset, percentiles or the display window.

    ``"display"`` (default) reads the volume's current window/level from its display node; the
    voxels are never modified. Vector (RGB) inputs return ``None`` (passthrough).
    """
    if node is None or node.IsA("vtkMRMLVectorVolumeNode"):
        return None
    preset = (preset or "display").strip().lower()
    if preset in ("display", "auto", ""):
        display = node.GetDisplayNode()
        if display is not None and hasattr(display, "GetWindow") and display.GetWindow() > 0:
            return Window(float(display.GetLevel()), float(display.GetWindow()))
        return Percentile()
    return parse_intensity(preset)
