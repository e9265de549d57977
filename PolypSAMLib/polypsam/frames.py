"""Frame sequences read on demand: a folder of PNG/JPEG frames, or a video file.

Both are :class:`~polypsam.engine.FrameSource` objects (``len`` + indexing) that decode one frame
when it is asked for, so a long sequence never sits in memory. Frame folders are sorted naturally
(``frame2`` before ``frame10``). Videos (mp4, avi, ...) need the optional ``imageio`` package
with its ffmpeg plugin (``pip install imageio imageio-ffmpeg``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .io import list_frames, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class FolderFrames:
    """The image files of a folder, in natural order, read one at a time."""

    fps = None  # a folder of frames has no frame rate

    def __init__(self, folder: str | Path) -> None:
        self.paths = list_frames(folder)
        self.names = [p.stem for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return read_image(self.paths[int(index)])


class VideoFrames:
    """Frames of a video file, decoded on demand with imageio (optional dependency)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            import imageio.v3 as iio
        except ImportError as exc:
            raise InvalidInputError(
                f"reading the video {self.path.name} needs the optional packages imageio and"
                " imageio-ffmpeg (pip install imageio imageio-ffmpeg); or give a folder of"
                " PNG/JPEG frames instead"
            ) from exc
        self._iio = iio
        try:
            props = iio.improps(self.path, plugin="pyav") if _has_pyav() else None
            count = props.shape[0] if props is not None else None
        except Exception:  # plugin differences: count frames below
            count = None
        if count is None or count <= 0:
            try:
                count = sum(1 for _ in iio.imiter(self.path))
            except Exception as exc:
                raise InvalidInputError(f"cannot read video {self.path}: {exc}") from exc
        self._count = int(count)
        self.fps = _frame_rate(iio, self.path)
        width = max(4, len(str(max(self._count - 1, 0))))
        self.names = [f"{i:0{width}d}" for i in range(self._count)]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < self._count:
            raise IndexError(index)
        try:
            frame = self._iio.imread(self.path, index=index)
        except Exception as exc:
            raise InvalidInputError(f"cannot read frame {index} of {self.path}: {exc}") from exc
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[2] == 4:
            frame = frame[:, :, :3]
        return frame.astype(np.uint8, copy=False)


def _frame_rate(iio, path: Path) -> float | None:
    """Frames per second from the file's metadata, or ``None`` when it does not say."""
    try:
        meta = iio.immeta(path, plugin="pyav") if _has_pyav() else iio.immeta(path)
        fps = float(meta.get("fps") or 0)
    except Exception:  # metadata is optional: frames are still numbered
        return None
    return fps if fps > 0 else None


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def read_frames(source: str | Path):
    """A lazy frame sequence from a folder of PNG/JPEG frames or a video file.

    The result has ``len``, indexing and ``names`` (the frame file stems, or zero-padded indices
    for a video), used to name per-frame outputs.
    """
    path = Path(source)
    if path.is_dir():
        return FolderFrames(path)
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return VideoFrames(path)
        raise InvalidInputError(
            f"{path} is neither a folder of frames nor a video ({', '.join(VIDEO_SUFFIXES)})"
        )
    raise InvalidInputError(f"file or folder not found: {path}")
