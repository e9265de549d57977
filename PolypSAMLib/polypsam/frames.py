"""Frame sequences read on demand: a folder of PNG/JPEG frames, or a video file.

Both are :class:`~polypsam.engine.FrameSource` objects (``len`` + indexing) that decode one frame
when it is asked for, so a long sequence never sits in memory. Frame folders are sorted naturally
(``frame2`` before ``frame10``). Videos (mp4, avi, ...) need the optional package PyAV
(``pip install av``, FFmpeg included); a truncated or corrupt video is refused when opened.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
    """Frames of a video file (PyAV), checked when opened, then decoded when asked for.

    Opening decodes every frame once: a truncated or corrupt file (a cut download, a recording
    that stopped) is refused before any work starts with "video truncated or corrupt: FILE",
    rather than failing at the frame where the data ends. Then frame ``i`` is decoded on demand:
    consecutive reads continue the decoder; any other seeks to the keyframe before it. The last
    few frames decoded are kept (reverse tracking reads backwards).
    """

    CACHE_BYTES = 64 << 20

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._av = _import_av(self.path)
        self._lock = threading.Lock()
        self._container = None
        self._decoded = None  # the decoder's frame iterator
        self._next = -1  # index of the frame the decoder gives next (-1: unknown)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pts, self.fps = self._check()
        self._count = len(self._pts)
        self._index_of = {pts: i for i, pts in enumerate(self._pts)}
        self._seekable = (None not in self._pts and len(self._index_of) == self._count
                          and all(a < b for a, b in zip(self._pts, self._pts[1:])))
        width = max(4, len(str(max(self._count - 1, 0))))
        self.names = [f"{i:0{width}d}" for i in range(self._count)]

    def _check(self) -> tuple[list, float | None]:
        """Decode every frame once: ``(presentation times, frames per second or None)``."""
        av = self._av
        previous = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture(local=False) as logs:
                with av.open(str(self.path)) as container:
                    if not container.streams.video:
                        raise InvalidInputError(f"{self.path} holds no video stream")
                    stream = container.streams.video[0]
                    # one thread: FFmpeg's decoder threads would call the Python log callback
                    # installed here, and freeing the decoder (with the GIL held) waits for them
                    stream.thread_type = "NONE"
                    announced = int(stream.frames or 0)
                    pts, corrupt = [], False
                    for frame in container.decode(stream):
                        pts.append(frame.pts)
                        corrupt |= bool(getattr(frame, "is_corrupt", False))
                    rate = stream.average_rate
        except (av.error.FFmpegError, EOFError) as exc:
            raise InvalidInputError(f"video truncated or corrupt: {self.path}") from exc
        finally:
            av.logging.set_level(previous)
        errors = [message for level, _name, message in logs if level <= av.logging.ERROR]
        if corrupt or errors or not pts or len(pts) < announced:
            raise InvalidInputError(f"video truncated or corrupt: {self.path}")
        fps = float(rate) if rate else 0.0
        return pts, (fps if fps > 0 else None)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < self._count:
            raise IndexError(index)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            if self._decoded is None or index != self._next:
                self._seek(index)
            for frame in self._decoded:
                i = self._index_of.get(frame.pts, -1) if self._seekable else self._next
                if i < 0:
                    continue
                self._next = i + 1
                rgb = frame.to_ndarray(format="rgb24")
                self._remember(i, rgb)
                if i == index:
                    return rgb
            self._decoded = None
            raise InvalidInputError(f"video truncated or corrupt: {self.path} (frame {index})")

    def _seek(self, index: int) -> None:
        """Position the decoder at the keyframe at or before ``index`` (or at the start)."""
        if self._container is None or not self._seekable:
            self.close()
            self._container = self._av.open(str(self.path))
            self._container.streams.video[0].thread_type = "AUTO"
            self._next = 0
        stream = self._container.streams.video[0]
        if self._seekable:
            self._container.seek(self._pts[index], stream=stream, backward=True, any_frame=False)
            self._next = -1
        self._decoded = self._container.decode(stream)

    def _remember(self, index: int, rgb: np.ndarray) -> None:
        self._cache[index] = rgb
        self._cache.move_to_end(index)
        while len(self._cache) > max(1, self.CACHE_BYTES // max(1, rgb.nbytes)):
            self._cache.popitem(last=False)

    def close(self) -> None:
        """Close the file (it is opened again when a frame is asked for)."""
        if self._container is not None:
            self._container.close()
        self._container = self._decoded = None


def _import_av(path: Path):
    try:
        import av
        import av.logging
    except ImportError as exc:
        raise InvalidInputError(
            f"reading the video {path.name} needs the package PyAV (pip install av); or give a"
            " folder of PNG/JPEG frames instead") from exc
    return av


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
