"""ROI -> voxel box and volume/frame reading on real slicer-core scenes.

Expected boxes are computed independently: ROI corners from the test's own rotation/centre/size,
mapped to continuous indices by SimpleITK (LPS) from the same grid; voxels inside the ROI are
found by brute force with plain NumPy matrices.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_fixtures import add_linear_transform, add_roi, add_volume, ijk_to_ras_matrix, rotation

from polypsam.errors import InvalidInputError

mrml = pytest.importorskip("polypsam.mrml")

SHAPE = (12, 30, 26)  # K, J, I
FLIP = np.diag([-1.0, -1.0, 1.0])

GRIDS = {
    "identity": ijk_to_ras_matrix(),
    "anisotropic": ijk_to_ras_matrix((0.7, 0.9, 2.5), (-5.0, 3.0, 7.0)),
    "flipped": ijk_to_ras_matrix((1.0, 1.0, 2.0), (20.0, 25.0, -4.0), FLIP),
    "oblique": ijk_to_ras_matrix(
        (0.7, 0.7, 2.5), (3.0, -2.0, 1.0), rotation("z", 25) @ rotation("x", 12) @ FLIP
    ),
    "left_handed": ijk_to_ras_matrix((1.0, 1.2, 1.5), (1.0, 2.0, 3.0), np.diag([1.0, 1.0, -1.0])),
}


def sitk_image(ijk_to_ras: np.ndarray, shape=SHAPE) -> sitk.Image:
    """A SimpleITK image (LPS) on the grid of ``ijk_to_ras``."""
    k, j, i = shape
    image = sitk.Image([i, j, k], sitk.sitkUInt8)
    lps = FLIP @ ijk_to_ras[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    return image


def roi_corners_ras(center, size, rot) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    return (rot @ (signs * np.asarray(size) / 2).T).T + np.asarray(center)


def expected_box(image: sitk.Image, corners_ras: np.ndarray):
    idx = np.array(
        [image.TransformPhysicalPointToContinuousIndex((FLIP @ c).tolist()) for c in corners_ras]
    )
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    size = image.GetSize()
    box = []
    for a in range(3):
        box += [max(0, math.ceil(lo[a] - 1e-6)), min(size[a] - 1, math.floor(hi[a] + 1e-6))]
    return tuple(box)


def voxels_inside(ijk_to_world: np.ndarray, center, size, rot, shape=SHAPE) -> np.ndarray:
    """(N, 3) IJK indices of voxel centres inside the ROI (brute force)."""
    k, j, i = shape
    ijk = np.stack(np.meshgrid(np.arange(i), np.arange(j), np.arange(k), indexing="ij"), -1)
    ijk = ijk.reshape(-1, 3)
    world = (ijk_to_world[:3, :3] @ ijk.T).T + ijk_to_world[:3, 3]
    local = (rot.T @ (world - np.asarray(center)).T).T
    inside = np.all(np.abs(local) <= np.asarray(size) / 2 + 1e-9, axis=1)
    return ijk[inside]


def world_center(ijk_to_ras, ijk) -> np.ndarray:
    return (ijk_to_ras @ np.r_[ijk, 1.0])[:3]


def check_box(vbox, expected, inside):
    assert vbox.extent == expected
    assert len(inside) > 0
    assert inside[:, 0].min() >= vbox.i0 and inside[:, 0].max() <= vbox.i1
    assert inside[:, 1].min() >= vbox.j0 and inside[:, 1].max() <= vbox.j1
    assert inside[:, 2].min() >= vbox.k0 and inside[:, 2].max() <= vbox.k1
    assert vbox.slice_range == range(vbox.k0, vbox.k1 + 1)
    assert vbox.key_slice == (vbox.k0 + vbox.k1) // 2
    for k in vbox.slice_range:
        box = vbox.box_on_slice(k)
        on_slice = inside[inside[:, 2] == k]
        assert vbox.i0 <= box.x0 < box.x1 <= vbox.i1 and vbox.j0 <= box.y0 < box.y1 <= vbox.j1
        if len(on_slice):
            assert box.x0 <= on_slice[:, 0].min() and on_slice[:, 0].max() <= box.x1
            assert box.y0 <= on_slice[:, 1].min() and on_slice[:, 1].max() <= box.y1


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("rotated_roi", [False, True], ids=["aligned_roi", "rotated_roi"])
def test_roi_to_voxel_box_matches_physical_space(slicer_scene, grid, rotated_roi):
    m = GRIDS[grid]
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16), m)
    center = world_center(m, (12.3, 14.6, 5.2))
    size = (9.0, 11.0, 7.0)
    rot = rotation("z", 30) @ rotation("y", 10) if rotated_roi else np.eye(3)
    roi = add_roi(slicer_scene, center, size, rot)

    vbox = mrml.roi_to_voxel_box(roi, volume)

    expected = expected_box(sitk_image(m), roi_corners_ras(center, size, rot))
    check_box(vbox, expected, voxels_inside(m, center, size, rot))


def test_identity_box_exact_values(slicer_scene):
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16))
    roi = add_roi(slicer_scene, (10.0, 12.0, 5.0), (8.0, 6.0, 4.0))  # spans 6..14, 9..15, 3..7
    vbox = mrml.roi_to_voxel_box(roi, volume)
    assert vbox.extent == (6, 14, 9, 15, 3, 7)
    assert vbox.key_slice == 5 and vbox.shape == (5, 7, 9)
    assert vbox.box().to_list() == [6.0, 9.0, 14.0, 15.0]
    assert vbox.box_on_slice(5).to_list() == [6.0, 9.0, 14.0, 15.0]


def test_rotated_roi_gives_tighter_per_slice_boxes(slicer_scene):
    """A ROI tilted about I: its cut by each slice is a band narrower than the voxel box."""
    volume = add_volume(slicer_scene, np.zeros((30, 30, 30), np.int16))
    rot = rotation("x", 40)
    roi = add_roi(slicer_scene, (15.0, 15.0, 15.0), (10.0, 12.0, 3.0), rot)
    vbox = mrml.roi_to_voxel_box(roi, volume)
    inside = voxels_inside(np.eye(4), (15, 15, 15), (10, 12, 3), rot, (30, 30, 30))
    check_box(vbox, expected_box(sitk_image(np.eye(4), (30, 30, 30)),
                                 roi_corners_ras((15, 15, 15), (10, 12, 3), rot)), inside)
    heights = [vbox.box_on_slice(k).y1 - vbox.box_on_slice(k).y0 for k in vbox.slice_range]
    assert max(heights) < vbox.j1 - vbox.j0
    assert vbox.box_on_slice(vbox.k0, tight=False) == vbox.box()


def test_roi_under_parent_transform(slicer_scene):
    m = GRIDS["oblique"]
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16), m)
    t = np.eye(4)
    t[:3, :3] = rotation("z", 20)
    t[:3, 3] = (4.0, -3.0, 2.0)
    center_world = world_center(m, (12.0, 15.0, 6.0))
    center_local = np.linalg.solve(t, np.r_[center_world, 1.0])[:3]
    roi = add_roi(slicer_scene, center_local, (8.0, 9.0, 6.0))
    roi.SetAndObserveTransformNodeID(add_linear_transform(slicer_scene, t).GetID())

    vbox = mrml.roi_to_voxel_box(roi, volume)
    rot_world = t[:3, :3]
    expected = expected_box(sitk_image(m), roi_corners_ras(center_world, (8, 9, 6), rot_world))
    check_box(vbox, expected, voxels_inside(m, center_world, (8, 9, 6), rot_world))


def test_volume_under_parent_transform(slicer_scene):
    m = GRIDS["anisotropic"]
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16), m)
    t = np.eye(4)
    t[:3, :3] = rotation("x", 15)
    t[:3, 3] = (-6.0, 1.0, 9.0)
    volume.SetAndObserveTransformNodeID(add_linear_transform(slicer_scene, t).GetID())
    hardened = t @ m
    center = world_center(hardened, (13.0, 11.0, 6.0))
    roi = add_roi(slicer_scene, center, (6.0, 7.0, 8.0))

    vbox = mrml.roi_to_voxel_box(roi, volume)
    expected = expected_box(sitk_image(hardened), roi_corners_ras(center, (6, 7, 8), np.eye(3)))
    check_box(vbox, expected, voxels_inside(hardened, center, (6, 7, 8), np.eye(3)))
    assert np.allclose(mrml.ijk_to_world(volume), hardened)


def test_roi_partly_outside_is_clamped(slicer_scene):
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16))
    roi = add_roi(slicer_scene, (0.0, 0.0, 11.0), (10.0, 10.0, 10.0))
    assert mrml.roi_to_voxel_box(roi, volume).extent == (0, 5, 0, 5, 6, 11)


def test_flat_roi_gives_its_nearest_slice(slicer_scene):
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16), GRIDS["anisotropic"])
    center = world_center(GRIDS["anisotropic"], (10.0, 10.0, 4.3))
    roi = add_roi(slicer_scene, center, (6.0, 6.0, 0.0))
    vbox = mrml.roi_to_voxel_box(roi, volume)
    assert (vbox.k0, vbox.k1, vbox.key_slice) == (4, 4, 4)


@pytest.mark.parametrize(
    "center,size,message",
    [
        ((100.0, 10.0, 5.0), (5.0, 5.0, 5.0), "outside"),
        ((10.0, 10.0, -30.0), (5.0, 5.0, 5.0), "outside"),
        ((10.3, 10.0, 5.0), (0.3, 5.0, 5.0), "thinner than one voxel along I"),
        ((10.0, 10.4, 5.0), (5.0, 0.1, 5.0), "thinner than one voxel along J"),
        ((10.0, 10.0, 5.0), (1.0, 5.0, 5.0), "single voxel column along I"),
    ],
)
def test_bad_rois_are_rejected(slicer_scene, center, size, message):
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16))
    roi = add_roi(slicer_scene, center, size)
    with pytest.raises(InvalidInputError, match=message):
        mrml.roi_to_voxel_box(roi, volume)


def test_missing_inputs_are_rejected(slicer_scene):
    volume = add_volume(slicer_scene, np.zeros(SHAPE, np.int16))
    roi = add_roi(slicer_scene, (5.0, 5.0, 5.0), (4.0, 4.0, 4.0))
    with pytest.raises(InvalidInputError, match="no ROI"):
        mrml.roi_to_voxel_box(None, volume)
    with pytest.raises(InvalidInputError, match="no volume"):
        mrml.roi_to_voxel_box(roi, None)
    with pytest.raises(InvalidInputError, match="must be a vtkMRMLVolumeNode"):
        mrml.roi_to_voxel_box(roi, roi)


# ---- volumes and frames ------------------------------------------------------------------


@pytest.mark.parametrize("grid", ["oblique", "left_handed"])
def test_volume_from_node_matches_simpleitk(slicer_scene, grid):
    m = GRIDS[grid]
    array = np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.int16)
    node = add_volume(slicer_scene, array, m)
    volume = mrml.volume_from_node(node)
    assert np.array_equal(volume.array, array)
    volume.array[0, 0, 0] += 1  # a copy, not a view of the node's memory
    assert volume.array[0, 0, 0] != array[0, 0, 0]
    ref = sitk_image(m)
    assert np.allclose(volume.geometry.origin, ref.GetOrigin())
    assert np.allclose(volume.geometry.spacing, ref.GetSpacing())
    assert np.allclose(volume.geometry.direction, ref.GetDirection())


def test_volume_from_node_hardens_linear_transform(slicer_scene):
    m = GRIDS["flipped"]
    node = add_volume(slicer_scene, np.ones(SHAPE, np.int16), m)
    t = np.eye(4)
    t[:3, :3] = rotation("y", 30)
    t[:3, 3] = (1.0, 2.0, 3.0)
    node.SetAndObserveTransformNodeID(add_linear_transform(slicer_scene, t).GetID())
    assert np.allclose(mrml.volume_from_node(node).geometry.ijk_to_ras(), t @ m)


def test_volume_from_node_rejects_bad_input(slicer_scene):
    import vtk

    label = add_volume(slicer_scene, np.zeros(SHAPE, np.uint8), class_name="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InvalidInputError, match="label map"):
        mrml.volume_from_node(label)
    with pytest.raises(InvalidInputError, match="no input volume"):
        mrml.volume_from_node(None)
    rgb = add_volume(slicer_scene, np.zeros((1, 4, 5, 3), np.uint8), class_name="vtkMRMLVectorVolumeNode")
    with pytest.raises(InvalidInputError, match="3 components"):
        mrml.volume_from_node(rgb)

    node = add_volume(slicer_scene, np.zeros(SHAPE, np.int16))
    warp = slicer_scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    tps = vtk.vtkThinPlateSplineTransform()
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p in [(0, 0, 0), (30, 0, 0), (0, 30, 0), (0, 0, 30), (15, 15, 15)]:
        src.InsertNextPoint(p)
        dst.InsertNextPoint(p[0] + (3 if p == (15, 15, 15) else 0), p[1], p[2])
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    tps.SetBasisToR()
    warp.SetAndObserveTransformToParent(tps)
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InvalidInputError, match="non-linear"):
        mrml.volume_from_node(node)


def test_frame_from_vector_node(slicer_scene):
    rgb = np.random.default_rng(1).integers(0, 256, (1, 24, 32, 3)).astype(np.uint8)
    node = add_volume(slicer_scene, rgb, class_name="vtkMRMLVectorVolumeNode")
    frame = mrml.frame_from_vector_node(node)
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, rgb[0])
    grey = add_volume(slicer_scene, rgb[..., 0])
    assert np.array_equal(mrml.frame_from_vector_node(grey), np.repeat(rgb[0, ..., :1], 3, -1))
    stack = add_volume(slicer_scene, np.zeros((2, 24, 32, 3), np.uint8), class_name="vtkMRMLVectorVolumeNode")
    with pytest.raises(InvalidInputError, match="expected"):
        mrml.frame_from_vector_node(stack)


def test_box_rows_follow_the_rois_names_and_choice(slicer_scene):
    """The box list's rows: every ROI in scene order with its current name, checked when chosen;
    other nodes change nothing (the widget rebuilds only when the rows change)."""
    a = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "A")
    b = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "B")
    before = mrml.box_rows(slicer_scene, [b, None])
    assert before == [(a.GetID(), "A", False), (b.GetID(), "B", True)]
    slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "not a box")
    a.SetCenter(1.0, 2.0, 3.0)
    assert mrml.box_rows(slicer_scene, [b]) == before
    a.SetName("renamed")
    slicer_scene.RemoveNode(b)
    assert mrml.box_rows(slicer_scene, [b]) == [(a.GetID(), "renamed", False)]
