"""Command line: ``polypsam segment`` (2-D), plus the sequence commands of :mod:`cli_sequences`.

Every user error ends as one readable line on stderr and a non-zero exit status; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .errors import CancelledError, PolypSAMError
from .geometry import Box

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs SAM2."""
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", default="sam2.1_hiera_tiny",
                       help="registry name (sam2.1_hiera_tiny|small|base_plus|large, medsam2)"
                            " or a .pt file in the official SAM2 format (default: %(default)s)")
    group.add_argument("--config", help="SAM2 config: a YAML path or a config shipped with sam2"
                                        " (required for a custom .pt)")
    group.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    group.add_argument("--image-size", type=int, default=None,
                       help="model input size (default: the checkpoint's, 1024; 512 for MedSAM2)")
    group.add_argument("--window", default=None,
                       help="intensity for scalar images: abdomen|soft_tissue|lung|bone|brain,"
                            " LEVEL,WIDTH, or percentile[:LOW,HIGH] (default: percentile 0.5-99.5)")
    group.add_argument("--no-download", action="store_true",
                       help="never download weights; fail if they are not in the cache")


def add_box_option(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--box", nargs=4, type=float, action="append", required=required,
                        metavar=("X0", "Y0", "X1", "Y1"),
                        help="box in pixel coordinates (x = column/I, y = row/J, inclusive);"
                             " repeat for several objects, labelled 1..N")


def engine_from_args(args: argparse.Namespace):
    """Build the in-process SAM2 engine described by the model options."""
    from .sam2_engine import SAM2Engine

    return SAM2Engine.from_name(
        args.checkpoint,
        config=args.config,
        device=args.device,
        image_size=args.image_size,
        download=not args.no_download,
    )


def intensity_from_args(args: argparse.Namespace):
    from .preprocess import parse_intensity

    return parse_intensity(args.window) if args.window else None


def _register_segment(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment one image or one volume slice from box prompts",
        description="Segment a PNG/JPEG frame, or slice K of a NIfTI/NRRD/DICOM volume, with one"
                    " mask per box (labels 1..N).")
    p.add_argument("image", type=Path, help="PNG/JPEG frame, volume file or DICOM folder")
    add_box_option(p)
    p.add_argument("--slice", type=int, default=None, dest="slice_k",
                   help="slice K of a volume (boxes in that slice's pixel coordinates)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="mask PNG for a frame; .nrrd/.nii.gz labelmap for a volume slice")
    p.add_argument("--overlay", type=Path, default=None, help="PNG with the mask contours drawn")
    add_engine_options(p)
    p.set_defaults(handler=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from . import io
    from .errors import InvalidInputError
    from .overlay import draw_overlay, labelmap_from_masks

    boxes = [Box.from_sequence(b) for b in args.box]
    intensity = intensity_from_args(args)
    is_frame = io.is_image_file(args.image)
    if is_frame:
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
        if not 0 <= args.slice_k < volume.shape[0]:
            raise InvalidInputError(
                f"slice {args.slice_k} is outside the volume (0..{volume.shape[0] - 1})"
            )
        if io.full_suffix(args.output) not in (".nrrd", ".nii", ".nii.gz", ".mha"):
            raise InvalidInputError(
                f"a volume input gives a volume labelmap: -o must end in .nrrd or .nii.gz"
                f" (got {args.output.name})"
            )
        image = volume.array[args.slice_k]
    height, width = image.shape[:2]
    for box in boxes:
        box.validate(width, height)
    if args.overlay is not None and io.full_suffix(args.overlay) != ".png":
        raise InvalidInputError(f"--overlay must be a .png file, got {args.overlay.name}")
    engine = engine_from_args(args)
    results = engine.segment_2d(image, boxes, intensity=intensity)
    labels = labelmap_from_masks(results)
    if volume is None:
        io.write_png(labels, args.output)
    else:
        full = np.zeros(volume.shape, dtype=labels.dtype)
        full[args.slice_k] = labels
        io.write_volume(volume.with_array(full), args.output)
    if args.overlay is not None:
        io.write_png(draw_overlay(image, labels, intensity), args.overlay)
    for label, result in enumerate(results, start=1):
        print(f"label {label}: box {result.box.describe()} score {result.score:.3f}"
              f" pixels {int(result.mask.sum())}")
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polypsam", description="Box-prompted SAM2 segmentation of frames, volumes and sequences.")
    parser.add_argument("--version", action="version", version=f"polypsam {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _register_segment(subparsers)
    try:
        from .cli_sequences import register as register_sequences
    except ImportError:  # the sequence commands are optional while under construction
        register_sequences = None
    if register_sequences is not None:
        register_sequences(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CancelledError as exc:
        print(f"polypsam: stopped: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("polypsam: interrupted; nothing more was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PolypSAMError as exc:
        print(f"polypsam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"polypsam: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
