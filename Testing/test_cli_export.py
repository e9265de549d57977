"""``polypsam export`` and ``--export`` of segment/propagate/track, read back independently."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from polypsam import cli
from polypsam.cli import options as cli_options

CT_DICOM = "ct/totalsegmentator/example_ct_dicom"


@pytest.fixture
def use_engine(monkeypatch, engine):
    """Reuse the session engine instead of building one per command."""
    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: engine)
    return engine


def sidecar(path):
    return json.loads(path.with_name(path.name + ".provenance.json").read_text())


def test_export_frame_masks_folder_to_coco(shared_data, manifest, tmp_path, capsys):
    from pycocotools.coco import COCO

    from polypsam.evaluation import load_mask

    masks = shared_data / manifest["video"]["dir"] / "masks"
    out = tmp_path / "video.json"
    assert cli.main(["export", str(masks), "--to", "coco", "-o", str(out), "--names", "polyp",
                     "--colours", "255,0,0", "--terminology", "polyp"]) == 0
    coco = COCO(str(out))
    files = sorted(masks.iterdir())
    assert len(coco.getImgIds()) == len(files)
    cat, = coco.loadCats(coco.getCatIds())
    assert cat["name"] == "polyp" and cat["color"] == [255, 0, 0]
    for img in coco.loadImgs(coco.getImgIds())[:5]:
        ann, = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        want = sitk.GetArrayFromImage(load_mask(masks / img["file_name"]).image)
        assert np.array_equal(coco.annToMask(ann), want)
    assert sidecar(out)["provenance"]["source"] == str(masks)


def test_export_labelmap_to_seg_nrrd_then_dicom_seg_keeps_provenance(shared_data, tmp_path):
    import pydicom

    lab = sitk.ReadImage(str(shared_data / "ct/totalsegmentator/example_seg_dicom.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    small = sitk.GetImageFromArray(np.where(arr == 5, 1, 0).astype(np.uint8))
    small.CopyInformation(lab)
    src = tmp_path / "liver.nii.gz"
    sitk.WriteImage(small, str(src))
    src.with_name(src.name + ".provenance.json").write_text(json.dumps(
        {"provenance": {"model": "sam2.1_hiera_tiny", "checkpoint_sha256": "cd" * 32}}))
    out = tmp_path / "liver.seg.nrrd"
    assert cli.main(["export", str(src), "--to", "seg.nrrd", "-o", str(out),
                     "--names", "liver", "--terminology", "tissue"]) == 0
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(small))
    assert json.loads(back.GetMetaData("PolypSAM_Provenance"))["checkpoint_sha256"] == "cd" * 32
    assert back.GetMetaData("Segment0_Name") == "liver"
    dcm = tmp_path / "liver.dcm"
    assert cli.main(["export", str(src), "--to", "dicom-seg", "-o", str(dcm), "--reference",
                     str(shared_data / CT_DICOM), "--names", "liver"]) == 0
    ds = pydicom.dcmread(dcm)
    assert ds.SegmentSequence[0].SegmentLabel == "liver"
    assert "sam2.1_hiera_tiny" in ds.ContentDescription


def test_export_bad_input_is_one_line(shared_data, tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nope.nii.gz"), "--to", "nifti",
                     "-o", str(tmp_path / "x.nii.gz")]) == 2
    assert "labelmap not found" in capsys.readouterr().err
    seg = str(shared_data / "ct/totalsegmentator/example_seg.nii.gz")
    assert cli.main(["export", seg, "--to", "dicom-seg", "-o", str(tmp_path / "x.dcm")]) == 2
    assert "--reference" in capsys.readouterr().err
    assert cli.main(["export", seg, "--to", "dicom-seg", "-o", str(tmp_path / "x.dcm"),
                     "--reference", str(shared_data / CT_DICOM)]) == 2
    assert "not on the reference DICOM series' grid" in capsys.readouterr().err
    assert cli.main(["export", seg, "--to", "coco", "-o", str(tmp_path / "x.nrrd")]) == 2
    assert "must end in .json" in capsys.readouterr().err


def test_segment_frame_with_export_records_model_and_prompts(shared_data, manifest, use_engine,
                                                             tmp_path):
    entry = next(e for e in manifest["polyp"] if e["dataset"] == "cvc_clinicdb")
    out = tmp_path / "mask.png"
    box = [str(v) for v in entry["bbox_xyxy"]]
    assert cli.main(["segment", str(shared_data / entry["image"]), "--box", *box, "-o", str(out),
                     "--export", "seg.nrrd"]) == 0
    exported = tmp_path / "mask.seg.nrrd"
    image = sitk.ReadImage(str(exported))
    from PIL import Image

    assert np.array_equal(sitk.GetArrayFromImage(image)[0], np.asarray(Image.open(out)))
    prov = json.loads(image.GetMetaData("PolypSAM_Provenance"))
    assert prov["checkpoint_sha256"] == use_engine.info.checkpoint_sha256
    assert prov["model"] == use_engine.info.model
    assert prov["prompts"]["boxes"] == [[float(v) for v in entry["bbox_xyxy"]]]
    assert prov["command"] == "segment" and prov["polypsam_version"]


def test_propagate_dicom_series_exports_dicom_seg(shared_data, use_engine, tmp_path):
    import highdicom as hd

    out = tmp_path / "seg.nrrd"
    assert cli.main(["propagate", str(shared_data / CT_DICOM), "--box", "150", "200", "300",
                     "330", "--slices", "9", "10", "-o", str(out), "--export", "dicom-seg",
                     "--export-output", str(tmp_path / "seg.dcm")]) == 0
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert seg.get_volume(combine_segments=True).array.sum() == (labels == 1).sum()
    assert sidecar(tmp_path / "seg.dcm")["provenance"]["prompts"]["slices"] == [9, 10]


def test_track_exports_coco_with_frame_names(shared_data, manifest, use_engine, tmp_path):
    from pycocotools.coco import COCO
    from PIL import Image

    info = manifest["video"]
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("030.png", "031.png", "032.png"):
        shutil.copy(shared_data / info["dir"] / "frames" / name, frames / name)
    box = [str(v) for v in info["bbox_xyxy_per_frame"][5]]
    out = tmp_path / "masks"
    assert cli.main(["track", str(frames), "--frame", "1", "--box", *box, "-o", str(out),
                     "--export", "coco"]) == 0
    coco = COCO(str(out / "labels.coco.json"))
    names = [img["file_name"] for img in coco.loadImgs(coco.getImgIds())]
    assert names == ["030.png", "031.png", "032.png"]
    for img in coco.loadImgs(coco.getImgIds()):
        want = np.asarray(Image.open(out / img["file_name"])) == 1
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        got = coco.annToMask(anns[0]).astype(bool) if anns else np.zeros_like(want)
        assert np.array_equal(got, want)
    assert sidecar(out / "labels.coco.json")["provenance"]["prompts"]["key_frame"] == 1


def test_export_request_is_checked_before_the_model_runs(shared_data, manifest, tmp_path, capsys,
                                                         monkeypatch):
    def no_engine(args):
        raise AssertionError("the engine must not be built")

    monkeypatch.setattr(cli_options, "engine_from_args", no_engine)
    entry = manifest["polyp"][0]
    assert cli.main(["segment", str(shared_data / entry["image"]), "--box", "1", "1", "9", "9",
                     "-o", str(tmp_path / "m.png"), "--export", "dicom-seg"]) == 2
    assert "DICOM series folder" in capsys.readouterr().err


def test_propagate_output_then_export_dicom_seg_names_the_model(shared_data, use_engine, tmp_path,
                                                                capsys):
    """The README's two steps: -o writes provenance beside the labelmap, export finds it."""
    import pydicom

    out = tmp_path / "lesion.nrrd"
    assert cli.main(["propagate", str(shared_data / CT_DICOM), "--box", "150", "200", "300",
                     "330", "--slices", "9", "10", "-o", str(out)]) == 0
    recorded = sidecar(out)
    info = use_engine.info
    assert recorded["provenance"]["checkpoint_sha256"] == info.checkpoint_sha256
    assert recorded["provenance"]["prompts"]["slices"] == [9, 10]
    assert recorded["provenance"]["command"] == "propagate"
    assert [s["name"] for s in recorded["segments"]] == ["lesion_1"]
    dcm = tmp_path / "lesion.dcm"
    capsys.readouterr()
    assert cli.main(["export", str(out), "--to", "dicom-seg", "-o", str(dcm), "--reference",
                     str(shared_data / CT_DICOM)]) == 0
    ds = pydicom.dcmread(dcm)
    assert "model unknown" not in ds.ContentDescription
    assert info.model in ds.ContentDescription and info.model in ds.SeriesDescription
    assert ds.ManufacturerModelName == info.model[:64]
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    params = {p.split("=")[0]: p for p in str(algorithm.AlgorithmParameters).split(",")}
    assert info.checkpoint_sha256[:20] in params["checkpoint_sha256"]
    assert ds.SegmentSequence[0].SegmentLabel == "lesion_1"
    exported = sidecar(dcm)["provenance"]
    assert exported["prompts"]["slices"] == [9, 10] and exported["command"] == "propagate"


