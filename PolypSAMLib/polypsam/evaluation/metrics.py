"""Per-label overlap and surface metrics in physical space (2-D images and 3-D volumes).

All metrics compare one label of a prediction with the same label of a reference on one grid
(SimpleITK images; spacing taken from the image, so distances are in millimetres, or in pixels
for PNG/JPEG images, which carry no spacing). Every row says which: ``distance_unit`` is ``mm``
or ``px`` (it applies to ``hd95``, ``hd`` and the NSD tolerance), and ``kind`` is ``image`` (a
2-D image file), ``slice`` (a one-slice volume file, in-plane mm) or ``volume`` (3-D).

* Overlap (from voxel counts TP, FP, FN, TN over the whole image): ``dice`` = 2TP/(2TP+FP+FN),
  ``iou`` = TP/(TP+FP+FN), ``precision`` = TP/(TP+FP), ``recall`` = TP/(TP+FN),
  ``accuracy`` = (TP+TN)/N.
* Surfaces: the boundary voxels of a mask (foreground voxels with a background face neighbour;
  the image is padded with background, so an object touching the image edge has a boundary
  there). Distances are Euclidean between voxel centres in physical space (exact distance maps,
  ``SignedMaurerDistanceMap`` with the image spacing).
  ``hd95`` = max of the two directed 95th percentiles of boundary-to-boundary distances (as
  MONAI and DeepMind's ``surface-distance`` compute it); ``hd`` = the maximum (Hausdorff);
  ``nsd`` (normalised surface Dice at the tolerance, in the distance unit) = the fraction of
  boundary voxels of both masks lying within the tolerance of the other mask's boundary
  (boundary voxels counted, not surface-element areas).

Empty masks (see :data:`EMPTY_CONVENTION`):
  both empty: dice = iou = precision = recall = nsd = 1, hd95 = hd = 0 (a correct "nothing");
  one empty:  dice = iou = nsd = 0, hd95 = hd = inf, and the 0/0 ratio among precision/recall
  is 0 (an empty prediction of a present object has precision 0 and recall 0; a prediction
  where the reference is empty has precision 0 and recall 0). Accuracy is always counted.
Infinite distances are written as ``inf`` in tables and left out of means (counted apart).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

EMPTY_CONVENTION = (
    "both empty: dice=iou=precision=recall=nsd=1, hd95=hd=0; one empty: dice=iou=precision="
    "recall=nsd=0, hd95=hd=inf; accuracy always counted"
)

METRICS = ("dice", "iou", "precision", "recall", "accuracy", "nsd", "hd95", "hd")
DISTANCE_METRICS = ("hd95", "hd")
DISTANCE_UNITS = {"mm": "millimetres", "px": "pixels"}
KINDS = {"volume": "volumes (3-D)", "slice": "single slices of volume files (2-D, in-plane mm)",
         "image": "images (2-D image files: frames, masks)"}


@dataclass(frozen=True)
class LabelMetrics:
    """Metrics of one label of one case; ``hd95``, ``hd`` and ``nsd_tolerance`` are in
    ``distance_unit`` (``mm``, or ``px`` for image files, which carry no spacing).

    A case named ``VIDEO/FRAME`` is one frame of the video (or sequence) ``VIDEO``: its
    :attr:`group`. Any other case is its own group.
    """

    case: str
    label: int
    dice: float
    iou: float
    precision: float
    recall: float
    accuracy: float
    nsd: float
    hd95: float
    hd: float
    pred_voxels: int
    ref_voxels: int
    nsd_tolerance: float
    distance_unit: str = "mm"
    kind: str = "volume"

    @property
    def group(self) -> str:
        return case_group(self.case)

    def as_row(self) -> dict:
        return {**asdict(self), "group": self.group}


def case_group(case: str) -> str:
    """The video a ``VIDEO/FRAME`` case belongs to; any other case is its own group."""
    return case.rpartition("/")[0] or case


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision, recall and accuracy of two boolean arrays of one shape."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} and {ref.shape}")
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    tn = pred.size - tp - fp - fn
    both_empty = tp + fp + fn == 0

    def ratio(num: int, den: int) -> float:
        if den == 0:
            return 1.0 if both_empty else 0.0
        return num / den

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "accuracy": (tp + tn) / pred.size if pred.size else 1.0,
    }


def surface_distances(pred_image, ref_image) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each boundary voxel of PRED to REF's boundary, and from REF's to PRED's.

    ``pred_image`` and ``ref_image`` are binary (0/1) SimpleITK images on one grid, neither empty.
    """
    import SimpleITK as sitk

    pred_border = _border(pred_image)
    ref_border = _border(ref_image)
    to_ref = _distance_to(ref_border)
    to_pred = _distance_to(pred_border)
    pb = sitk.GetArrayViewFromImage(pred_border).astype(bool)
    rb = sitk.GetArrayViewFromImage(ref_border).astype(bool)
    return (sitk.GetArrayViewFromImage(to_ref)[pb].astype(float),
            sitk.GetArrayViewFromImage(to_pred)[rb].astype(float))


