"""Masks -> segments on real slicer-core scenes: placement, region-only writes, atomicity, undo."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_fixtures import add_volume, ijk_to_ras_matrix, rotation

from polypsam.engine import EngineInfo
from polypsam.errors import InvalidInputError

mrml = pytest.importorskip("polypsam.mrml")

SHAPE = (10, 24, 20)  # K, J, I
OBLIQUE = ijk_to_ras_matrix(
    (0.7, 0.7, 2.5), (3.0, -2.0, 1.0),
    rotation("z", 25) @ rotation("x", 12) @ np.diag([-1.0, -1.0, 1.0]),
)
INFO = EngineInfo("sam2", "sam2.1_hiera_tiny", "sam2.1_hiera_t.yaml", "tiny.pt", "ab" * 32, 1024,
                  "cpu", "0.1.0")


def blob(shape=SHAPE, center=(5, 12, 9), radii=(3, 6, 5)) -> np.ndarray:
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c, r = center, radii
    return ((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 <= 1


@pytest.fixture
def volume(slicer_scene):
    return add_volume(slicer_scene, np.zeros(SHAPE, np.int16), OBLIQUE, name="ct")


@pytest.fixture
def seg_node(slicer_scene):
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    node.CreateDefaultDisplayNodes()
    return node


def segment_array(seg_node, name, volume):
    """The segment's voxels on the volume grid (Slicer's own export path)."""
    import slicer

    segment_id = seg_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, segment_id, volume).astype(bool)


def snapshot(seg_node, volume):
    segmentation = seg_node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    return names, mrml.export_segment_labelmap(seg_node, volume)


def test_mask_lands_on_intended_voxels(seg_node, volume):
    mask = blob()
    segment_id = mrml.write_mask_to_segment(
        seg_node, "Polyp", mask, volume, color=(1.0, 0.5, 0.0),
        provenance={**INFO.provenance(), "box": [3, 4, 15, 20], "key_slice": 5},
    )
    segment = seg_node.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Polyp"
    assert np.allclose(segment.GetColor(), (1.0, 0.5, 0.0))
    assert np.array_equal(segment_array(seg_node, "Polyp", volume), mask)
    assert np.array_equal(mrml.export_segment_labelmap(seg_node, volume) == 1, mask)
    tags = mrml.read_provenance(seg_node, "Polyp")
    assert tags["model"] == "sam2.1_hiera_tiny" and tags["checkpoint_sha256"] == "ab" * 32
    assert tags["polypsam_version"] == "0.1.0"
    assert tags["box"] == "3,4,15,20" and tags["key_slice"] == "5"
    value = __import__("vtk").reference("")
    assert segment.GetTag("PolypSAM.model", value) and str(value) == "sam2.1_hiera_tiny"
    # the same id or name addresses the same segment
    assert mrml.write_mask_to_segment(seg_node, segment_id, mask, volume) == segment_id
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1


def test_geometry_and_volume_references_agree(seg_node, volume):
    geometry_volume = mrml.volume_from_node(volume)
    mask = blob()
    mrml.write_mask_to_segment(seg_node, "a", mask, geometry_volume)
    mrml.write_mask_to_segment(seg_node, "b", mask, geometry_volume.geometry)
    assert np.array_equal(segment_array(seg_node, "a", volume), mask)
    assert np.array_equal(segment_array(seg_node, "b", volume), mask)


def test_only_the_region_is_rewritten(seg_node, volume):
    first = blob()
    mrml.write_mask_to_segment(seg_node, "Polyp", first, volume)
    region = (2, 11, 5, 16, 3, 6)  # i0, i1, j0, j1, k0, k1
    new = np.zeros(SHAPE, bool)
    new[:, :, :] = True  # outside the region this must be ignored
    mrml.write_mask_to_segment(seg_node, "Polyp", new, volume, region=region)
    expected = first.copy()
    expected[3:7, 5:17, 2:12] = True
    assert np.array_equal(segment_array(seg_node, "Polyp", volume), expected)

    crop = np.zeros((4, 12, 10), bool)  # a region-sized crop clears the region
    mrml.write_mask_to_segment(seg_node, "Polyp", crop, volume, region=region)
    expected[3:7, 5:17, 2:12] = False
    assert np.array_equal(segment_array(seg_node, "Polyp", volume), expected)


def test_other_segments_untouched_in_a_shared_layer(seg_node, volume):
    a, b = blob(center=(5, 8, 6), radii=(3, 4, 4)), blob(center=(5, 16, 14), radii=(3, 4, 4))
    mrml.write_mask_to_segment(seg_node, "A", a, volume)
    mrml.write_mask_to_segment(seg_node, "B", b, volume)
    segmentation = seg_node.GetSegmentation()
    segmentation.CollapseBinaryLabelmaps(False)  # both segments in one labelmap layer
    id_a, id_b = (segmentation.GetSegmentIdBySegmentName(n) for n in "AB")
    assert segmentation.GetNumberOfLayers() == 1
    values = {segmentation.GetSegment(i).GetLabelValue() for i in (id_a, id_b)}
    assert len(values) == 2

    grown = blob(center=(5, 12, 10), radii=(4, 8, 8))  # overlaps B
    mrml.write_mask_to_segment(seg_node, "A", grown, volume, region=(0, 19, 0, 23, 0, 9))
    assert np.array_equal(segment_array(seg_node, "A", volume), grown)
    assert np.array_equal(segment_array(seg_node, "B", volume), b)
    for segment_id, expected in ((id_a, grown), (id_b, b)):
        import slicer

        internal = slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg_node, segment_id)
        assert (internal == segmentation.GetSegment(segment_id).GetLabelValue()).sum() == expected.sum()


def test_seg_nrrd_roundtrip_matches_simpleitk_in_physical_space(slicer_core, seg_node, volume, tmp_path):
    mask = blob()
    mrml.write_mask_to_segment(seg_node, "Polyp", mask, volume)
    path = str(tmp_path / "polyp.seg.nrrd")
    seg_node.AddDefaultStorageNode()
    storage = seg_node.GetStorageNode()
    storage.SetFileName(path)
    assert storage.WriteData(seg_node)

    loaded = slicer_core.logics["segmentations"].LoadSegmentationFromFile(path, False, "reloaded")
    assert np.array_equal(segment_array(loaded, "Polyp", volume), mask)

    image = sitk.ReadImage(path)
    label = loaded.GetSegmentation().GetSegment(
        loaded.GetSegmentation().GetSegmentIdBySegmentName("Polyp")).GetLabelValue()
    data = sitk.GetArrayFromImage(image)
    if data.ndim == 4:
        data = data[..., 0]
    flip = np.diag([-1.0, -1.0, 1.0])
    kji = np.argwhere(np.ones(SHAPE, bool))
    ras = (OBLIQUE[:3, :3] @ kji[:, ::-1].T).T + OBLIQUE[:3, 3]
    found = np.zeros(len(kji), bool)
    for n, point in enumerate(ras @ flip.T):
        index = image.TransformPhysicalPointToIndex(point.tolist())
        if all(0 <= index[a] < image.GetSize()[a] for a in range(3)):
            found[n] = data[index[2], index[1], index[0]] == label
    assert np.array_equal(found.reshape(SHAPE), mask)


def test_failures_change_nothing(slicer_scene, seg_node, volume):
    mrml.write_mask_to_segment(seg_node, "Polyp", blob(), volume)
    before = snapshot(seg_node, volume)
    bad_calls = [
        (dict(mask_kji=np.ones((10, 24, 19), bool)), "mask shape"),
        (dict(mask_kji=np.ones((3, 3, 3), bool), region=(0, 5, 0, 5, 0, 5)), "fits neither"),
        (dict(region=(0, 5, 0, 5, 0, 10)), "exceeds the volume"),
        (dict(region=(4, 2, 0, 5, 0, 5)), "empty"),
        (dict(mask_kji=np.ones(SHAPE, np.float32)), "boolean"),
        (dict(reference=None), "no reference"),
        (dict(reference=add_volume(slicer_scene, np.zeros(SHAPE, np.int16), ijk_to_ras_matrix(
            (0.5, 0.5, 1.0)))), "another voxel grid"),
        (dict(segment=""), "non-empty"),
    ]
    for overrides, message in bad_calls:
        for name in ("Polyp", "New"):
            kwargs = dict(segment=name, mask_kji=np.zeros(SHAPE, bool), reference=volume)
            kwargs.update(overrides)
            region = kwargs.pop("region", None)
            with pytest.raises(InvalidInputError, match=message):
                mrml.write_mask_to_segment(
                    seg_node, kwargs["segment"], kwargs["mask_kji"], kwargs["reference"], region=region
                )
            names, labels = snapshot(seg_node, volume)
            assert names == before[0] and np.array_equal(labels, before[1]), overrides
    with pytest.raises(InvalidInputError, match="no segmentation"):
        mrml.write_mask_to_segment(None, "Polyp", blob(), volume)


def test_undo_and_redo_restore_segments(seg_node, volume):
    first, second = blob(), blob(center=(4, 10, 8), radii=(2, 3, 3))
    mrml.write_mask_to_segment(seg_node, "Polyp", first, volume)
    assert not mrml.undo(seg_node)  # nothing saved yet

    mrml.save_state_for_undo(seg_node)
    mrml.write_mask_to_segment(seg_node, "Polyp", second, volume)
    mrml.write_mask_to_segment(seg_node, "Other", first, volume)
    assert np.array_equal(segment_array(seg_node, "Polyp", volume), second)

    assert mrml.undo(seg_node)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(segment_array(seg_node, "Polyp", volume), first)

    assert mrml.redo(seg_node)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 2
    assert np.array_equal(segment_array(seg_node, "Polyp", volume), second)


def test_undo_states_are_released_with_their_segmentation(slicer_scene, volume):
    import gc
    import weakref

    mrml.forget_undo_history()
    kept = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "kept")
    gone = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "gone")
    for node in (kept, gone):
        mrml.save_state_for_undo(node)
        mrml.write_mask_to_segment(node, "Polyp", blob(), volume)
    assert mrml.undo_history_count() == 2
    segmentation = weakref.ref(gone.GetSegmentation())

    slicer_scene.RemoveNode(gone)
    del gone
    gc.collect()
    assert mrml.undo_history_count() == 1, "the removed node's undo states were dropped"
    assert segmentation() is None, "and nothing keeps its segmentation alive"
    assert mrml.undo(kept), "the other node keeps its undo"

    mrml.forget_undo_history(kept)
    assert mrml.undo_history_count() == 0 and not mrml.undo(kept)


def test_export_segment_labelmap_orders_and_checks_segments(seg_node, volume):
    a, b = blob(center=(5, 8, 6), radii=(3, 4, 4)), blob(center=(5, 16, 14), radii=(3, 4, 4))
    mrml.write_mask_to_segment(seg_node, "A", a, volume)
    mrml.write_mask_to_segment(seg_node, "B", b, volume)
    labels = mrml.export_segment_labelmap(seg_node, volume, ["B", "A"])
    assert labels.shape == SHAPE
    assert np.array_equal(labels == 1, b) and np.array_equal(labels == 2, a)
    scene = seg_node.GetScene()
    assert scene.GetFirstNodeByName("__polypsam_export__") is None
    with pytest.raises(InvalidInputError, match="no segment 'C'"):
        mrml.export_segment_labelmap(seg_node, volume, ["C"])


def test_empty_mask_empties_the_segment_and_keeps_others(seg_node, volume):
    mrml.write_mask_to_segment(seg_node, "A", blob(), volume)
    mrml.write_mask_to_segment(seg_node, "B", blob(center=(2, 4, 4), radii=(1, 2, 2)), volume)
    mrml.write_mask_to_segment(seg_node, "A", np.zeros(SHAPE, bool), volume)
    assert not segment_array(seg_node, "A", volume).any()
    assert np.array_equal(segment_array(seg_node, "B", volume), blob(center=(2, 4, 4), radii=(1, 2, 2)))


def test_voxel_box_region_from_roi(slicer_scene, seg_node, volume):
    """A VoxelBox from roi_to_voxel_box is a valid region; its crop lands inside the ROI box."""
    from slicer_fixtures import add_roi

    center = (OBLIQUE @ np.array([10.0, 12.0, 5.0, 1.0]))[:3]
    vbox = mrml.roi_to_voxel_box(add_roi(slicer_scene, center, (6.0, 6.0, 8.0)), volume)
    crop = np.ones(vbox.shape, bool)
    mrml.write_mask_to_segment(seg_node, "P", crop, volume, region=vbox)
    expected = np.zeros(SHAPE, bool)
    expected[vbox.k0 : vbox.k1 + 1, vbox.j0 : vbox.j1 + 1, vbox.i0 : vbox.i1 + 1] = True
    assert np.array_equal(segment_array(seg_node, "P", volume), expected)
