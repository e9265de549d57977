"""``polypsam propagate`` and ``polypsam track`` on real data (random-weight tiny SAM2 at 256)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG
from polypsam import cli
from polypsam.cli import options as cli_options
from polypsam.engine import EngineInfo, FrameMasks, MaskResult

CT = "ct/totalsegmentator/example_ct_sm.nii.gz"


def engine_args(checkpoint) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--config", TINY_CONFIG, "--device", "cpu",
            "--image-size", str(TEST_IMAGE_SIZE)]


@pytest.fixture
def use_engine(monkeypatch, engine):
    """Reuse the session engine instead of building one per command (the build is tested once)."""
    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: engine)
    return engine


def test_propagate_end_to_end_keeps_geometry(shared_data, tiny_checkpoint, tmp_path, capsys):
    import SimpleITK as sitk

    out = tmp_path / "seg.nrrd"
    rc = cli.main(["propagate", str(shared_data / CT), "--box", "30", "30", "70", "60",
                   "--slices", "14", "15", "--largest-component", "-o", str(out),
                   *engine_args(tiny_checkpoint)])
    assert rc == 0, capsys.readouterr().err
    seg = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(shared_data / CT))
    assert seg.GetSize() == ref.GetSize()
    np.testing.assert_allclose(seg.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(seg.GetDirection(), ref.GetDirection(), atol=1e-6)
    arr = sitk.GetArrayFromImage(seg)
    assert not arr[:14].any() and not arr[16:].any()
    assert "key slice 14" in capsys.readouterr().out


def test_track_folder_writes_masks_named_like_frames(shared_data, manifest, use_engine, tmp_path):
    info = manifest["video"] if isinstance(manifest["video"], dict) else manifest["video"][0]
    src = shared_data / info["dir"] / "frames"
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for name in ("030.png", "031.png", "032.png"):
        shutil.copy(src / name, frames_dir / name)
    box = [str(v) for v in info["bbox_xyxy_per_frame"][5]]  # frame 031 = index 5 of 026..050
    out = tmp_path / "masks"
    rc = cli.main(["track", str(frames_dir), "--frame", "1", "--box", *box, "-o", str(out),
                   "--overlay"])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["030.png", "031.png", "032.png"]
    assert sorted(p.name for p in (out / "overlay").glob("*.png")) == ["030.png", "031.png", "032.png"]
    from polypsam.io import read_image

    mask = read_image(out / "031.png")
    assert mask.shape == (288, 384) and set(np.unique(mask)) <= {0, 1}
    overlay = read_image(out / "overlay" / "031.png")
    assert overlay.shape[1:] == (384, 3) and overlay.shape[0] > 288  # frame, then the legend


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--slices", "10", "40"], "outside the volume"),
        (["--slices", "10", "12", "--key-slice", "13"], "--key-slice 13 lies outside"),
        (["--slices", "12", "10"], "inverted"),
        (["--slices", "10", "12", "--box", "0", "0", "500", "5"], "outside the image"),
    ],
)
def test_propagate_bad_input_is_one_line(shared_data, use_engine, tmp_path, capsys, extra, message):
    argv = ["propagate", str(shared_data / CT), "--box", "30", "30", "70", "60",
            "-o", str(tmp_path / "x.nrrd"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.nrrd").exists()


def test_bad_output_and_missing_inputs(shared_data, use_engine, tmp_path, capsys):
    assert cli.main(["propagate", str(shared_data / CT), "--box", "1", "1", "9", "9",
                     "--slices", "1", "2", "-o", str(tmp_path / "x.png")]) == 2
    assert ".nrrd" in capsys.readouterr().err
    assert cli.main(["track", str(tmp_path / "nope"), "--frame", "0", "--box", "1", "1", "9", "9",
                     "-o", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["track", str(tmp_path / "empty"), "--frame", "0", "--box", "1", "1", "9", "9",
                     "-o", str(tmp_path / "o")]) == 2
    assert "no PNG/JPEG frames" in capsys.readouterr().err


def test_track_reads_an_mp4_video(shared_data, manifest, tmp_path, tiny_checkpoint):
    """A video file is decoded frame by frame (PyAV) and tracked end to end."""
    from polypsam.frames import read_frames

    info = manifest["video"] if isinstance(manifest["video"], dict) else manifest["video"][0]
    video = next((shared_data / info["dir"]).glob("*.mp4"))
    frames = read_frames(video)
    pngs = read_frames(shared_data / info["dir"] / "frames")
    assert len(frames) == len(pngs) == 25
    # H.264 is lossy: same picture, small mean difference, same size and channel order
    for i in (0, 12, 24):
        assert frames[i].shape == pngs[i].shape == (288, 384, 3)
        assert np.abs(frames[i].astype(int) - pngs[i].astype(int)).mean() < 8
    box = [str(v) for v in info["bbox_xyxy_per_frame"][3]]
    out = tmp_path / "tracked"
    rc = cli.main(["track", str(video), "--frame", "3", "--box", *box, "-o", str(out),
                   "--checkpoint", str(tiny_checkpoint), "--config", TINY_CONFIG,
                   "--device", "cpu", "--image-size", "256"])
    assert rc == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == [f"{i:04d}.png" for i in range(25)]


def _polypsam_lines(stderr: str) -> str:
    """PolypSAM's own lines (errors, warnings); every other line is a progress line of a log."""
    import re

    lines = stderr.strip().splitlines()
    others = [ln for ln in lines if not ln.startswith("polypsam:")]
    assert all(re.match(r"(propagate|track): \d+/\d+ (slices|frames) \(", ln) for ln in others), others
    return "\n".join(ln for ln in lines if ln.startswith("polypsam:"))