def surface_metrics(pred_image, ref_image, tolerance: float) -> dict[str, float]:
    """NSD at ``tolerance``, HD95 and HD of two binary SimpleITK images on one grid (in the
    images' physical unit: mm, or pixels for images with unit spacing)."""
    import SimpleITK as sitk

    pred_any = bool(np.any(sitk.GetArrayViewFromImage(pred_image)))
    ref_any = bool(np.any(sitk.GetArrayViewFromImage(ref_image)))
    if not pred_any and not ref_any:
        return {"nsd": 1.0, "hd95": 0.0, "hd": 0.0}
    if not pred_any or not ref_any:
        return {"nsd": 0.0, "hd95": math.inf, "hd": math.inf}
    d_pr, d_rp = surface_distances(pred_image, ref_image)
    within = np.count_nonzero(d_pr <= tolerance) + np.count_nonzero(d_rp <= tolerance)
    return {
        "nsd": within / (d_pr.size + d_rp.size),
        "hd95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        "hd": float(max(d_pr.max(), d_rp.max())),
    }


def label_metrics(pred_labels, ref_labels, label: int, tolerance: float, case: str = "", *,
                  distance_unit: str = "mm", kind: str | None = None) -> LabelMetrics:
    """All metrics of ``label`` in two label images (SimpleITK, same grid, integer pixels).

    ``tolerance`` and the distances are in ``distance_unit``, the unit of the images' spacing;
    ``kind`` defaults to ``volume`` for 3-D images, ``slice`` for 2-D ones in mm, else ``image``.
    """
    if distance_unit not in DISTANCE_UNITS:
        raise ValueError(f"distance_unit must be one of {tuple(DISTANCE_UNITS)}")
    if kind is None:
        kind = ("volume" if ref_labels.GetDimension() == 3
                else "slice" if distance_unit == "mm" else "image")
    import SimpleITK as sitk

    pred = sitk.GetArrayViewFromImage(pred_labels) == label
    ref = sitk.GetArrayViewFromImage(ref_labels) == label
    overlap = overlap_metrics(pred, ref)
    crop_p, crop_r = _cropped_pair(pred, ref, ref_labels)
    surface = surface_metrics(crop_p, crop_r, tolerance)
    return LabelMetrics(case=case, label=int(label), pred_voxels=int(pred.sum()),
                        ref_voxels=int(ref.sum()), nsd_tolerance=float(tolerance),
                        distance_unit=distance_unit, kind=kind, **overlap, **surface)


def _border(binary):
    """Boundary voxels (face connectivity) of a binary image padded by one background voxel."""
    import SimpleITK as sitk

    return sitk.LabelContour(binary, fullyConnected=False, backgroundValue=0)


def _distance_to(border):
    """Exact Euclidean distance (mm) of every voxel centre to the nearest border voxel centre."""
    import SimpleITK as sitk

    dist = sitk.SignedMaurerDistanceMap(border, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True, backgroundValue=0)
    return sitk.Maximum(dist, 0.0)


def _cropped_pair(pred: np.ndarray, ref: np.ndarray, grid):
    """Both masks cropped to their union's bounding box plus one background voxel all round.

    The crop keeps every boundary voxel and every distance between them (all foreground lies
    inside), and the padding makes a mask touching the image edge have a boundary there.
    """
    import SimpleITK as sitk

    union = pred | ref
    dim = pred.ndim
    if not union.any():
        shape = (1,) * dim
        empty = sitk.GetImageFromArray(np.zeros(shape, np.uint8))
        return empty, empty
    lo = [int(np.min(ix)) for ix in np.nonzero(union)]
    hi = [int(np.max(ix)) + 1 for ix in np.nonzero(union)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    images = []
    # numpy order is (k, j, i); SimpleITK index order is (i, j, k)
    start_index = [lo[d] - 1 for d in reversed(range(dim))]
    origin = grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in start_index])
    for mask in (pred, ref):
        arr = np.pad(mask[sl].astype(np.uint8), 1)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(grid.GetSpacing())
        img.SetDirection(grid.GetDirection())
        img.SetOrigin(origin)
        images.append(img)
    return images[0], images[1]
