"""Exports read back by independent readers: SimpleITK, slicer-core, pycocotools, highdicom."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from polypsam.errors import InvalidInputError
from polypsam.export import export_labelmap, make_provenance
from polypsam.geometry import Volume, VolumeGeometry
from polypsam.io import read_volume

PROV = make_provenance(
    {"engine": "sam2", "model": "sam2.1_hiera_tiny", "checkpoint": "tiny.pt",
     "checkpoint_sha256": "ab" * 32, "polypsam_version": "0.1.0"},
    prompts={"boxes": [[10, 12, 30, 40]], "key_slice": 4})
OBLIQUE = VolumeGeometry((3.0, -2.0, 1.5), (0.7, 0.8, 2.5),
                         tuple(sitk.VersorTransform((0.1, 0.4, 0.9), 0.5).GetMatrix()))


def labels_volume() -> Volume:
    a = np.zeros((8, 30, 40), np.uint8)
    a[2:6, 5:20, 8:25] = 1
    a[3:8, 18:28, 22:38] = 3          # label 2 absent on purpose, label 3 overlaps a corner of 1
    return Volume(a, OBLIQUE)


def check_provenance(doc: dict) -> None:
    assert doc["model"] == "sam2.1_hiera_tiny" and doc["checkpoint_sha256"] == "ab" * 32
    assert doc["prompts"] == {"boxes": [[10, 12, 30, 40]], "key_slice": 4}
    assert doc["polypsam_version"] and doc["date"][:2] == "20"


@pytest.mark.parametrize("fmt,name", [("nifti", "lab.nii.gz"), ("nrrd", "lab.nrrd")])
def test_volume_labelmaps_read_back_by_simpleitk(tmp_path, fmt, name):
    vol = labels_volume()
    result = export_labelmap(vol, tmp_path / name, fmt, names=["polyp", "x", "lesion"],
                             provenance=PROV)
    image = sitk.ReadImage(str(result.path))
    assert np.array_equal(sitk.GetArrayFromImage(image), vol.array)
    assert np.allclose(image.GetSpacing(), OBLIQUE.spacing)
    assert np.allclose(image.GetOrigin(), OBLIQUE.origin)
    assert np.allclose(image.GetDirection(), OBLIQUE.direction, atol=1e-6)
    side = json.loads(result.sidecar.read_text())
    check_provenance(side["provenance"])
    assert [(s["label"], s["name"]) for s in side["segments"]] == [(1, "polyp"), (2, "x"),
                                                                  (3, "lesion")]
    if fmt == "nrrd":
        check_provenance(json.loads(image.GetMetaData("PolypSAM_Provenance")))
    else:
        assert image.GetMetaData("descrip").startswith("PolypSAM ")
        assert "sam2.1_hiera_tiny sha256:abababab" in image.GetMetaData("descrip")


def test_seg_nrrd_is_read_by_slicer_with_names_colours_terminology(slicer_core, slicer_scene,
                                                                  tmp_path):
    import slicer

    vol = labels_volume()
    vol.array[vol.array == 3] = 0
    vol.array[0, 0:4, 0:4] = 2
    result = export_labelmap(vol, tmp_path / "out.seg.nrrd", "seg.nrrd",
                             names={1: "polyp", 2: "speck"},
                             colours={1: (255, 0, 0), 2: (0, 0, 255)},
                             terminology={1: "polyp", 2: "lesion"}, provenance=PROV)
    node = slicer_core.logics["segmentations"].LoadSegmentationFromFile(
        str(result.path), False, "exported")
    assert node is not None
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 2
    expected = {"polyp": ((1, 0, 0), "68496003", 1), "speck": ((0, 0, 1), "52988006", 2)}
    reference = _reference(slicer, vol)
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        segment = seg.GetSegment(sid)
        colour, code, label = expected[segment.GetName()]
        assert np.allclose(segment.GetColor(), colour)
        term = segment.GetTerminology()
        assert f"SCT^{code}^" in term and "SCT^49755003^" in term
        # the labelmap Slicer holds, on the volume's grid in RAS, matches ours label for label
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(node, sid, reference)
        assert np.array_equal(arr.astype(bool), vol.array == label), segment.GetName()


def _reference(slicer, vol: Volume):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(node, np.zeros(vol.shape, np.uint8))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(vol.geometry.ijk_to_ras()))
    return node


def test_png_masks_per_frame_with_frame_names(tmp_path):
    frames = np.zeros((3, 20, 30), np.uint8)
    frames[0, 2:8, 3:9] = 1
    frames[2, 10:18, 10:28] = 2
    result = export_labelmap(list(frames), tmp_path / "png", "png", frame_names=["a", "b", "c"],
                             provenance=PROV)
    for n, name in enumerate("abc"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / f"{name}.png")), frames[n])
    check_provenance(json.loads(result.sidecar.read_text())["provenance"])
    with pytest.raises(InvalidInputError, match="distinct file names"):
        export_labelmap(frames, tmp_path / "png2", "png", frame_names=["a", "../b", "c"])


def coco_masks(path):
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    return coco, {(a["image_id"], a["category_id"]): coco.annToMask(a)
                  for a in coco.loadAnns(coco.getAnnIds())}


def test_coco_rle_decodes_to_the_same_pixels_for_ct_slices(tmp_path):
    vol = labels_volume()
    result = export_labelmap(vol, tmp_path / "ann.json", "coco", names=["polyp", "x", "lesion"],
                             provenance=PROV)
    coco, masks = coco_masks(result.path)
    assert len(coco.getImgIds()) == vol.shape[0]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["polyp", "x", "lesion"]
    expected = {(k + 1, lab): vol.array[k] == lab for k in range(vol.shape[0]) for lab in (1, 3)
                if (vol.array[k] == lab).any()}
    assert set(masks) == set(expected)   # one instance per segment per slice where present
    for key, mask in masks.items():
        assert np.array_equal(mask.astype(bool), expected[key])
    doc = json.loads(result.path.read_text())
    check_provenance(doc["info"]["polypsam_provenance"])
    ann = doc["annotations"][0]
    assert ann["area"] == expected[(ann["image_id"], ann["category_id"])].sum()
    assert doc["images"][0]["file_name"] == "slice_0000.png"


def test_coco_polygons_on_a_real_video_sequence(shared_data, manifest, tmp_path):
    from polypsam.evaluation import load_mask

    folder = shared_data / manifest["video"]["dir"] / "masks"
    paths = sorted(folder.iterdir())[:6]
    frames = np.stack([sitk.GetArrayFromImage(load_mask(p).image) for p in paths])
    names = [p.stem for p in paths]
    result = export_labelmap(frames, tmp_path / "video.json", "coco", names=["polyp"],
                             frame_names=names, terminology="polyp", coco_encoding="polygon",
                             provenance=PROV)
    coco, masks = coco_masks(result.path)
    assert [img["file_name"] for img in coco.loadImgs(coco.getImgIds())] == [
        f"{n}.png" for n in names]
    assert len(masks) == len(paths)
    for n in range(len(paths)):
        got, want = masks[(n + 1, 1)].astype(bool), frames[n].astype(bool)
        assert (got & want).sum() / (got | want).sum() > 0.97
    assert isinstance(json.loads(result.path.read_text())["annotations"][0]["segmentation"], list)
    # a rectangle is exact as a polygon
    box = np.zeros((1, 20, 20), np.uint8)
    box[0, 3:9, 5:15] = 1
    result = export_labelmap(box, tmp_path / "box.json", "coco", coco_encoding="polygon")
    _, masks = coco_masks(result.path)
    assert np.array_equal(masks[(1, 1)].astype(bool), box[0] == 1)


def test_dicom_seg_frames_equal_the_mask_and_reference_the_source(shared_data, tmp_path):
    import highdicom as hd
    import pydicom

    series = shared_data / "ct/totalsegmentator/example_ct_dicom"
    ct = read_volume(series)
    seg = read_volume(shared_data / "ct/totalsegmentator/example_seg_dicom.nii.gz")
    # the labels come on a flipped index order of the same grid; keep spleen and liver
    labels = seg.with_array(np.where(np.isin(seg.array, (1, 5)), seg.array, 0).astype(np.uint8))
    # the source as a list of files (as Slicer's DICOM database gives them)
    result = export_labelmap(labels, tmp_path / "seg.dcm", "dicom-seg",
                             names={1: "spleen", 5: "liver"}, terminology="tissue",
                             provenance=PROV, reference_dicom=sorted(series.iterdir()))
    ds = pydicom.dcmread(result.path)
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
               for p in series.iterdir()}
    src0 = pydicom.dcmread(next(iter(sources.values())), stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == src0.StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src0.SeriesInstanceUID
    refs = {r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == set(sources)
    assert "PolypSAM" in ds.ContentDescription and "sam2.1_hiera_tiny" in ds.SeriesDescription
    segments = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert set(segments) == {"spleen", "liver"}
    assert segments["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    assert segments["liver"].SegmentAlgorithmName == "PolypSAM"

    seg_doc = hd.seg.segread(result.path)
    numbers = {s.SegmentLabel: s.SegmentNumber for s in ds.SegmentSequence}
    # each source slice's frame, in physical space, equals our labelmap there
    ct_img = sitk.ReadImage(str(shared_data / "ct/totalsegmentator/example_seg_dicom.nii.gz"))
    for uid, path in sources.items():
        header = pydicom.dcmread(path, stop_before_pixels=True)
        pixels = seg_doc.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=[numbers["spleen"], numbers["liver"]],
            combine_segments=True, relabel=False)[0]
        ipp = np.array([float(v) for v in header.ImagePositionPatient])
        k = ct_img.TransformPhysicalPointToIndex(ipp.tolist())
        # slice of our labelmap through that physical plane (rows flip with the J axis)
        plane = labels.array[k[2]]
        if k[1] != 0:
            plane = plane[::-1]
        want = np.where(plane == 5, numbers["liver"], np.where(plane == 1, numbers["spleen"], 0))
        assert np.array_equal(pixels, want)
    assert ct.shape == labels.shape


def test_dicom_seg_omits_empty_frames(shared_data, tmp_path):
    import highdicom as hd
    import pydicom

    series = shared_data / "ct/totalsegmentator/example_ct_dicom"
    seg = read_volume(shared_data / "ct/totalsegmentator/example_seg_dicom.nii.gz")
    liver = (seg.array == 5).astype(np.uint8)
    liver[:4] = 0
    liver[16:] = 0  # the liver on 12 of the 20 slices
    result = export_labelmap(seg.with_array(liver), tmp_path / "seg.dcm", "dicom-seg",
                             names=["liver"], reference_dicom=series)
    ds = pydicom.dcmread(result.path)
    assert int(ds.NumberOfFrames) == 12  # one frame per non-empty slice, not 20
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
              for p in series.iterdir()}
    frames = ds.pixel_array.reshape(12, -1)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert uid in by_uid and frame.any()
    # the frames that are there hold the whole segmentation
    seg_doc = hd.seg.segread(result.path)
    assert seg_doc.get_volume(combine_segments=True).array.sum() == liver.sum()


def test_dicom_seg_bad_input(shared_data, tmp_path):
    bad_series = shared_data / "ct/totalsegmentator/example_ct_dicom_no_uids"
    seg = read_volume(shared_data / "ct/totalsegmentator/example_seg_dicom.nii.gz")
    with pytest.raises(InvalidInputError, match="empty .*UID"):
        export_labelmap(seg, tmp_path / "a.dcm", "dicom-seg", reference_dicom=bad_series)
    with pytest.raises(InvalidInputError, match="needs the source DICOM series"):
        export_labelmap(seg, tmp_path / "a.dcm", "dicom-seg")
    small = Volume(np.ones((20, 100, 100), np.uint8), seg.geometry)
    with pytest.raises(InvalidInputError, match=r"not on the reference DICOM series' grid"):
        export_labelmap(small, tmp_path / "a.dcm", "dicom-seg",
                        reference_dicom=shared_data / "ct/totalsegmentator/example_ct_dicom")


def test_bad_export_requests(tmp_path):
    vol = labels_volume()
    with pytest.raises(InvalidInputError, match="unknown export format"):
        export_labelmap(vol, tmp_path / "x", "stl")
    with pytest.raises(InvalidInputError, match="must end in .seg.nrrd"):
        export_labelmap(vol, tmp_path / "x.nrrd", "seg.nrrd")
    with pytest.raises(InvalidInputError, match="unknown terminology"):
        export_labelmap(vol, tmp_path / "x.seg.nrrd", "seg.nrrd", terminology="banana")
    with pytest.raises(InvalidInputError, match="fractional"):
        export_labelmap(np.full((2, 3, 3), 0.5), tmp_path / "x.nii.gz", "nifti")
    result = export_labelmap(vol, tmp_path, "seg.nrrd")
    assert result.path == tmp_path / "segmentation.seg.nrrd" and result.path.is_file()
