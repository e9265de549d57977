"""``polypsam export LABELMAP --to FORMAT -o OUT``, and ``--export FORMAT`` of other commands.

LABELMAP is a NIfTI/NRRD labelmap (keeps its grid), one label/mask image, or a folder of
per-frame label/mask images (one COCO image / PNG per frame, named like the frames). Image
masks are read as :func:`polypsam.evaluation.load_mask` reads them (0/255 masks become label 1).

Runs (``segment``, ``propagate``, ``track``) write a provenance sidecar beside every output
(:func:`write_run_sidecar`: ``OUT.provenance.json``; ``DIR/provenance.json`` in an output
folder) with the model, checksum, prompts and segments. ``polypsam export`` reads it back (or a
batch case's ``case.json``): the provenance is carried over, and so are the segments' names,
colours and terminology unless options replace them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidInputError
from ..export import FORMATS

FORMAT_CHOICES = FORMATS  # the exporters' own list
_SIBLING_SUFFIX = {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "nrrd": ".nrrd",
                   "coco": ".coco.json", "dicom-seg": ".seg.dcm", "png": "_png"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a labelmap as .seg.nrrd, NIfTI, PNGs, COCO or DICOM SEG",
        description="Export a labelmap (NIfTI/NRRD file, a label/mask image, or a folder of"
                    " per-frame masks) with segment names, colours, terminology and provenance"
                    " (also in a <output>.provenance.json sidecar).")
    p.add_argument("labelmap", type=Path, help="labelmap file, mask image or folder of masks")
    p.add_argument("--to", dest="fmt", required=True, choices=FORMAT_CHOICES, help="format")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output file (.seg.nrrd, .nii.gz, .nrrd, .json, .dcm) or folder (png)")
    p.add_argument("--reference", type=Path, default=None, metavar="DICOM_DIR",
                   help="source DICOM series folder (dicom-seg: the SEG references it)")
    add_segment_options(p)
    p.add_argument("--provenance", type=Path, default=None,
                   help="provenance JSON to record (default: LABELMAP's sidecar, if any)")
    p.set_defaults(handler=run_export)


def add_segment_options(p) -> None:
    """``--names``, ``--colours``, ``--terminology``, ``--coco-encoding`` (``export`` and the
    ``--export`` of runs)."""
    p.add_argument("--names", nargs="+", default=None, help="segment names for labels 1, 2, ...")
    p.add_argument("--colours", nargs="+", default=None, metavar="R,G,B",
                   help="segment colours (0-255) for labels 1, 2, ...")
    p.add_argument("--terminology", default=None,
                   help="segment terminology: lesion, polyp, mass or tissue (default: polyp for"
                        " frames and videos, lesion for volumes; export: the segments recorded"
                        " beside LABELMAP, if any)")
    p.add_argument("--coco-encoding", choices=("rle", "polygon"), default="rle",
                   help="COCO segmentation as RLE (exact) or polygons (default: %(default)s)")


def add_export_options(p: argparse.ArgumentParser) -> None:
    """``--export FORMAT [--export-output PATH]`` and the segment options of ``export`` for
    commands that produce labels (the names and terminology also go into OUT's sidecar)."""
    g = p.add_argument_group("export")
    g.add_argument("--export", choices=FORMAT_CHOICES, default=None,
                   help="also export the result with provenance in this format")
    g.add_argument("--export-output", type=Path, default=None,
                   help="export file/folder (default: beside -o, e.g. OUT.seg.nrrd)")
    add_segment_options(g)


def check_export_args(args: argparse.Namespace, source: Path | None = None) -> None:
    """Refuse a bad ``--export`` request or segment option before the model runs."""
    from ..export import output_path
    from ..terminology import TERMINOLOGY_PRESETS

    _colours(args.colours)
    if args.terminology is not None and args.terminology not in TERMINOLOGY_PRESETS:
        raise InvalidInputError(f"unknown terminology {args.terminology!r}; choose one of"
                                f" {', '.join(TERMINOLOGY_PRESETS)}")
    if not getattr(args, "export", None):
        return
    output_path(args.export_output or default_export_path(args.output, args.export), args.export)
    if args.export == "dicom-seg" and not (source is not None and source.is_dir()):
        raise InvalidInputError("--export dicom-seg needs a DICOM series folder as input"
                                " (the SEG references its instances)")


def default_terminology(frames: bool) -> str:
    """Frames and videos show polyps (as in the Slicer module); volumes, lesions."""
    return "polyp" if frames else "lesion"


def run_provenance(args: argparse.Namespace, engine, *, prompts, source, **extra) -> dict:
    """The provenance of a run's outputs: engine info, prompts, source, command, version, date."""
    from ..export import make_provenance

    return make_provenance(engine.info if engine is not None else None, prompts=prompts,
                           source=source, command=args.command, **extra)


def run_sidecar_path(output: Path) -> Path:
    """``OUT.provenance.json`` beside a file; ``DIR/provenance.json`` in an output folder."""
    output = Path(output)
    return output / "provenance.json" if output.is_dir() else \
        output.with_name(output.name + ".provenance.json")


def write_run_sidecar(args: argparse.Namespace, output: Path, provenance: dict, labels,
                      *, frames: bool, **extra) -> Path:
    """The provenance sidecar of one output of a run, with its segments (names, colours and
    terminology from the segment options), for ``polypsam export`` to carry over."""
    from ..export import segments_for_labels, write_export_sidecar

    segments = segments_for_labels(labels, args.names, _colours(args.colours),
                                   args.terminology or default_terminology(frames))
    return write_export_sidecar(run_sidecar_path(output), provenance, segments,
                         output=Path(output).name, **extra)


def labels_in(array) -> set[int]:
    """The non-zero label values of an array."""
    import numpy as np

    return {int(v) for v in np.unique(array) if v != 0}


def export_from_args(args: argparse.Namespace, labels, *, provenance: dict, frames: bool,
                     frame_names=None, reference_dicom=None, stage=None):
    """Run the ``--export`` of a segment/propagate/track command (no-op without it); with a
    ``stage`` (:class:`~polypsam.io.OutputStage`) it is written there, moved with the others."""
    from ..export import export_labelmap

    if not getattr(args, "export", None):
        return None
    out = args.export_output or default_export_path(args.output, args.export)
    result = export_labelmap(labels, out if stage is None else stage.path(out), args.export,
                             provenance=provenance,
                             reference_dicom=reference_dicom if args.export == "dicom-seg" else None,
                             frame_names=frame_names, names=args.names,
                             colours=_colours(args.colours),
                             terminology=args.terminology or default_terminology(frames),
                             coco_encoding=args.coco_encoding)
    where = result.path if stage is None else stage.final(result.path)
    print(f"exported {args.export} to {where} (provenance: {result.sidecar.name})")
    return result


def default_export_path(output: Path, fmt: str) -> Path:
    """Beside ``-o``: ``mask.png`` -> ``mask.seg.nrrd``; an output folder -> inside it."""
    from ..io import full_suffix

    if output.is_dir() or not output.suffix:
        return output / ("labels" + _SIBLING_SUFFIX[fmt])
    stem = output.name[: -len(full_suffix(output))]
    return output.with_name(stem + _SIBLING_SUFFIX[fmt])


def _colours(values):
    if values is None:
        return None
    out = []
    for v in values:
        parts = v.replace(" ", "").split(",")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise InvalidInputError(f"--colours takes R,G,B (0-255) per label, got {v!r}")
        out.append(tuple(int(p) for p in parts))
    return out


def read_labelmap(path: Path):
    """``(labels, frame_names)``: a Volume (names None) or a frame stack with frame stems."""
    import numpy as np
    import SimpleITK as sitk

    from ..evaluation.masks import case_name, load_mask
    from ..io import full_suffix, is_image_file, list_frames, read_volume, IMAGE_SUFFIXES

    if not path.exists():
        raise InvalidInputError(f"labelmap not found: {path}")
    if path.is_file() and full_suffix(path) in IMAGE_SUFFIXES:
        files = [path]
    elif path.is_dir() and any(is_image_file(p) for p in path.iterdir()):
        files = list_frames(path)
    else:
        return read_volume(path), None
    frames = [sitk.GetArrayFromImage(load_mask(f).image) for f in files]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise InvalidInputError(f"the masks in {path} differ in size: {sorted(shapes)}")
    return np.stack(frames), [case_name(f) for f in files]


def _recorded(args) -> dict:
    """What an earlier run recorded for LABELMAP: ``--provenance``, else its sidecar
    (``LABELMAP.provenance.json``, ``provenance.json`` in a folder), else the ``case.json`` of
    the batch case folder holding it; ``{}`` when there is none."""
    labelmap = args.labelmap
    if args.provenance:
        candidates = [args.provenance]
    else:
        candidates = [run_sidecar_path(labelmap)]
        case_json = labelmap.parent / "case.json"
        if case_json.is_file():
            candidates.append(case_json)
    for c in candidates:
        if c.is_file():
            try:
                doc = json.loads(c.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"cannot read provenance {c}: {exc}") from exc
            if not isinstance(doc, dict):
                raise InvalidInputError(f"provenance {c} is not a JSON object")
            if c.name == "case.json" and not args.provenance and \
                    labelmap.name not in doc.get("outputs", []):
                continue  # another output of that folder
            return doc
        if args.provenance:
            raise InvalidInputError(f"provenance file not found: {c}")
    return {}


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_labelmap, segment_options

    labels, frame_names = read_labelmap(args.labelmap)
    doc = _recorded(args)
    prov = dict(doc["provenance"] if isinstance(doc.get("provenance"), dict) else doc)
    prov.setdefault("source", str(args.labelmap))
    segments = doc.get("segments") if "provenance" in doc else None
    names, colours, terms = segment_options(segments if isinstance(segments, list) else [])
    result = export_labelmap(labels, args.output, args.fmt, names=args.names or names or None,
                             colours=_colours(args.colours) or colours or None, provenance=prov,
                             reference_dicom=args.reference, frame_names=frame_names,
                             terminology=args.terminology or terms or
                             default_terminology(frame_names is not None),
                             coco_encoding=args.coco_encoding)
    for s in result.segments:
        print(f"label {s.label}: {s.name} {s.type[2]} rgb{s.color}")
    print(f"wrote {result.path} and {result.sidecar}")
    return 0
