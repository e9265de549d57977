"""Load video: an endoscopy video file or a folder of frames as a Slicer sequence with a browser.

Slicer cannot bring an ``.mp4`` in as a sequence without other extensions, so Track would have
nothing to work on. Frames are decoded by :func:`polypsam.frames.read_frames` (PyAV through
imageio for video files, PIL for PNG/JPEG folders), stored as RGB vector volumes in a
``vtkMRMLSequenceNode`` indexed by time in seconds when the file has a frame rate (else by frame
number), and browsed by a ``vtkMRMLSequenceBrowserNode`` showing the first frame.

Desktop Slicer bundles PIL (frame folders work everywhere) but not imageio/PyAV: video files need
them, installed with the user's consent at pinned versions (:func:`video_file_support`,
:func:`ensure_video_file_support`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import slicer

from ..errors import InvalidInputError
from ..frames import VIDEO_SUFFIXES, read_frames
from . import dependencies

VIDEO_FILES = "video files"  # the feature's name in dependencies.OPTIONAL_PACKAGES


def video_file_support(find_spec: Callable[[str], object] = importlib.util.find_spec) -> dependencies.Support:
    """Whether video files (mp4, avi, mov...) can be read here; folders of frames always can."""
    return dependencies.optional_support(VIDEO_FILES, find_spec)


def ensure_video_file_support(**kwargs) -> dependencies.DependencyStatus:
    """With the user's consent, install the pinned packages video files need (see
    :func:`polypsam.mrml.dependencies.ensure_optional` for ``kwargs`` and errors)."""
    return dependencies.ensure_optional(VIDEO_FILES, **kwargs)


def needs_video_packages(path: str | Path) -> bool:
    """True for a video file (read with imageio/PyAV); a folder of frames needs only PIL."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def _vector_volume(rgb: np.ndarray, name: str) -> Any:
    """One RGB frame as a single-slice vector volume (I = column, J = row)."""
    node = slicer.vtkMRMLVectorVolumeNode()
    node.SetName(name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(rgb)[None])
    # As Slicer's own reader places a 2-D image: LPS-identity axes, shown upright in Axial view.
    node.SetIJKToRASDirections(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    return node


def load_video(
    scene: Any,
    path: str | Path,
    *,
    name: Optional[str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Any:
    """Read every frame of ``path`` into a new sequence and return its browser node.

    ``progress(done, total)`` is called after each frame (it may raise to stop: nothing is
    added to the scene then). Frames of different sizes are refused. A video file whose
    packages are not installed is refused with the pinned versions to install.
    """
    if needs_video_packages(path):
        support = video_file_support()
        if support.status != "ready":
            raise InvalidInputError(f"{support.reason}; or choose a folder of PNG/JPEG frames")
    frames = read_frames(path)
    total = len(frames)
    if total == 0:
        raise InvalidInputError(f"{path} holds no frames")
    name = name or Path(path).stem or "video"
    fps = getattr(frames, "fps", None)
    sequence = slicer.vtkMRMLSequenceNode()
    sequence.SetName(scene.GenerateUniqueName(name))
    if fps:
        sequence.SetIndexName("time")
        sequence.SetIndexUnit("s")
    else:
        sequence.SetIndexName("frame")
        sequence.SetIndexUnit("")
    sequence.SetIndexType(sequence.NumericIndex)
    size = None
    for t in range(total):
        rgb = np.asarray(frames[t])
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=-1)
        if size is None:
            size = rgb.shape
        elif rgb.shape != size:
            raise InvalidInputError(
                f"frame {t} of {Path(path).name} is {rgb.shape[1]}x{rgb.shape[0]} but frame 0 is"
                f" {size[1]}x{size[0]}: all frames of a sequence must have one size")
        value = f"{t / fps:.6g}" if fps else str(t)
        sequence.SetDataNodeAtValue(_vector_volume(rgb.astype(np.uint8, copy=False), f"{name} {t}"),
                                    value)
        if progress is not None:
            progress(t + 1, total)
    scene.AddNode(sequence)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{sequence.GetName()} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.SetSelectedItemNumber(0)
    logic = getattr(getattr(slicer, "modules", None), "sequences", None)
    if logic is not None:
        logic.logic().UpdateProxyNodesFromSequences(browser)
    return browser
