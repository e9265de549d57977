"""The Export button's library side in Slicer: ``.seg.nrrd`` through Slicer's own storage node
(desktop Slicer has no slicerio), and which formats this Python can export and why not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_fixtures import add_linear_transform, add_volume, ijk_to_ras_matrix, rotation


def _scene_with_segments(scene):
    """An oblique CT under a parent transform; two segments with provenance, one empty one."""
    from polypsam import mrml

    array = np.zeros((7, 30, 36), np.int16)
    ijk_to_ras = ijk_to_ras_matrix((0.7, 0.8, 2.5), (10.0, -5.0, 30.0), rotation("z", 25))
    volume = add_volume(scene, array, ijk_to_ras, name="ct|A")  # "|" separates Slicer's tags
    shift = np.eye(4)
    shift[:3, :3] = rotation("x", 10)
    shift[:3, 3] = (3.0, -4.0, 7.5)
    volume.SetAndObserveTransformNodeID(add_linear_transform(scene, shift).GetID())
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    lesion = np.zeros(array.shape, bool)
    lesion[2:5, 8:20, 10:22] = True
    polyp = np.zeros(array.shape, bool)
    polyp[1:3, 22:28, 25:33] = True
    mrml.write_mask_to_segment(seg, "Lesion", lesion, volume, color=(1.0, 0.5, 0.0),
                               provenance={"operation": "propagate", "model": "tiny"},
                               terminology="lesion")
    mrml.write_mask_to_segment(seg, "Polyp", polyp, volume, color=(0.0, 0.0, 1.0),
                               provenance={"operation": "segment"}, terminology="polyp")
    seg.GetSegmentation().AddEmptySegment("", "Empty", (0.2, 0.9, 0.2))
    return volume, seg


def test_seg_nrrd_is_written_by_slicers_storage_node_on_the_volume_grid(slicer_core, slicer_scene,
                                                                       tmp_path):
    """Slicer's own writer: the same labels and grid as the NIfTI export, names, colours,
    terminology, label values, and PolypSAM's tags (read_provenance works after reloading)."""
    from polypsam import mrml
    from polypsam.mrml import exporting

    volume, seg = _scene_with_segments(slicer_scene)
    labels = mrml.export_segment_labelmap(seg, volume)
    out = exporting.export_segmentation(seg, volume, tmp_path / "all.seg.nrrd", "seg.nrrd")
    nifti = exporting.export_segmentation(seg, volume, tmp_path / "all.nii.gz", "nifti")
    written, reference = sitk.ReadImage(str(out.path)), sitk.ReadImage(str(nifti.path))
    assert written.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), labels)
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert [written.GetMetaData(f"Segment{n}_LabelValue") for n in range(3)] == ["1", "2", "3"]

    node = slicer_core.logics["segmentations"].LoadSegmentationFromFile(str(out.path), False, "back")
    back = node.GetSegmentation()
    assert [back.GetNthSegment(n).GetName() for n in range(3)] == ["Lesion", "Polyp", "Empty"]
    assert np.allclose(back.GetSegment(back.GetSegmentIdBySegmentName("Lesion")).GetColor(),
                       (1.0, 0.5, 0.0), atol=1 / 255)
    assert "SCT^68496003^" in back.GetSegment(back.GetSegmentIdBySegmentName("Polyp")).GetTerminology()
    for name in ("Lesion", "Polyp"):
        assert mrml.read_provenance(node, name) == mrml.read_provenance(seg, name)
        np.testing.assert_array_equal(mrml.export_segment_labelmap(node, volume, [name]) > 0,
                                      mrml.export_segment_labelmap(seg, volume, [name]) > 0)
    sidecar = json.loads(out.sidecar.read_text())
    import vtk

    tag = vtk.reference("")
    assert back.GetSegment(back.GetSegmentIdBySegmentName("Empty")).GetTag("PolypSAM_Provenance", tag)
    assert json.loads(str(tag)) == sidecar["provenance"], "the export's provenance, '|' included"
    assert sidecar["provenance"]["source"] == "ct|A"


def test_exporting_some_segments_writes_only_those(slicer_core, slicer_scene, tmp_path):
    from polypsam.mrml import exporting

    volume, seg = _scene_with_segments(slicer_scene)
    out = exporting.export_segmentation(seg, volume, tmp_path / "p.seg.nrrd", "seg.nrrd",
                                        segments=["Polyp"])
    node = slicer_core.logics["segmentations"].LoadSegmentationFromFile(str(out.path), False, "p")
    assert node.GetSegmentation().GetNumberOfSegments() == 1
    assert seg.GetSegmentation().GetNumberOfSegments() == 3, "the scene's segmentation is unchanged"


def test_formats_this_python_can_export_and_why_not():
    """With only Slicer 5.10's packages: COCO is offered (pycocotools), DICOM SEG hidden."""
    from polypsam.mrml import exporting

    slicer_510 = {"SimpleITK", "PIL", "pydicom", "numpy"}
    found = exporting.export_formats(find_spec=lambda name: object() if name in slicer_510 else None,
                                     version=lambda name: {"pydicom": "2.4.4"}.get(name))
    by_format = {s.feature: s for s in found}
    assert list(by_format) == ["seg.nrrd", "nifti", "nrrd", "png", "coco", "dicom-seg"]
    assert all(by_format[f].status == "ready" for f in ("seg.nrrd", "nifti", "nrrd", "png"))
    assert by_format["coco"].status == "install"
    assert by_format["coco"].requirements == ("pycocotools==2.0.11",)
    assert by_format["dicom-seg"].status == "unavailable"
    assert "Slicer 5.12 or newer" in by_format["dicom-seg"].reason
    no_sitk = exporting.format_support("nifti", find_spec=lambda name: None)
    assert no_sitk.status == "unavailable" and "SimpleITK" in no_sitk.reason
    from polypsam.mrml import dependencies

    with pytest.raises(dependencies.DependencyInstallError, match="Slicer 5.12"):
        exporting.ensure_export_format("dicom-seg", find_spec=lambda name: None,
                                       version=lambda name: "2.4.4",
                                       confirm=lambda text: pytest.fail("asked"))
    assert exporting.ensure_export_format("png").ready
