"""Export a Slicer segmentation with PolypSAM's exporters (the module's Export button).

The segments are read back as labels on the reference volume's grid (world coordinates: the
volume's parent transforms are hardened into the geometry), with their names, colours, coded
terminology and the provenance PolypSAM tagged them with, and handed to
:func:`polypsam.export.export_labelmap`. For DICOM SEG, the reference volume's source series is
found through Slicer's DICOM database (the ``DICOM.instanceUIDs`` attribute the DICOM module
sets on loaded volumes), or given as a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import InvalidInputError
from ..geometry import Volume
from ..terminology import parse_slicer_entry
from .nodes import _require, ijk_to_world
from .segments import export_segment_labelmap, read_provenance
from .volumes import _geometry_from_ijk_to_world

#: ``file_for_instance(sop_instance_uid) -> path`` (``slicer.dicomDatabase.fileForInstance``).
FileForInstance = Callable[[str], str]


def source_dicom_files(volume_node: Any, file_for_instance: Optional[FileForInstance] = None) -> list[str]:
    """The files of the DICOM series a volume was loaded from, or ``[]`` when it has none."""
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        return []
    if file_for_instance is None:
        import slicer

        database = getattr(slicer, "dicomDatabase", None)
        if database is None:
            return []
        file_for_instance = database.fileForInstance
    files = [file_for_instance(uid) for uid in uids]
    return [f for f in files if f]


def export_segmentation(
    segmentation_node: Any,
    reference_volume: Any,
    path: str | Path,
    fmt: str,
    *,
    segments: Sequence[str] | None = None,
    reference_dicom: str | Path | Sequence[str] | None = None,
    file_for_instance: Optional[FileForInstance] = None,
):
    """Write the segments (default: all) of ``segmentation_node`` as ``fmt``; see
    :func:`polypsam.export.export_labelmap` for the formats. Returns its ``ExportResult``."""
    from ..export import check_format, export_labelmap

    _require(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    _require(reference_volume, "vtkMRMLVolumeNode", "reference volume")
    fmt = check_format(fmt)
    segmentation = segmentation_node.GetSegmentation()
    ids = list(segments) if segments is not None else [
        segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise InvalidInputError(f"segmentation '{segmentation_node.GetName()}' has no segments to export")
    if fmt == "dicom-seg" and reference_dicom is None:
        reference_dicom = source_dicom_files(reference_volume, file_for_instance) or None
        if reference_dicom is None:
            raise InvalidInputError(
                f"DICOM SEG needs the DICOM series '{reference_volume.GetName()}' was loaded from;"
                " this volume did not come from Slicer's DICOM database")
    labels = export_segment_labelmap(segmentation_node, reference_volume, ids)
    geometry = _geometry_from_ijk_to_world(ijk_to_world(reference_volume), reference_volume.GetName())
    names, colours, terminology, tags = {}, {}, {}, {}
    for label, segment_id in enumerate(ids, start=1):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(segment_id)
                                          or segment_id)
        names[label] = segment.GetName()
        colours[label] = tuple(segment.GetColor())
        terminology[label] = parse_slicer_entry(segment.GetTerminology()) or "lesion"
        tags[segment.GetName()] = read_provenance(segmentation_node, segment_id)
    first = next((t for t in tags.values() if t), {})
    engine_keys = ("engine", "model", "config", "checkpoint", "checkpoint_sha256", "image_size",
                   "device")
    provenance = {key: first[key] for key in engine_keys if key in first}
    provenance.update(segments=tags, source=reference_volume.GetName())
    return export_labelmap(Volume(labels, geometry), path, fmt, names=names, colours=colours,
                           terminology=terminology, provenance=provenance,
                           reference_dicom=reference_dicom)