def test_every_segment_output_has_provenance_that_export_carries_over(
        shared_data, manifest, use_engine, tmp_path):
    entry = next(e for e in manifest["polyp"] if e["dataset"] == "cvc_clinicdb")
    out, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    assert cli.main(["segment", str(shared_data / entry["image"]), "--box",
                     *map(str, entry["bbox_xyxy"]), "--candidates", "-o", str(out),
                     "--overlay", str(overlay), "--names", "adenoma"]) == 0
    written = [out, overlay] + [tmp_path / f"mask_candidate{i}.png" for i in (1, 2, 3)]
    for path in written:
        doc = sidecar(path)
        assert doc["provenance"]["checkpoint_sha256"] == use_engine.info.checkpoint_sha256
        assert doc["provenance"]["prompts"]["boxes"] == [[float(v) for v in entry["bbox_xyxy"]]]
        assert doc["output"] == path.name
    assert sidecar(tmp_path / "mask_candidate2.png")["provenance"]["candidate"] == 2
    segment, = sidecar(out)["segments"]
    assert segment["name"] == "adenoma" and segment["type"][1] == "68496003"  # polyp of colon

    # a later export of the mask keeps the run's provenance and its segment
    from pycocotools.coco import COCO

    assert cli.main(["export", str(out), "--to", "coco", "-o", str(tmp_path / "c.json")]) == 0
    coco = COCO(str(tmp_path / "c.json"))
    cat, = coco.loadCats(coco.getCatIds())
    assert cat["name"] == "adenoma" and cat["terminology"]["type"][2] == "Polyp of colon"
    assert coco.dataset["info"]["polypsam_provenance"]["command"] == "segment"