class InterruptingEngine:
    """Segments boxes, then raises KeyboardInterrupt (Ctrl-C) on the second tracked frame."""

    info = EngineInfo("fake", "fake", "fake", "", "", 0, "cpu", "0")

    def segment_2d(self, image, boxes, *, intensity=None):
        return [MaskResult(np.ones(image.shape[:2], bool), 0.5, b) for b in boxes]

    def track(self, frames, prompts, *, start_frame, reverse=False, max_frames=None,
              intensity=None, cancel=None):
        yield FrameMasks(start_frame, {1: np.ones(frames[start_frame].shape[:2], bool)}, {1: 1.0})
        raise KeyboardInterrupt

    def close(self):
        pass


def test_ctrl_c_stops_cleanly_with_exit_130(shared_data, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: InterruptingEngine())
    out = tmp_path / "seg.nii.gz"
    rc = cli.main(["propagate", str(shared_data / CT), "--box", "30", "30", "70", "60",
                   "--slices", "10", "14", "-o", str(out)])
    err = _polypsam_lines(capsys.readouterr().err)
    assert rc == 130 and len(err.splitlines()) == 1 and "interrupted" in err
    assert not out.exists()
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    from polypsam.io import write_png

    for i in range(4):
        write_png(np.full((20, 30, 3), 60 * i, np.uint8), frames_dir / f"f{i}.png")
    rc = cli.main(["track", str(frames_dir), "--frame", "2", "--box", "1", "1", "9", "9",
                   "-o", str(tmp_path / "o")])
    err = _polypsam_lines(capsys.readouterr().err)
    assert rc == 130 and len(err.splitlines()) == 1
    assert err == f"polypsam: interrupted after 1 of 4 frames; nothing was written to {tmp_path / 'o'}"
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".polypsam-partial-*"))


class FailingEngine(InterruptingEngine):
    """Tracks two frames, then fails as a server that went away would."""

    def track(self, frames, prompts, *, start_frame, reverse=False, max_frames=None,
              intensity=None, cancel=None):
        from polypsam.errors import ServerError

        for i in range(start_frame, start_frame + 2):
            yield FrameMasks(i, {1: np.ones(frames[i].shape[:2], bool)}, {1: 1.0})
        raise ServerError("the server closed the connection during tracking")


def _frames(folder, count=6):
    from polypsam.io import write_png

    folder.mkdir()
    for i in range(count):
        write_png(np.full((20, 30, 3), 30 * i, np.uint8), folder / f"f{i}.png")
    return folder


def test_failed_track_leaves_no_partial_output(monkeypatch, tmp_path, capsys):
    """The masks are written in a temporary folder renamed on success: a run that fails at frame 3
    leaves neither -o nor the temporary folder (it used to leave 2 of 6 masks, silently)."""
    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: FailingEngine())
    frames = _frames(tmp_path / "frames")
    out = tmp_path / "results" / "masks"
    rc = cli.main(["track", str(frames), "--frame", "0", "--box", "1", "1", "9", "9", "-o", str(out),
                   "--overlay", "--export", "coco"])
    assert rc == 2
    assert _polypsam_lines(capsys.readouterr().err) == (
        "polypsam: error: the server closed the connection during tracking")
    assert not (tmp_path / "results").exists(), sorted(tmp_path.rglob("*"))


def test_track_into_an_existing_folder_replaces_its_masks_on_success(use_engine, tmp_path):
    frames = _frames(tmp_path / "frames", 3)
    out = tmp_path / "masks"
    (out / "overlay").mkdir(parents=True)
    (out / "f1.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    rc = cli.main(["track", str(frames), "--frame", "1", "--box", "5", "5", "20", "15", "-o", str(out),
                   "--overlay"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f1.png", "f2.png", "notes.txt",
                                                     "overlay", "provenance.json"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "f1.png").read_bytes() != b"old"
    assert sorted(p.name for p in (out / "overlay").iterdir()) == ["f0.png", "f1.png", "f2.png"]
    assert not list(tmp_path.glob(".polypsam-partial-*"))
