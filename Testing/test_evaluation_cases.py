"""Evaluation of files and folders: real dataset masks, label maps, grids, CLI, tables, plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from polypsam.cli import main
from polypsam.errors import InvalidInputError
from polypsam.evaluation import (box_plot, evaluate_case, evaluate_paths, format_summary,
                                 load_mask, read_csv, summarize, write_csv)


def polyp_cases(manifest, dataset):
    return [c for c in manifest["polyp"] if c["dataset"] == dataset]


@pytest.mark.parametrize("dataset", ["kvasir_seg", "cvc_clinicdb"])
def test_dataset_masks_load_as_one_object(shared_data, manifest, dataset):
    for case in polyp_cases(manifest, dataset):
        mask = load_mask(shared_data / case["mask"])
        array = sitk.GetArrayFromImage(mask.image)
        assert mask.binarized and mask.labels() == {1}
        assert array.shape == tuple(case["size_wh"][::-1])
        assert array.mean() == pytest.approx(case["mask_fg_frac"], abs=0.01)
        # the bounding box recorded in the manifest (drops tiny noise components) lies inside ours
        ys, xs = np.nonzero(array)
        x0, y0, x1, y1 = case["bbox_xyxy"]
        assert xs.min() <= x0 and ys.min() <= y0 and xs.max() >= x1 and ys.max() >= y1


def shifted_png(src_mask: np.ndarray, shift: int, path: Path) -> np.ndarray:
    out = np.zeros_like(src_mask)
    out[:, shift:] = src_mask[:, :-shift]
    Image.fromarray(out.astype(np.uint8) * 255).save(path)
    return out


def test_real_masks_against_shifted_copies(shared_data, manifest, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    expected = {}
    for case in polyp_cases(manifest, "cvc_clinicdb"):
        ref_path = shared_data / case["mask"]
        ref = sitk.GetArrayFromImage(load_mask(ref_path).image).astype(bool)
        pred = shifted_png(ref, 5, pred_dir / (ref_path.stem + ".png"))
        inter = (pred & ref).sum()
        expected[ref_path.stem] = 2 * inter / (pred.sum() + ref.sum())
    rows = evaluate_paths(pred_dir, shared_data / "polyp/cvc_clinicdb/masks", tolerance_mm=1.0)
    assert {r.case for r in rows} == set(expected)
    for r in rows:
        assert r.label == 1
        assert r.dice == pytest.approx(expected[r.case])
        assert r.hd == pytest.approx(5.0)  # pixels: images carry no spacing
        assert 0 < r.nsd < 1


def test_kvasir_jpeg_masks_binarised_even_with_compression_noise(shared_data, manifest, tmp_path):
    case = polyp_cases(manifest, "kvasir_seg")[0]
    path = shared_data / case["mask"]
    raw = np.asarray(Image.open(path).convert("L"))
    assert len(np.unique(raw)) > 2  # noise is really there
    row, = evaluate_case(path, path)
    assert row.dice == 1.0 and row.hd95 == 0.0
    with pytest.raises(InvalidInputError, match="colour image, not a label map"):
        load_mask(path, binarize=False)   # an RGB JPEG cannot be taken as a label map
    path_grey = tmp_path / "grey.png"
    Image.fromarray(raw // 2).save(path_grey)   # single channel, below half range
    assert len(load_mask(path_grey, binarize=False).labels()) > 2  # greys kept as labels


def test_label_maps_are_compared_per_label(shared_data, tmp_path):
    ref = shared_data / "ct/totalsegmentator/example_seg.nii.gz"
    image = sitk.ReadImage(str(ref))
    arr = sitk.GetArrayFromImage(image)
    pred_arr = arr.copy()
    pred_arr[pred_arr == 5] = 0                  # liver missed entirely
    pred = sitk.GetImageFromArray(pred_arr)
    pred.CopyInformation(image)
    sitk.WriteImage(pred, str(tmp_path / "pred.nii.gz"))
    rows = evaluate_case(tmp_path / "pred.nii.gz", ref, labels=[1, 5, 6])
    by = {r.label: r for r in rows}
    assert by[1].dice == 1.0 and by[6].hd95 == 0.0
    assert by[5].dice == 0.0 and math.isinf(by[5].hd95) and by[5].pred_voxels == 0
    assert by[5].ref_voxels == int((arr == 5).sum())
    all_rows = evaluate_case(tmp_path / "pred.nii.gz", ref)
    assert {r.label for r in all_rows} == {int(v) for v in np.unique(arr) if v}
    with pytest.raises(InvalidInputError, match=r"label\(s\) \[250\] are in neither"):
        evaluate_case(tmp_path / "pred.nii.gz", ref, labels=[1, 250])


def test_label_png_kept_and_spacing_of_one_slice_volumes(tmp_path):
    labels = np.zeros((30, 40), np.uint8)
    labels[5:15, 5:15] = 1
    labels[20:28, 20:35] = 2
    Image.fromarray(labels).save(tmp_path / "lab.png")
    mask = load_mask(tmp_path / "lab.png")
    assert not mask.binarized and mask.labels() == {1, 2}
    vol = sitk.GetImageFromArray(labels[None])
    vol.SetSpacing((0.5, 0.25, 3.0))
    sitk.WriteImage(vol, str(tmp_path / "one.nrrd"))
    shifted = np.zeros_like(labels)
    shifted[5:15, 7:17] = 1
    vol2 = sitk.GetImageFromArray(shifted[None])
    vol2.SetSpacing((0.5, 0.25, 3.0))
    sitk.WriteImage(vol2, str(tmp_path / "two.nrrd"))
    row, = evaluate_case(tmp_path / "two.nrrd", tmp_path / "one.nrrd", labels=[1])
    assert row.hd == pytest.approx(2 * 0.5)  # in-plane, 2-D (not the 3 mm slice thickness)


def test_different_grids_are_refused_naming_both_unless_resampled(tmp_path):
    ref_arr = np.zeros((10, 20, 20), np.uint8)
    ref_arr[2:8, 4:16, 4:16] = 1
    ref = sitk.GetImageFromArray(ref_arr)
    ref.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(ref, str(tmp_path / "gt.nii.gz"))
    # the same object on a grid twice as fine in-plane
    fine = sitk.Resample(ref, [40, 40, 10], sitk.Transform(), sitk.sitkNearestNeighbor,
                         (-0.25, -0.25, 0.0), (0.5, 0.5, 2.0), ref.GetDirection(), 0,
                         ref.GetPixelID())
    sitk.WriteImage(fine, str(tmp_path / "pred.nii.gz"))
    with pytest.raises(InvalidInputError) as err:
        evaluate_case(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz")
    msg = str(err.value)
    assert "different grids" in msg and "size 40x40x10" in msg and "size 20x20x10" in msg
    assert "pred.nii.gz" in msg and "gt.nii.gz" in msg and "--resample" in msg
    row, = evaluate_case(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz", resample=True)
    assert row.dice == 1.0


def test_images_of_another_resolution_are_scaled_when_resampled(shared_data, manifest, tmp_path):
    case = polyp_cases(manifest, "cvc_clinicdb")[0]
    ref_path = shared_data / case["mask"]
    ref = sitk.GetArrayFromImage(load_mask(ref_path).image)
    big = np.kron(ref, np.ones((2, 2), np.uint8)) * 255
    Image.fromarray(big).save(tmp_path / "big.png")
    with pytest.raises(InvalidInputError, match="different grids"):
        evaluate_case(tmp_path / "big.png", ref_path)
    row, = evaluate_case(tmp_path / "big.png", ref_path, resample=True)
    assert row.dice > 0.995


def test_missing_files_and_folders(tmp_path, shared_data):
    gt = shared_data / "polyp/cvc_clinicdb/masks"
    with pytest.raises(InvalidInputError, match="PRED not found"):
        evaluate_paths(tmp_path / "nope", gt)
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((288, 384), np.uint8)).save(tmp_path / "pred" / "1.png")
    with pytest.raises(InvalidInputError, match=r"4 reference case\(s\) have no prediction"):
        evaluate_paths(tmp_path / "pred", gt)
    with pytest.raises(InvalidInputError, match="two files or two folders"):
        evaluate_paths(tmp_path / "pred" / "1.png", gt)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="cannot read mask image"):
        evaluate_case(tmp_path / "bad.png", tmp_path / "bad.png")


def test_tables_summary_and_plot(tmp_path):
    from polypsam.evaluation.metrics import LabelMetrics

    rows = [LabelMetrics(f"c{n}", 1, d, d, d, d, 0.99, d, h, h, 10, 10, 2.0)
            for n, (d, h) in enumerate([(0.8, 2.0), (0.6, 4.0), (0.0, math.inf)])]
    path = write_csv(rows, tmp_path / "m.csv")
    back = read_csv(path)
    assert [r["case"] for r in back] == ["c0", "c1", "c2"] and math.isinf(back[2]["hd95"])
    stats = {s["metric"]: s for s in summarize(back)}
    assert stats["dice"]["mean"] == pytest.approx(np.mean([0.8, 0.6, 0.0]))
    assert stats["dice"]["sd"] == pytest.approx(np.std([0.8, 0.6, 0.0], ddof=1))
    assert stats["hd95"]["mean"] == pytest.approx(3.0) and stats["hd95"]["n_not_finite"] == 1
    text = format_summary(rows)
    assert "0.467 ± 0.416" in text and "(1 inf)" in text
    assert "volumes (3-D): distances in millimetres (mm), NSD tolerance 2 mm" in text
    png = box_plot(rows, tmp_path / "m.png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 600


def test_cli_evaluate_writes_table_and_plot(shared_data, manifest, tmp_path, capsys):
    gt = shared_data / "polyp/kvasir_seg/masks"
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in polyp_cases(manifest, "kvasir_seg"):
        ref = sitk.GetArrayFromImage(load_mask(shared_data / case["mask"]).image).astype(bool)
        shifted_png(ref, 3, pred / (Path(case["mask"]).stem + ".png"))
    code = main(["evaluate", str(pred), str(gt), "--tolerance-mm", "2", "-o",
                 str(tmp_path / "m.csv"), "--plot", str(tmp_path / "m.png")])
    out = capsys.readouterr().out
    assert code == 0 and "dice" in out and "±" in out
    rows = read_csv(tmp_path / "m.csv")
    assert len(rows) == 5 and all(0.9 < r["dice"] < 1 and r["hd"] == 3.0 for r in rows)
    assert {(r["distance_unit"], r["kind"], r["nsd_tolerance"]) for r in rows} == {
        ("px", "image", 2.0)}
    assert "distances in pixels (px), NSD tolerance 2 px" in out and "mm" not in out
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_cli_evaluate_reports_bad_input_in_one_line(tmp_path, shared_data, capsys):
    a = sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8))
    b = sitk.GetImageFromArray(np.ones((4, 5, 7), np.uint8))
    sitk.WriteImage(a, str(tmp_path / "a.nrrd"))
    sitk.WriteImage(b, str(tmp_path / "b.nrrd"))
    code = main(["evaluate", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nrrd"),
                 "-o", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "different grids" in err and "Traceback" not in err
    code = main(["evaluate", str(tmp_path / "a.nrrd"), str(tmp_path / "a.nrrd"),
                 "-o", str(tmp_path / "m.csv"), "--labels", "7"])
    assert code == 2 and "label(s) [7]" in capsys.readouterr().err
    code = main(["evaluate", str(tmp_path / "a.nrrd"), str(tmp_path / "a.nrrd"),
                 "-o", str(tmp_path / "m.txt")])
    assert code == 2 and ".csv" in capsys.readouterr().err


def test_csv_keeps_full_precision(tmp_path):
    import csv

    from polypsam.evaluation.metrics import LabelMetrics

    hd = 5.1269336847
    dice = 2 / 3
    row = LabelMetrics("c", 1, dice, 0.5, 0.5, 0.5, 0.99, 1 / 7, hd, math.inf, 10, 12, 2.0)
    path = write_csv([row], tmp_path / "m.csv")
    raw, = csv.DictReader(path.open())
    assert raw["hd95"] == "5.1269336847" and float(raw["dice"]) == dice  # exact round trip
    assert float(raw["nsd"]) == 1 / 7 and raw["hd"] == "inf"
    back, = read_csv(path)
    assert back["hd95"] == hd and back["dice"] == dice


LESION = "ct/medsam2_deeplesion/CT_Lesion_000015_01_01_103-115_lesion.nii.gz"


def test_units_kinds_and_frame_weighting(shared_data, manifest, tmp_path, capsys):
    """Image masks (pixels), a CT labelmap (mm) and a video (a folder of frame masks) in one run:
    every row states its unit and kind, means are per kind and unit, a video counts once."""
    import csv

    from polypsam.evaluation.tables import box_plot_figure

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    (gt / "clip").mkdir(parents=True)
    (pred / "clip").mkdir(parents=True)
    dice = {}
    for n, case in enumerate(polyp_cases(manifest, "cvc_clinicdb")[:2]):
        ref = sitk.GetArrayFromImage(load_mask(shared_data / case["mask"]).image).astype(bool)
        Image.fromarray(ref.astype(np.uint8) * 255).save(gt / f"cvc{n}.png")
        got = shifted_png(ref, 3 + n, pred / f"cvc{n}.png")
        dice[f"cvc{n}"] = 2 * (got & ref).sum() / (got.sum() + ref.sum())
    video = manifest["video"] if isinstance(manifest["video"], dict) else manifest["video"][0]
    for n, name in enumerate(("030.png", "031.png", "032.png")):
        ref = np.asarray(Image.open(shared_data / video["dir"] / "masks" / name).convert("L")) > 127
        Image.fromarray(ref.astype(np.uint8) * 255).save(gt / "clip" / name)
        got = shifted_png(ref, 2 * n + 2, pred / "clip" / name)
        dice[f"clip/{name[:3]}"] = 2 * (got & ref).sum() / (got.sum() + ref.sum())
    lesion = sitk.ReadImage(str(shared_data / LESION))
    sitk.WriteImage(lesion, str(gt / "lesion.nii.gz"))
    arr = sitk.GetArrayFromImage(lesion)
    moved = sitk.GetImageFromArray(np.roll(arr, 2, axis=2))  # 2 voxels along I
    moved.CopyInformation(lesion)
    sitk.WriteImage(moved, str(pred / "lesion.nii.gz"))

    assert main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "m.csv"),
                 "--tolerance-mm", "1.5", "--tolerance-px", "3"]) == 0
    out = capsys.readouterr().out
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "m.csv").open())}
    assert set(rows) == {"cvc0", "cvc1", "clip/030", "clip/031", "clip/032", "lesion"}
    assert rows["lesion"]["distance_unit"] == "mm" and rows["lesion"]["kind"] == "volume"
    assert float(rows["lesion"]["nsd_tolerance"]) == 1.5
    spacing_i = lesion.GetSpacing()[0]
    assert float(rows["lesion"]["hd"]) == pytest.approx(2 * spacing_i)  # mm, 2 voxels
    for name in ("cvc0", "cvc1", "clip/031"):
        assert rows[name]["distance_unit"] == "px" and rows[name]["kind"] == "image"
        assert float(rows[name]["nsd_tolerance"]) == 3.0
    assert float(rows["cvc1"]["hd"]) == 4.0 and rows["clip/031"]["group"] == "clip"
    assert rows["cvc0"]["group"] == "cvc0"

    # two blocks, never one mean over mm and pixels; the video counts once by default
    assert "volumes (3-D): distances in millimetres (mm), NSD tolerance 1.5 mm" in out
    assert "distances in pixels (px), NSD tolerance 3 px" in out
    assert "1 video(s): the frames of a video are averaged first" in out
    back = read_csv(tmp_path / "m.csv")
    by_video = {(s["kind"], s["metric"]): s for s in summarize(back)}
    clip = np.mean([dice[f"clip/{n}"] for n in ("030", "031", "032")])
    want = np.mean([dice["cvc0"], dice["cvc1"], clip])
    assert by_video[("image", "dice")]["mean"] == pytest.approx(want, rel=1e-12)
    assert by_video[("image", "dice")]["n"] == 3 and by_video[("volume", "dice")]["n"] == 1
    by_frame = {(s["kind"], s["metric"]): s for s in summarize(back, weighting="frame")}
    assert by_frame[("image", "dice")]["n"] == 5
    assert by_frame[("image", "dice")]["mean"] == pytest.approx(
        np.mean([v for k, v in dice.items()]), rel=1e-12)
    assert main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "f.csv"),
                 "--frame-weighting", "frame"]) == 0
    assert "every frame of a video counts as one case" in capsys.readouterr().out

    # the plot: one block per kind and unit, distances titled with their unit, n per box
    fig = box_plot_figure(back)
    titles = [ax.get_title() for ax in fig.axes]
    assert "volumes: hd95 (mm)" in titles and "images: hd95 (px)" in titles
    assert not any("hd" in t and "(" not in t for t in titles)
    image_dice = next(ax for ax in fig.axes if ax.get_title() == "images: dice")
    assert [t.get_text() for t in image_dice.get_xticklabels()] == ["1\nn=3"]
    assert any("triangle: mean" in t.get_text() for t in fig.texts)
