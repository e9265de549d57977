"""``polypsam segment`` as a user runs it: a real process on real colonoscopy frames and CT."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG


def run_cli(*args, check_ok=True):
    proc = subprocess.run(
        [sys.executable, "-m", "polypsam.cli", *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )
    if check_ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def model_args(tiny_checkpoint):
    return ["--checkpoint", tiny_checkpoint, "--config", TINY_CONFIG, "--device", "cpu",
            "--image-size", TEST_IMAGE_SIZE]


def polyp_entries(manifest, dataset):
    return [e for e in manifest["polyp"] if e["dataset"] == dataset]


def test_segment_colonoscopy_frame_with_two_boxes(shared_data, manifest, model_args, tmp_path):
    entry = polyp_entries(manifest, "cvc_clinicdb")[0]
    x0, y0, x1, y1 = entry["bbox_xyxy"]
    out, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    proc = run_cli("segment", shared_data / entry["image"], "--box", x0, y0, x1, y1,
                   "--box", 300, 20, 370, 80, "-o", out, "--overlay", overlay, *model_args)
    labels = np.asarray(Image.open(out))
    width, height = entry["size_wh"]
    assert labels.shape == (height, width)
    assert set(np.unique(labels)) <= {0, 1, 2}
    picture = np.asarray(Image.open(overlay))
    source = np.asarray(Image.open(shared_data / entry["image"]).convert("RGB"))
    assert picture.shape[1:] == (width, 3) and picture.shape[0] > height  # the legend below
    picture = picture[:height]  # 384 x 288 is not enlarged
    changed = np.any(picture != source, axis=2)
    # the box prompts are drawn as 1-pixel outlines, in their label's colour
    outline = np.zeros_like(changed)
    for bx0, by0, bx1, by1 in ((x0, y0, x1, y1), (300, 20, 370, 80)):
        bx0, by0, bx1, by1 = (int(round(v)) for v in (bx0, by0, bx1, by1))
        outline[by0, bx0:bx1 + 1] = outline[by1, bx0:bx1 + 1] = True
        outline[by0:by1 + 1, bx0] = outline[by0:by1 + 1, bx1] = True
    assert np.all(picture[int(round(y0)), int(round(x0)):int(round(x1)) + 1] == (0, 255, 0))
    # contours are drawn only where there is a mask, the prompts on their outline, nowhere else
    assert not np.any(changed & (labels == 0) & ~outline)
    assert "label 1: box (40, 155, 263, 279)" in proc.stdout or f"({x0}, {y0}" in proc.stdout


def test_segment_kvasir_jpeg(shared_data, manifest, model_args, tmp_path):
    entry = polyp_entries(manifest, "kvasir_seg")[-1]
    out = tmp_path / "k.png"
    run_cli("segment", shared_data / entry["image"], "--box", *entry["bbox_xyxy"], "-o", out,
            *model_args)
    width, height = entry["size_wh"]
    assert np.asarray(Image.open(out)).shape == (height, width)


def test_segment_ct_slice_keeps_volume_geometry(shared_data, model_args, tmp_path):
    source = shared_data / "ct/totalsegmentator/example_ct_sm.nii.gz"
    out = tmp_path / "slice.nrrd"
    run_cli("segment", source, "--slice", 12, "--box", 20, 15, 90, 70, "--window", "abdomen",
            "-o", out, *model_args)
    ct, seg = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
    assert seg.GetSize() == ct.GetSize()
    np.testing.assert_allclose(seg.GetOrigin(), ct.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(seg.GetSpacing(), ct.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(seg.GetDirection(), ct.GetDirection(), atol=1e-6)
    labels = sitk.GetArrayFromImage(seg)
    written = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    assert set(written.tolist()) <= {12}


def test_segment_dicom_series_slice(shared_data, model_args, tmp_path):
    folder = shared_data / "ct/totalsegmentator/example_ct_dicom"
    out = tmp_path / "dicom.nii.gz"
    run_cli("segment", folder, "--slice", 5, "--box", 100, 120, 300, 330, "-o", out, *model_args)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ct, seg = reader.Execute(), sitk.ReadImage(str(out))
    assert seg.GetSize() == ct.GetSize() == (512, 512, 20)
    # physical position of voxel (0,0,5) agrees
    np.testing.assert_allclose(seg.TransformIndexToPhysicalPoint((0, 0, 5)),
                               ct.TransformIndexToPhysicalPoint((0, 0, 5)), atol=1e-3)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--box", "-5", "0", "10", "10"], "outside the image"),
        (["--box", "50", "50", "10", "60"], "inverted"),
        (["--box", "10", "10", "10", "60"], "zero width"),
        (["--box", "1", "1", "9", "9", "--key-slice", "2"], "--key-slice applies to volumes"),
        (["--box", "1", "1", "9", "9", "--slice", "2"], "--key-slice applies to volumes"),
        (["--box", "1", "1", "9", "9", "--device", "quantum"], "unknown device"),
        (["--box", "1", "1", "9", "9", "--window", "liverish"], "intensity setting"),
    ],
)
def test_cli_bad_input_gives_one_line(shared_data, model_args, tmp_path, extra, message):
    image = shared_data / "polyp/cvc_clinicdb/images/100.png"
    args = [a for a in model_args]
    if "--device" in extra:
        i = args.index("--device")
        del args[i:i + 2]
    proc = run_cli("segment", image, *extra, "-o", tmp_path / "m.png", *args, check_ok=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("polypsam:")]
    assert len(lines) == 1


def test_cli_missing_weights_names_the_file_to_place(tmp_path):
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    proc = run_cli("segment", image, "--box", 1, 1, 9, 9, "-o", tmp_path / "m.png",
                   "--checkpoint", "sam2.1_hiera_small", "--no-download", check_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sam2.1_hiera_small.pt" in proc.stderr and "place it at" in proc.stderr


def test_cli_corrupt_checkpoint(tmp_path):
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 1000)
    proc = run_cli("segment", image, "--box", 1, 1, 9, 9, "-o", tmp_path / "m.png",
                   "--checkpoint", bad, "--config", TINY_CONFIG, check_ok=False)
    assert proc.returncode == 2 and "could not be read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_volume_needs_slice_and_volume_output(shared_data, tmp_path):
    source = shared_data / "ct/totalsegmentator/example_ct_sm.nii.gz"
    proc = run_cli("segment", source, "--box", 1, 1, 9, 9, "-o", tmp_path / "m.nrrd", check_ok=False)
    assert proc.returncode == 2 and "--key-slice K" in proc.stderr
    proc = run_cli("segment", source, "--slice", 3, "--box", 1, 1, 9, 9, "-o", tmp_path / "m.png",
                   check_ok=False)
    assert proc.returncode == 2 and ".nrrd" in proc.stderr


def test_two_boxes_print_the_pixels_written_and_help_states_the_overlap_rule(
        shared_data, manifest, engine, tmp_path, capsys, monkeypatch):
    import re

    from polypsam import cli, io
    from polypsam.cli import options as cli_options

    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: engine)
    entry = polyp_entries(manifest, "cvc_clinicdb")[0]
    x0, y0, x1, y1 = entry["bbox_xyxy"]
    boxes = [(x0, y0, x1, y1), (x0 + 10, y0 + 10, 383, 287)]  # two overlapping boxes
    out = tmp_path / "mask.png"
    args = ["segment", str(shared_data / entry["image"]), "-o", str(out)]
    for b in boxes:
        args += ["--box", *map(str, b)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    written = np.asarray(Image.open(out))
    counts = {int(m[1]): int(m[2]) for m in re.finditer(r"label (\d+): .* pixels (\d+)", printed)}
    assert counts == {1: int((written == 1).sum()), 2: int((written == 2).sum())}

    # independently: the raw masks, and the rule (higher score wins, a tie keeps the lower label)
    first, second = engine.segment_2d(io.read_image(shared_data / entry["image"]), boxes)
    both = first.mask & second.mask
    winner = 1 if first.score >= second.score else 2
    assert np.all(written[both] == winner)
    loser = second if winner == 1 else first
    lost = int(both.sum())
    assert lost > 0, "the two boxes' masks overlap (random weights: large masks)"
    assert f"pixels {int(loser.mask.sum()) - lost} ({lost} overlapping pixels went to" \
               " higher-scoring labels)" in printed

    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the pixel goes to the object with the higher score" in help_text
    assert "on a tie, the lower label" in help_text
def test_cli_missing_input_says_file_not_found(tmp_path):
    """A typo in a frame's name is a missing file, not a missing volume."""
    typo = tmp_path / "images" / "1000.png"
    for command in (["segment", typo, "--box", 1, 1, 9, 9, "-o", tmp_path / "m.png"],
                    ["propagate", tmp_path / "ct.nii.gz", "--box", 1, 1, 9, 9, "--slices", 0, 1,
                     "-o", tmp_path / "m.nrrd"],
                    ["track", tmp_path / "clip.mp4", "--frame", 0, "--box", 1, 1, 9, 9,
                     "-o", tmp_path / "masks"]):
        proc = run_cli(*command, check_ok=False)
        assert proc.returncode == 2, proc.stderr
        missing = command[1]
        assert proc.stderr.strip().splitlines() == [
            f"polypsam: error: file {'or folder ' if command[0] == 'track' else ''}not found:"
            f" {missing}"]
    assert not (tmp_path / "masks").exists() and not (tmp_path / "m.png").exists()
