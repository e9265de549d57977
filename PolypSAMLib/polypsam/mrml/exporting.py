"""Export a Slicer segmentation with PolypSAM's exporters (the module's Export button).

The segments are read back as labels on the reference volume's grid (world coordinates: the
volume's parent transforms are hardened into the geometry), with their names, colours, coded
terminology and the provenance PolypSAM tagged them with, and handed to
:func:`polypsam.export.export_labelmap`. For DICOM SEG, the reference volume's source series is
found through Slicer's DICOM database (the ``DICOM.instanceUIDs`` attribute the DICOM module
sets on loaded volumes), or given as a folder.

In Slicer, ``.seg.nrrd`` is written by Slicer's own ``vtkMRMLSegmentationStorageNode`` (no
slicerio: desktop Slicer does not bundle it). Formats whose packages Slicer lacks are reported by
:func:`export_formats`: ``install`` (COCO: pycocotools, offered with consent by
:func:`ensure_export_format`) or ``unavailable`` with a one-line reason (DICOM SEG on a Slicer
whose pydicom is older than highdicom needs).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from ..errors import InvalidInputError
from ..geometry import Volume
from ..terminology import parse_slicer_entry, slicer_entry
from . import dependencies
from .nodes import require_node, ijk_to_world
from .segments import export_segment_labelmap, read_provenance
from .volumes import geometry_from_ijk_to_world

#: ``file_for_instance(sop_instance_uid) -> path`` (``slicer.dicomDatabase.fileForInstance``).
FileForInstance = Callable[[str], str]


def format_support(fmt: str, find_spec: Callable[[str], object] = importlib.util.find_spec,
                   **kwargs) -> dependencies.Support:
    """Whether ``fmt`` can be exported in this Slicer (``kwargs``: ``version`` for tests)."""
    from ..export import check_format

    fmt = check_format(fmt)
    if fmt in dependencies.OPTIONAL_PACKAGES:  # coco, dicom-seg
        return dependencies.optional_support(fmt, find_spec, **kwargs)
    module = {"nifti": "SimpleITK", "nrrd": "SimpleITK", "png": "PIL"}.get(fmt)
    try:
        found = module is None or find_spec(module) is not None  # seg.nrrd: Slicer's storage
    except (ImportError, ValueError):
        found = False
    if found:
        return dependencies.Support(fmt, "ready")
    return dependencies.Support(fmt, "unavailable", reason=f"{fmt} export needs {module} (Slicer bundles it)")


def export_formats(find_spec: Callable[[str], object] = importlib.util.find_spec,
                   **kwargs) -> list[dependencies.Support]:
    """:func:`format_support` of every export format, in :data:`polypsam.export.FORMATS` order."""
    from ..export import FORMATS

    return [format_support(fmt, find_spec, **kwargs) for fmt in FORMATS]


def ensure_export_format(fmt: str, **kwargs) -> dependencies.DependencyStatus:
    """With the user's consent, install what ``fmt`` still needs (see
    :func:`polypsam.mrml.dependencies.ensure_optional` for ``kwargs`` and errors)."""
    support = format_support(fmt, kwargs.get("find_spec", importlib.util.find_spec))
    if support.feature in dependencies.OPTIONAL_PACKAGES:
        return dependencies.ensure_optional(support.feature, **kwargs)
    if support.status != "ready":
        raise dependencies.DependencyInstallError(support.reason)
    return dependencies.DependencyStatus(ready=True, message=f"{support.feature} export: ready")


def slicer_seg_nrrd_writer(source_segments: Optional[Mapping[int, Any]] = None):
    """A ``seg_nrrd_writer`` for :func:`polypsam.export.export_labelmap` writing with Slicer's own
    ``vtkMRMLSegmentationStorageNode``.

    The labels become one shared labelmap on the volume's grid (world coordinates), segment
    ``Segment_<label>`` holding label value ``label``, with the export's name, colour and coded
    terminology. ``source_segments`` (label -> ``vtkSegment``) lend their tags (PolypSAM's
    provenance tags among them) to the segments written; every segment also gets the export's
    provenance JSON as tag ``PolypSAM_Provenance`` (``|``, Slicer's tag separator, written as
    the JSON escape ``\\u007c``).
    """
    def write(volume: Volume, path: Path, segments: Sequence[Any], provenance: Mapping) -> Path:
        import numpy as np
        import slicer
        import vtk
        from vtk.util import numpy_support

        from ..export.volumes import PROVENANCE_KEY

        labels = np.ascontiguousarray(volume.array)
        k, j, i = labels.shape
        matrix = slicer.util.vtkMatrixFromArray(volume.geometry.ijk_to_ras())
        image = slicer.vtkOrientedImageData()
        image.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
        image.SetImageToWorldMatrix(matrix)
        vtk_type = vtk.VTK_UNSIGNED_CHAR if labels.dtype == np.uint8 else vtk.VTK_UNSIGNED_SHORT
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels.ravel(), deep=1,
                                                                   array_type=vtk_type))
        node = slicer.vtkMRMLSegmentationNode()
        segmentation = node.GetSegmentation()
        converter = slicer.vtkSegmentationConverter
        segmentation.SetConversionParameter(
            converter.GetReferenceImageGeometryParameterName(),
            converter.SerializeImageGeometry(matrix, [0, i - 1, 0, j - 1, 0, k - 1]))
        provenance_tag = json.dumps(dict(provenance), separators=(",", ":")).replace("|", "\\u007c")
        for s in segments:
            segment = slicer.vtkSegment()
            source = (source_segments or {}).get(s.label)
            if source is not None:
                segment.DeepCopyMetadata(source)
            segment.SetName(s.name)
            segment.SetColor(*(c / 255.0 for c in s.color))
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
            segment.SetLabelValue(int(s.label))
            segment.SetTerminology(slicer_entry((s.category, s.type)))
            segment.SetTag(PROVENANCE_KEY, provenance_tag)
            segment.AddRepresentation(converter.GetSegmentationBinaryLabelmapRepresentationName(), image)
            if not segmentation.AddSegment(segment, f"Segment_{s.label}"):
                raise InvalidInputError(f"Slicer could not add segment '{s.name}' for export")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(1)
        storage.SetCropToMinimumExtent(False)  # the whole reference grid, as the other formats
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not storage.WriteData(node):
            raise InvalidInputError(f"Slicer could not write the segmentation to {path}")
        return Path(path)

    return write


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

    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    require_node(reference_volume, "vtkMRMLVolumeNode", "reference volume")
    fmt = check_format(fmt)
    support = format_support(fmt)
    if support.status != "ready":
        raise InvalidInputError(support.reason)
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
    geometry = geometry_from_ijk_to_world(ijk_to_world(reference_volume), reference_volume.GetName())
    names, colours, terminology, tags, sources = {}, {}, {}, {}, {}
    for label, segment_id in enumerate(ids, start=1):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(segment_id)
                                          or segment_id)
        sources[label] = segment
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
                           reference_dicom=reference_dicom,
                           seg_nrrd_writer=slicer_seg_nrrd_writer(sources) if fmt == "seg.nrrd" else None)
