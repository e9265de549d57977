"""``polypsam segment``: one image or one volume slice, one mask per box."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import options
from .export import add_export_options, check_export_args, export_from_args
from ..errors import InvalidInputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment one image or one volume slice from box prompts",
        description="Segment a PNG/JPEG frame, or slice K of a NIfTI/NRRD/DICOM volume, with one"
                    " mask per box (labels 1..N).")
    p.add_argument("image", type=Path, help="PNG/JPEG frame, volume file or DICOM folder")
    options.add_box_option(p)
    p.add_argument("--slice", type=int, default=None, dest="slice_k",
                   help="slice K of a volume (boxes in that slice's pixel coordinates)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="mask PNG for a frame; .nrrd/.nii.gz labelmap for a volume slice")
    p.add_argument("--overlay", type=Path, default=None, help="PNG with the mask contours drawn")
    options.add_engine_options(p)
    add_export_options(p)
    p.set_defaults(handler=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from .. import io
    from ..geometry import check_index
    from ..overlay import draw_overlay, labelmap_from_masks

    intensity = options.intensity_from_args(args)
    check_export_args(args, args.image)
    if io.is_image_file(args.image):
        if args.slice_k is not None:
            raise InvalidInputError("--slice applies to volumes, not to PNG/JPEG frames")
        image = io.read_image(args.image)
        volume = None
    else:
        volume = io.read_volume(args.image)
        if args.slice_k is None:
            if volume.shape[0] != 1:
                raise InvalidInputError(
                    f"{args.image} has {volume.shape[0]} slices: choose one with --slice K"
                )
            args.slice_k = 0
        check_index(args.slice_k, volume.shape[0], f"--slice {args.slice_k}", "the volume's slices")
        options.check_suffix(args.output, options.VOLUME_SUFFIXES,
                             "a volume input gives a volume labelmap: -o")
        image = volume.array[args.slice_k]
    height, width = image.shape[:2]
    boxes = options.boxes_from_args(args, width, height)
    if args.overlay is not None:
        options.check_suffix(args.overlay, (".png",), "--overlay")
    engine = options.engine_from_args(args)
    results = engine.segment_2d(image, boxes, intensity=intensity)
    labels = labelmap_from_masks(results)
    if volume is None:
        io.write_png(labels, args.output)
    else:
        full = np.zeros(volume.shape, dtype=labels.dtype)
        full[args.slice_k] = labels
        io.write_volume(volume.with_array(full), args.output)
    if args.overlay is not None:
        io.write_png(draw_overlay(image, labels, intensity, boxes=boxes), args.overlay)
    export_from_args(args, labels if volume is None else volume.with_array(full), engine=engine,
                     prompts={"boxes": boxes, "slice": args.slice_k}, source=args.image,
                     frame_names=[args.image.stem] if volume is None else None,
                     reference_dicom=args.image if args.image.is_dir() else None)
    for label, result in enumerate(results, start=1):
        print(f"label {label}: box {result.box.describe()} score {result.score:.3f}"
              f" pixels {int(result.mask.sum())}")
    print(f"wrote {args.output}")
    return 0
