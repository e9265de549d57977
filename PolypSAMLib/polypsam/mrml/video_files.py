"""Load video: an endoscopy video file or a folder of frames as a Slicer sequence with a browser.

Slicer cannot bring an ``.mp4`` in as a sequence without other extensions, so Track would have
nothing to work on. Frames are decoded by :func:`polypsam.frames.read_frames` (PyAV through
imageio for video files, PIL for PNG/JPEG folders), stored as RGB vector volumes in a
``vtkMRMLSequenceNode`` indexed by time in seconds when the file has a frame rate (else by frame
number), and browsed by a ``vtkMRMLSequenceBrowserNode`` showing the first frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import slicer

from ..errors import InvalidInputError
from ..frames import read_frames


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
    added to the scene then). Frames of different sizes are refused.
    """
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
