"""DICOM SEG (highdicom) for labelmaps of volumes that came from a DICOM series.

The SEG references the source series and every source instance (frames are mapped to the
source slices in physical space, so a labelmap on any flipped/permuted index order of the same
grid is accepted); segments carry coded category/type (SNOMED CT), the algorithm (PolypSAM,
semi-automatic, artificial intelligence) and a display colour. Provenance goes into the
content description, series description and the algorithm parameters. Frames are stored only
for (slice, segment) pairs that hold the segment: empty frames are omitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .. import __version__
from ..errors import InvalidInputError
from ..geometry import Volume, VolumeGeometry
from .segments import Segment, provenance_summary


def read_source_series(source: "Path | Sequence[Path]") -> list:
    """Headers (no pixels) of the one DICOM image series in ``source`` (a folder, or the list of
    its files, e.g. from Slicer's DICOM database), sorted along the slice normal."""
    import pydicom

    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise InvalidInputError(
                f"--reference must be the DICOM series folder; not found: {folder}")
        files = sorted(p for p in folder.iterdir() if p.is_file())
    else:
        files = [Path(p) for p in source]
        folder = files[0].parent if files else Path(".")
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise InvalidInputError(f"reference DICOM files not found: {', '.join(missing[:3])}")
    datasets = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not DICOM (README, DICOMDIR...): skipped
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            datasets.append(ds)
    if not datasets:
        raise InvalidInputError(f"no DICOM images with a position in {folder}")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise InvalidInputError(f"{folder} holds {len(series)} DICOM series; give one series")
    missing = [name for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                 "SOPClassUID")
               if any(not str(ds.get(name, "")).strip() for ds in datasets)]
    if missing:
        raise InvalidInputError(
            f"the DICOM series in {folder} has empty {', '.join(missing)} (anonymised?);"
            " a DICOM SEG must reference its source by these UIDs")
    normal = _normal(datasets[0])
    datasets.sort(key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    return datasets


def series_geometry(datasets: Sequence) -> tuple[tuple[int, int, int], VolumeGeometry]:
    """``(K, J, I)`` shape and LPS geometry of a sorted series, from its headers."""
    first = datasets[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    if len(datasets) > 1:
        steps = np.diff(positions @ normal)
        if np.any(steps <= 0) or np.ptp(steps) > 1e-3 * max(1.0, float(steps.mean())):
            raise InvalidInputError("the DICOM series is not evenly spaced (or repeats a slice)")
        dz = float(steps.mean())
    else:
        dz = float(first.get("SliceThickness", 1.0) or 1.0)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    direction = np.column_stack([row_dir, col_dir, normal])
    geometry = VolumeGeometry(tuple(positions[0]), (col_spacing, row_spacing, dz),
                              tuple(direction.ravel()))
    return (len(datasets), int(first.Rows), int(first.Columns)), geometry


def labelmap_on_series(volume: Volume, datasets: Sequence) -> np.ndarray:
    """The labelmap resampled (exact reindexing only) onto the series' slices: ``(K, J, I)``.

    Refused, naming both grids, unless every voxel centre of the series is a voxel centre of
    the labelmap (same grid up to flips and axis order).
    """
    import SimpleITK as sitk

    from ..io import volume_to_sitk

    shape, geometry = series_geometry(datasets)
    ref = volume_to_sitk(Volume(np.zeros(shape, np.uint8), geometry))
    lab = volume_to_sitk(volume)
    nk, nj, ni = shape
    corners = [(i, j, k) for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)]
    ok = sorted(volume.shape) == sorted(shape)
    for c in corners:
        idx = lab.TransformPhysicalPointToContinuousIndex(ref.TransformIndexToPhysicalPoint(c))
        if not all(abs(v - round(v)) < 1e-2 and -0.5 < v < s - 0.5
                   for v, s in zip(idx, lab.GetSize())):
            ok = False
    if not ok:
        def desc(shape_, g):
            return (f"size {shape_[2]}x{shape_[1]}x{shape_[0]}, spacing {tuple(round(v, 4) for v in g.spacing)},"
                    f" origin {tuple(round(v, 3) for v in g.origin)},"
                    f" direction {tuple(round(v, 3) for v in g.direction)}")
        raise InvalidInputError(
            "the labelmap is not on the reference DICOM series' grid:\n"
            f"  labelmap: {desc(volume.shape, volume.geometry)}\n"
            f"  series:   {desc(shape, geometry)}")
    out = sitk.Resample(lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    return sitk.GetArrayFromImage(out)


def write_dicom_seg(volume: Volume, path: Path, segments: Sequence[Segment],
                    provenance: Mapping, reference_dicom: "Path | Sequence[Path]") -> Path:
    """Write a binary DICOM SEG of ``segments`` referencing the series in ``reference_dicom``
    (its folder, or its files)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets = read_source_series(reference_dicom)
    labels = labelmap_on_series(volume, datasets)
    if not segments:
        raise InvalidInputError("the labelmap is empty: a DICOM SEG needs at least one segment")
    pixels = np.stack([labels == s.label for s in segments], axis=-1)
    summary = provenance_summary(provenance)
    params = {k: str(provenance[k])[:64] for k in ("model", "checkpoint_sha256", "date")
              if k in provenance}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="PolypSAM", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters=params or None)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=s.name[:64],
            segmented_property_category=hd.sr.CodedConcept(s.category[1], s.category[0],
                                                           s.category[2]),
            segmented_property_type=hd.sr.CodedConcept(s.type[1], s.type[0], s.type[2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm, tracking_id=f"label {s.label}",
            tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*s.color))
        for n, s in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="PolypSAM",
        manufacturer_model_name=str(provenance.get("model", "PolypSAM"))[:64],
        software_versions=__version__, device_serial_number="none",
        content_description=summary, content_label="POLYPSAM",
        content_creator_name="PolypSAM^", series_description=summary,
        omit_empty_frames=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return path


def _normal(ds) -> np.ndarray:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])
