"""CLI clicks, mask prompts and candidates: ``segment``, ``propagate`` and ``track`` (in-process)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_rgb
from polypsam import cli, io
from polypsam.cli import options as cli_options
from polypsam.engine import Prompt
from polypsam.geometry import Volume, VolumeGeometry


@pytest.fixture
def use_engine(monkeypatch, engine):
    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: engine)
    return engine


@pytest.fixture
def frame_png(tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(synthetic_rgb(80, 110, seed=50)).save(path)
    return path


def test_segment_clicks_with_a_box_equal_the_library(use_engine, frame_png, tmp_path, capsys):
    out, overlay = tmp_path / "m.png", tmp_path / "o.png"
    rc = cli.main(["segment", str(frame_png), "--box", "20", "15", "80", "65", "--point", "44", "40",
                   "--negative-point", "90", "70", "-o", str(out), "--overlay", str(overlay)])
    assert rc == 0, capsys.readouterr().err
    (expected,) = use_engine.segment_2d(io.read_image(frame_png), [Prompt(
        box=(20, 15, 80, 65), points=[(44, 40), (90, 70)], labels=[1, 0])])
    np.testing.assert_array_equal(io.read_image(out), expected.mask.astype(np.uint8))
    printed = capsys.readouterr().out
    assert "label 1: box (20, 15, 80, 65) + 1 include / 1 exclude points" in printed
    from polypsam.overlay import EXCLUDE_CLICK, INCLUDE_CLICK, PALETTE

    picture = io.read_image(overlay)  # 110 x 80: enlarged 4 times, each pixel a 4 x 4 block
    assert picture.shape[1] == 440 and picture.shape[0] > 320  # the legend is below
    assert tuple(picture[40 * 4 + 2, 44 * 4 + 2]) == INCLUDE_CLICK
    assert tuple(picture[70 * 4 + 2, 90 * 4 + 2]) == EXCLUDE_CLICK
    assert INCLUDE_CLICK not in {tuple(c) for c in PALETTE}  # never a contour's colour


def test_segment_candidates_one_file_each_and_scores(use_engine, frame_png, tmp_path, capsys):
    out = tmp_path / "m.png"
    rc = cli.main(["segment", str(frame_png), "--point", "44", "40", "--candidates", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    (expected,) = use_engine.segment_2d(io.read_image(frame_png), [Prompt(points=[(44, 40)], labels=[1])],
                                        multimask=True)
    printed = capsys.readouterr().out
    for i, (cand, score) in enumerate(zip(expected.candidates, expected.candidate_scores), 1):
        np.testing.assert_array_equal(io.read_image(tmp_path / f"m_candidate{i}.png"), cand.astype(np.uint8))
        assert f"candidate {i}: score {score:.3f}" in printed
    np.testing.assert_array_equal(io.read_image(out), expected.mask.astype(np.uint8))
    assert f"candidate {expected.best + 1}: score {expected.score:.3f}" in printed and "(best, in -o)" in printed


def test_segment_mask_prompt(use_engine, frame_png, tmp_path, capsys):
    mask = np.zeros((80, 110), np.uint8)
    mask[30:50, 30:60] = 255
    Image.fromarray(mask).save(tmp_path / "prompt.png")
    rc = cli.main(["segment", str(frame_png), "--mask-prompt", str(tmp_path / "prompt.png"),
                   "--negative-point", "100", "5", "-o", str(tmp_path / "m.png")])
    assert rc == 0, capsys.readouterr().err
    (expected,) = use_engine.segment_2d(io.read_image(frame_png), [Prompt(
        mask=mask > 0, points=[(100, 5)], labels=[0])])
    np.testing.assert_array_equal(io.read_image(tmp_path / "m.png"), expected.mask.astype(np.uint8))


@pytest.mark.parametrize("extra,message", [
    (["--box", "1", "1", "20", "20", "--box", "30", "30", "50", "50", "--point", "5", "5"],
     "2 --box options with clicks"),
    (["--point", "200", "5"], r"point \(200, 5\) lies outside the image"),
    (["--negative-point", "5", "5"], "exclude points alone"),
    ([], "give a prompt"),
    (["--mask-prompt", "MISSING"], "not found"),
    (["--mask-prompt", "SMALL"], "is 10x10 pixels; the image is 110x80"),
    (["--mask-prompt", "EMPTY"], "is empty"),
    (["--box", "1", "1", "20", "20", "--box", "30", "30", "50", "50", "--candidates"], "one prompt"),
])
def test_segment_bad_prompts_are_one_line(use_engine, frame_png, tmp_path, capsys, extra, message):
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((80, 110), np.uint8)).save(tmp_path / "empty.png")
    names = {"MISSING": str(tmp_path / "missing.png"), "SMALL": str(tmp_path / "small.png"),
             "EMPTY": str(tmp_path / "empty.png")}
    extra = [names.get(a, a) for a in extra]
    assert cli.main(["segment", str(frame_png), *extra, "-o", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not (tmp_path / "m.png").exists()


@pytest.fixture
def small_volume(tmp_path):
    from test_video import moving_disc_frames

    arr = np.stack([f[..., 0].astype(np.int16) for f in moving_disc_frames(5, seed=51)])
    vol = Volume(arr, VolumeGeometry((3.0, -2.0, 5.0), (0.8, 0.9, 2.0)))
    path = io.write_volume(vol, tmp_path / "vol.nrrd")
    return path, vol


def test_propagate_clicks_on_key_and_other_slices_equal_the_library(use_engine, small_volume, tmp_path, capsys):
    from polypsam.engine import FramePrompt
    from polypsam.propagation import propagate

    path, vol = small_volume
    out = tmp_path / "seg.nrrd"
    rc = cli.main(["propagate", str(path), "--slices", "0", "4", "--key-slice", "2",
                   "--point", "18", "26", "--slice-point", "4", "20", "24",
                   "--slice-negative-point", "4", "50", "5", "--window", "40,400", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    from polypsam.preprocess import parse_intensity

    expected = propagate(use_engine, io.read_volume(path), Prompt(points=[(18, 26)], labels=[1]),
                         (0, 4), 2, intensity=parse_intensity("40,400"),
                         refinements=[FramePrompt(4, 1, points=[(20, 24), (50, 5)], labels=[1, 0])])
    np.testing.assert_array_equal(io.read_volume(out).array, expected.labelmap.array)


def test_propagate_mask_prompt_seeds_as_it_is(use_engine, small_volume, tmp_path, capsys):
    path, vol = small_volume
    seed = np.zeros(vol.shape, np.uint8)
    seed[2, 20:30, 10:25] = 1
    seed_path = io.write_volume(vol.with_array(seed), tmp_path / "seed.nrrd")
    out = tmp_path / "seg.nrrd"
    rc = cli.main(["propagate", str(path), "--slices", "1", "3", "--mask-prompt", str(seed_path),
                   "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_array_equal(io.read_volume(out).array[2], seed[2])


@pytest.mark.parametrize("extra,message", [
    (["--point", "18", "26", "--slice-point", "9", "20", "24"], "click slice 9 lies outside the slices 0..4"),
    (["--point", "18", "26", "--slice-point", "3", "200", "24"], r"point \(200, 24\) lies outside"),
    (["--box", "1", "1", "20", "20", "--box", "30", "30", "50", "40", "--slice-point", "3", "5", "5"],
     "2 --box options with clicks"),
    (["--point", "18", "26", "--slice-point", "2", "20", "24"], "key prompt"),
])
def test_propagate_bad_clicks(use_engine, small_volume, tmp_path, capsys, extra, message):
    import re

    path, _ = small_volume
    out = tmp_path / "seg.nrrd"
    assert cli.main(["propagate", str(path), "--slices", "0", "4", *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


def test_track_clicks_on_frames(use_engine, tmp_path, capsys):
    from test_video import moving_disc_frames

    from polypsam.engine import FramePrompt
    from polypsam.propagation import track

    frames = moving_disc_frames(4, seed=52)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"f{i}.png")
    out = tmp_path / "masks"
    rc = cli.main(["track", str(folder), "--frame", "1", "--point", "17", "25",
                   "--frame-point", "3", "19", "27", "-o", str(out), "--overlay"])
    assert rc == 0, capsys.readouterr().err
    expected = track(use_engine, frames, 1, Prompt(points=[(17, 25)], labels=[1]),
                     refinements=[FramePrompt(3, 1, points=[(19, 27)], labels=[1])])
    for i in range(4):
        np.testing.assert_array_equal(io.read_image(out / f"f{i}.png"), expected.labels[i])
    assert (out / "overlay" / "f3.png").exists()
    assert cli.main(["track", str(folder), "--frame", "1", "--point", "17", "25",
                     "--frame-point", "7", "19", "27", "-o", str(out)]) == 2
    assert "click frame 7 lies outside the frames 0..3" in capsys.readouterr().err


def test_segment_outputs_appear_together_or_not_at_all(use_engine, frame_png, tmp_path, capsys):
    """-o, the candidates and the overlay are staged and moved together: when one cannot be put
    in place (a folder named like the overlay), none of them is written."""
    (tmp_path / "o.png").mkdir()
    out = tmp_path / "m.png"
    rc = cli.main(["segment", str(frame_png), "--point", "44", "40", "--candidates", "-o", str(out),
                   "--overlay", str(tmp_path / "o.png")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == f"polypsam: error: cannot write {tmp_path / 'o.png'}: a folder of that name is in the way"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.png", "o.png"]
    rc = cli.main(["segment", str(frame_png), "--point", "44", "40", "--candidates", "-o", str(out),
                   "--overlay", str(tmp_path / "overlay.png")])
    assert rc == 0
    written = ["m.png", "m_candidate1.png", "m_candidate2.png", "m_candidate3.png", "overlay.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["frame.png", "o.png", *written, *(f"{name}.provenance.json" for name in written)])
