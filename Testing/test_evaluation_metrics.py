"""Evaluation metrics against analytic values, brute force and SimpleITK's own filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from polypsam.evaluation import label_metrics, overlap_metrics, surface_metrics
from polypsam.evaluation.metrics import LabelMetrics

SPACING = (0.7, 1.3, 2.5)  # x (I), y (J), z (K) in mm


def image(array, spacing=SPACING, direction=None, origin=None):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(spacing[: img.GetDimension()])
    if direction is not None:
        img.SetDirection(direction)
    if origin is not None:
        img.SetOrigin(origin)
    return img


def box(shape, lo, hi):
    a = np.zeros(shape, bool)
    a[tuple(slice(l, h) for l, h in zip(lo, hi))] = True
    return a


def ellipsoid(shape, centre_mm, radius_mm, spacing=SPACING):
    """A physical sphere on an anisotropic grid (array order k, j, i; spacing x, y, z)."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    z, y, x = k * spacing[2], j * spacing[1], i * spacing[0]
    cz, cy, cx = centre_mm
    return (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius_mm ** 2


def brute_surface(mask, spacing=SPACING):
    """Independent: boundary voxels by numpy erosion (face neighbours, zero padding) as mm."""
    padded = np.pad(mask, 1)
    inner = padded.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            inner &= np.roll(padded, shift, axis=axis)
    border = (padded & ~inner)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    idx = np.argwhere(border).astype(float)
    return idx * np.array(spacing[: mask.ndim][::-1])


def brute_distances(a, b):
    pa, pb = brute_surface(a), brute_surface(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1), d.min(axis=0)


def test_box_overlaps_match_their_analytic_volumes():
    shape = (12, 30, 40)
    a = box(shape, (2, 5, 4), (10, 25, 30))      # 8 x 20 x 26
    b = box(shape, (4, 8, 10), (12, 30, 40))     # 8 x 22 x 30
    inter = 6 * 17 * 20
    va, vb = 8 * 20 * 26, 8 * 22 * 30
    m = overlap_metrics(a, b)
    assert m["dice"] == pytest.approx(2 * inter / (va + vb))
    assert m["iou"] == pytest.approx(inter / (va + vb - inter))
    assert m["precision"] == pytest.approx(inter / va)
    assert m["recall"] == pytest.approx(inter / vb)
    n = a.size
    assert m["accuracy"] == pytest.approx((n - (va - inter) - (vb - inter)) / n)


def test_overlap_agrees_with_simpleitk_label_overlap_filter():
    shape = (20, 40, 50)
    a = ellipsoid(shape, (24, 26, 17), 11)
    b = ellipsoid(shape, (26, 22, 20), 12)
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(image(a), image(b))
    m = overlap_metrics(a, b)
    assert m["dice"] == pytest.approx(f.GetDiceCoefficient(), rel=1e-9)
    assert m["iou"] == pytest.approx(f.GetJaccardCoefficient(), rel=1e-9)
    # SimpleITK's false negative error = FN / |ref| with (source=pred, target=ref)
    assert 1 - m["recall"] == pytest.approx(f.GetFalseNegativeError(), rel=1e-9)


def test_shifted_box_has_the_shift_as_hausdorff_distance_in_mm():
    shape = (16, 40, 40)
    a = box(shape, (2, 5, 5), (10, 35, 35))
    b = box(shape, (5, 5, 5), (13, 35, 35))       # 3 slices further along K (z: 2.5 mm)
    m = surface_metrics(image(a), image(b), tolerance=1.0)
    assert m["hd"] == pytest.approx(3 * 2.5)
    # only the two caps (top of A, bottom of B, 28 x 30 voxels each, plus their borders along
    # the walls at distance 2.5 and 5 mm) are farther than 1 mm from the other surface
    d_ab, d_ba = brute_distances(a, b)
    within = (d_ab <= 1.0).sum() + (d_ba <= 1.0).sum()
    assert m["nsd"] == pytest.approx(within / (d_ab.size + d_ba.size))
    assert m["hd95"] == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def test_concentric_spheres_surface_distance_is_the_radius_difference():
    shape = (24, 46, 80)
    centre = (29.0, 29.0, 28.0)
    inner = ellipsoid(shape, centre, 12.0)
    outer = ellipsoid(shape, centre, 18.0)
    m = surface_metrics(image(inner), image(outer), tolerance=2.0)
    voxel = max(SPACING)
    assert abs(m["hd95"] - 6.0) <= voxel
    assert abs(m["hd"] - 6.0) <= voxel
    assert m["nsd"] == 0.0  # every boundary point is ~6 mm from the other surface
    assert surface_metrics(image(inner), image(outer), tolerance=6.0 + voxel)["nsd"] == 1.0


def test_surface_metrics_match_brute_force_on_anisotropic_blobs():
    shape = (14, 30, 36)
    a = ellipsoid(shape, (16, 18, 12), 9) | box(shape, (3, 4, 4), (8, 12, 10))
    b = ellipsoid(shape, (18, 19, 14), 10)
    for tol in (0.5, 2.0, 4.0):
        m = surface_metrics(image(a), image(b), tolerance=tol)
        d_ab, d_ba = brute_distances(a, b)
        assert m["nsd"] == pytest.approx(((d_ab <= tol).sum() + (d_ba <= tol).sum())
                                         / (d_ab.size + d_ba.size))
        assert m["hd95"] == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
        assert m["hd"] == pytest.approx(max(d_ab.max(), d_ba.max()))


def test_hausdorff_agrees_with_simpleitk_on_disjoint_objects_with_rotated_axes():
    shape = (12, 30, 40)
    a = ellipsoid(shape, (14, 19, 12), 8)
    b = box(shape, (2, 6, 22), (9, 20, 34))
    rot = sitk.VersorTransform((0.2, 0.3, 0.9), 0.6).GetMatrix()
    img_a = image(a, direction=rot, origin=(5, -3, 2))
    img_b = image(b, direction=rot, origin=(5, -3, 2))
    m = surface_metrics(img_a, img_b, tolerance=1.0)
    # SimpleITK's filter measures between all object voxels; for disjoint convex objects that
    # equals the boundary-to-boundary maximum
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(img_a, img_b)
    assert m["hd"] == pytest.approx(f.GetHausdorffDistance(), rel=1e-6)


def test_2d_images_use_their_pixel_spacing():
    a = box((40, 50), (10, 10), (30, 30))
    b = box((40, 50), (10, 14), (30, 34))       # 4 pixels along x (I)
    img_a, img_b = image(a, spacing=(0.5, 2.0)), image(b, spacing=(0.5, 2.0))
    assert img_a.GetDimension() == 2
    m = surface_metrics(img_a, img_b, tolerance=0.1)
    assert m["hd"] == pytest.approx(4 * 0.5)


def test_empty_masks_follow_the_documented_convention():
    shape = (6, 10, 10)
    empty = np.zeros(shape, bool)
    full = box(shape, (1, 2, 2), (4, 7, 7))
    both = label_metrics(image(empty), image(empty), 1, 2.0)
    assert (both.dice, both.iou, both.precision, both.recall, both.nsd, both.hd95, both.hd) == (
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    assert both.accuracy == 1.0
    for pred, ref in ((empty, full), (full, empty)):
        one = label_metrics(image(pred), image(ref), 1, 2.0)
        assert (one.dice, one.iou, one.precision, one.recall, one.nsd) == (0, 0, 0, 0, 0)
        assert math.isinf(one.hd95) and math.isinf(one.hd)
        assert one.accuracy == pytest.approx(1 - full.sum() / full.size)


def test_label_metrics_scores_one_label_of_a_label_map_and_crops_exactly():
    shape = (10, 40, 40)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[box(shape, (0, 0, 0), (5, 10, 10))] = 2                   # touches the image edge
    pred[box(shape, (0, 0, 0), (5, 10, 12))] = 2
    ref[box(shape, (3, 20, 20), (8, 35, 35))] = 3
    pred[box(shape, (3, 20, 20), (8, 35, 35))] = 3
    row = label_metrics(image(pred), image(ref), 2, 1.0, case="c")
    assert isinstance(row, LabelMetrics) and row.case == "c" and row.label == 2
    d_ab, d_ba = brute_distances(pred == 2, ref == 2)
    assert row.hd == pytest.approx(max(d_ab.max(), d_ba.max()))
    assert row.hd == pytest.approx(2 * 0.7)
    assert row.dice == pytest.approx(2 * 500 / (500 + 600))
    three = label_metrics(image(pred), image(ref), 3, 1.0)
    assert three.dice == 1.0 and three.hd95 == 0.0 and three.nsd == 1.0
