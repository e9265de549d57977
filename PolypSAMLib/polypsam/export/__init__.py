"""Exports of labelmaps with segment names, colours, terminology and provenance.

One entry point, :func:`export_labelmap`, for the CLI (``polypsam export``, ``--export`` of
``segment``/``propagate``/``track``), batch runs and the Slicer module::

    from polypsam.export import export_labelmap, make_provenance
    prov = make_provenance(engine.info, prompts={"boxes": boxes, "key_slice": 12})
    export_labelmap(labelmap_volume, "out.seg.nrrd", "seg.nrrd", names=["polyp"],
                    provenance=prov)

Formats (``FORMATS``): ``seg.nrrd`` (Slicer segmentation), ``nifti``, ``nrrd`` (labelmaps),
``png`` (a folder, one label PNG per frame/slice), ``coco`` (JSON; one image per frame/slice,
one annotation per segment per image), ``dicom-seg`` (needs ``reference_dicom``, the source
series folder). Every export also writes a JSON sidecar ``<file>.provenance.json`` (for
``png``: ``provenance.json`` in the folder) with the provenance and the segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..geometry import Volume
from .segments import (TERMINOLOGY_PRESETS, Segment, as_labelmap, complete_provenance,
                       make_provenance, segment_options, segments_for, segments_for_labels,
                       write_export_sidecar)

FORMATS = ("seg.nrrd", "nifti", "nrrd", "png", "coco", "dicom-seg")
_SUFFIXES = {"seg.nrrd": (".seg.nrrd",), "nifti": (".nii.gz", ".nii"), "nrrd": (".nrrd",),
             "coco": (".json",), "dicom-seg": (".dcm",), "png": ()}
_DEFAULT_NAME = {"seg.nrrd": "segmentation.seg.nrrd", "nifti": "labels.nii.gz",
                 "nrrd": "labels.nrrd", "coco": "annotations.json", "dicom-seg": "seg.dcm"}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the main output, the sidecar, and the segments exported."""

    path: Path
    sidecar: Path
    segments: list[Segment] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def output_path(path_or_dir: str | Path, fmt: str) -> Path:
    """The file an export of ``fmt`` writes for ``path_or_dir`` (a folder gets a default name)."""
    fmt = check_format(fmt)
    path = Path(path_or_dir)
    if fmt == "png":
        if path.exists() and not path.is_dir():
            raise InvalidInputError(f"png export needs an output folder; {path} is a file")
        return path
    if path.is_dir() or not path.suffix:
        return path / _DEFAULT_NAME[fmt]
    if not any(path.name.lower().endswith(s) for s in _SUFFIXES[fmt]):
        raise InvalidInputError(
            f"{fmt} output must end in {' or '.join(_SUFFIXES[fmt])}, got {path.name}")
    return path


def check_format(fmt: str) -> str:
    fmt = str(fmt).lower().lstrip(".")
    fmt = {"seg": "seg.nrrd", "nii": "nifti", "nii.gz": "nifti", "dicom": "dicom-seg",
           "dcm": "dicom-seg", "json": "coco"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def export_sidecar_path(path: Path, fmt: str) -> Path:
    """The provenance sidecar of an export: ``OUT.provenance.json`` (PNG: in the folder)."""
    if fmt == "png":
        return path / "provenance.json"
    return path.with_name(path.name + ".provenance.json")


def export_labelmap(labels: "Volume | np.ndarray | Sequence[np.ndarray]",
                    path_or_dir: str | Path, fmt: str, *,
                    names: "Sequence[str] | Mapping[int, str] | None" = None,
                    colours: "Sequence | Mapping | None" = None,
                    provenance: Mapping | None = None,
                    reference_dicom: "str | Path | Sequence[str | Path] | None" = None,
                    frame_names: Sequence[str] | None = None,
                    terminology=None, coco_encoding: str = "rle",
                    seg_nrrd_writer=None) -> ExportResult:
    """Write ``labels`` as ``fmt`` with segment metadata and provenance.

    ``labels``: a :class:`~polypsam.geometry.Volume` of labels (keeps its geometry; its K
    slices are the images of PNG/COCO exports) or 2-D frame masks (``N x H x W`` or a list;
    a 1 mm grid for volume formats). 0 is background; each other value is a segment.
    ``names``/``colours``: for labels 1, 2, ... (sequences) or ``{label: value}``; colours RGB
    0-255. ``terminology``: preset (``lesion`` default, ``polyp``, ``mass``, ``tissue``) or
    per-label codes (see :func:`~polypsam.export.segments.segments_for`).
    ``provenance``: e.g. from :func:`make_provenance`; version and date are filled in.
    ``reference_dicom``: the source series' folder or its list of files (``dicom-seg`` only,
    required there).
    ``frame_names``: file stems of PNG/COCO images (default ``0000``... for frames,
    ``slice_0000``... for volumes). ``coco_encoding``: ``rle`` (exact) or ``polygon``.
    ``seg_nrrd_writer``: ``(volume, path, segments, provenance) -> path`` writing ``seg.nrrd``
    instead of slicerio (in Slicer: Slicer's own storage node, see ``polypsam.mrml.exporting``).
    """
    fmt = check_format(fmt)
    path = output_path(path_or_dir, fmt)
    volume, is_frames = as_labelmap(labels)
    segments = segments_for(volume, names, colours, terminology)
    prov = complete_provenance(provenance)
    n = volume.shape[0]
    if frame_names is None:
        frame_names = [f"{i:04d}" if is_frames else f"slice_{i:04d}" for i in range(n)]
    frame_names = [str(v) for v in frame_names]
    if len(frame_names) != n:
        raise InvalidInputError(f"{len(frame_names)} frame names for {n} frames/slices")
    if len(set(frame_names)) != n or any("/" in v or "\\" in v or v in ("", ".", "..")
                                         for v in frame_names):
        raise InvalidInputError("frame names must be distinct file names without folders")
    if fmt == "dicom-seg" and reference_dicom is None:
        raise InvalidInputError("dicom-seg export needs the source DICOM series (--reference DIR)")
    if fmt != "dicom-seg" and reference_dicom is not None:
        raise InvalidInputError("a reference DICOM series applies to dicom-seg exports only")

    files: list[Path]
    if fmt == "seg.nrrd":
        if seg_nrrd_writer is None:
            from .volumes import write_seg_nrrd as seg_nrrd_writer
        files = [seg_nrrd_writer(volume, path, segments, prov)]
    elif fmt in ("nifti", "nrrd"):
        from .volumes import write_labelmap_volume
        files = [write_labelmap_volume(volume, path, prov)]
    elif fmt == "png":
        from .frames import write_pngs
        files = write_pngs(volume, path, frame_names)
    elif fmt == "coco":
        from .frames import write_coco
        files = [write_coco(volume, path, segments, frame_names, prov, coco_encoding)]
    else:
        from .dicom_seg import write_dicom_seg
        ref = (Path(reference_dicom) if isinstance(reference_dicom, (str, Path))
               else [Path(p) for p in reference_dicom])
        files = [write_dicom_seg(volume, path, segments, prov, ref)]
    sidecar = write_export_sidecar(export_sidecar_path(path, fmt), prov, segments, format=fmt,
                            files=[p.name for p in files][:1000])
    return ExportResult(path, sidecar, segments, files)


__all__ = ["FORMATS", "TERMINOLOGY_PRESETS", "ExportResult", "Segment", "check_format",
           "export_labelmap", "make_provenance", "output_path", "segment_options",
           "segments_for", "segments_for_labels", "export_sidecar_path", "write_export_sidecar"]
