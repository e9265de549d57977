"""Video files as frame sequences (:mod:`polypsam.frames`): truncated and corrupt files are refused
when opened, with one line, before any model work; good files decode the same in any order."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_rgb


def write_mp4(path: Path, frames: int = 25, faststart: bool = False) -> Path:
    """An H.264 mp4 of synthetic frames with the index (moov) at the end, or at the start."""
    import av

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=10, options={"g": "8"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_rgb(64, 96, seed=i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut(path: Path, out: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    end = write_mp4(folder / "index_at_end.mp4")
    start = write_mp4(folder / "faststart.mp4", faststart=True)
    assert start.read_bytes()[:200].find(b"moov") > 0 and end.read_bytes()[:200].find(b"moov") < 0
    return {"end": end, "start": start,
            "cut_end": cut(end, folder / "cut_index_at_end.mp4"),
            "cut_start": cut(start, folder / "cut_faststart.mp4")}


def decoded_in_order(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("which", ["cut_end", "cut_start"])
def test_truncated_video_is_refused_when_opened(videos, which):
    from polypsam.errors import InvalidInputError
    from polypsam.frames import read_frames

    with pytest.raises(InvalidInputError) as info:
        read_frames(videos[which])
    assert str(info.value) == f"video truncated or corrupt: {videos[which]}"


def test_corrupt_bytes_inside_a_video_are_refused(videos, tmp_path):
    from polypsam.errors import InvalidInputError
    from polypsam.frames import read_frames

    data = bytearray(videos["start"].read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(b ^ 0x5A for b in data[middle:middle + 2000])
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="video truncated or corrupt"):
        read_frames(bad)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(InvalidInputError, match="video truncated or corrupt"):
        read_frames(not_video)


@pytest.mark.parametrize("which", ["end", "start"])
def test_whole_video_decodes_the_same_in_any_order(videos, which):
    from polypsam.frames import read_frames

    expected = decoded_in_order(videos[which])
    frames = read_frames(videos[which])
    assert len(frames) == len(expected) == 25 and frames.fps == 10
    assert frames.names[:2] == ["0000", "0001"]
    frames.CACHE_BYTES = 1  # no cache: every backward step seeks to a keyframe
    for i in [24, 3, 4, 17, 0, 16, 15, 9, *range(25)]:
        np.testing.assert_array_equal(frames[i], expected[i], err_msg=f"frame {i}")
    reverse = read_frames(videos[which])
    for i in reversed(range(25)):
        np.testing.assert_array_equal(reverse[i], expected[i], err_msg=f"frame {i} backwards")


def test_track_on_a_truncated_video_fails_first_with_one_line(videos, tmp_path):
    """No model loads, no mask is written, and no advice to install imageio[ffmpeg]."""
    for which in ("cut_end", "cut_start"):
        out = tmp_path / which
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "polypsam.cli", "track", str(videos[which]), "--frame", "3",
             "--box", "10", "10", "40", "40", "-o", str(out), "--checkpoint", "missing.pt"],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"polypsam: error: video truncated or corrupt: {videos[which]}"]
        assert not out.exists()
        assert time.monotonic() - t0 < 60