def test_track_labels_polyps_and_takes_the_export_segment_options(shared_data, manifest,
                                                                   use_engine, tmp_path):
    from pycocotools.coco import COCO

    info = manifest["video"]
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("030.png", "031.png"):
        shutil.copy(shared_data / info["dir"] / "frames" / name, frames / name)
    box = [str(v) for v in info["bbox_xyxy_per_frame"][5]]
    plain, pictures = tmp_path / "plain", tmp_path / "pictures"
    assert cli.main(["track", str(frames), "--frame", "0", "--box", *box, "-o", str(plain),
                     "--export", "coco", "--overlay", str(pictures)]) == 0
    # an overlay folder outside -o carries its own provenance
    seen = json.loads((pictures / "provenance.json").read_text())
    assert seen["provenance"]["command"] == "track" and "picture" in seen
    assert sorted(p.name for p in pictures.iterdir()) == ["030.png", "031.png", "provenance.json"]
    cat, = COCO(str(plain / "labels.coco.json")).dataset["categories"]
    assert cat["name"] == "polyp_1"
    assert cat["terminology"]["type"] == ["SCT", "68496003", "Polyp of colon"]
    doc = json.loads((plain / "provenance.json").read_text())
    assert doc["segments"][0]["name"] == "polyp_1" and doc["files"] == ["030.png", "031.png"]
    assert doc["provenance"]["prompts"]["key_frame"] == 0

    named = tmp_path / "named"
    assert cli.main(["track", str(frames), "--frame", "0", "--box", *box, "-o", str(named),
                     "--export", "coco", "--names", "adenoma", "--colours", "255,0,0",
                     "--terminology", "mass", "--coco-encoding", "polygon"]) == 0
    coco = COCO(str(named / "labels.coco.json"))
    cat, = coco.dataset["categories"]
    assert cat["name"] == "adenoma" and cat["color"] == [255, 0, 0]
    assert cat["terminology"]["type"][2] == "Mass"
    assert all(isinstance(a["segmentation"], list) for a in coco.dataset["annotations"])

    # export of the -o folder later: the recorded segments and provenance are used
    again = tmp_path / "again.seg.nrrd"
    assert cli.main(["export", str(named), "--to", "seg.nrrd", "-o", str(again)]) == 0
    image = sitk.ReadImage(str(again))
    assert image.GetMetaData("Segment0_Name") == "adenoma"
    assert json.loads(image.GetMetaData("PolypSAM_Provenance"))["command"] == "track"

    # a bad segment option is refused before the model runs
    assert cli.main(["track", str(frames), "--frame", "0", "--box", *box, "-o",
                     str(tmp_path / "x"), "--terminology", "banana"]) == 2
    assert not (tmp_path / "x").exists()
