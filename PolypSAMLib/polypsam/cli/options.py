"""Options and conversions shared by the CLI commands (one home each)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidInputError
from ..geometry import Box

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


def engine_settings_from_args(args: argparse.Namespace):
    """The :class:`~polypsam.engines.EngineSettings` described by the model options."""
    from ..engines import settings_for

    return settings_for(args.checkpoint, args.config, device=args.device,
                        image_size=args.image_size)


def engine_from_args(args: argparse.Namespace):
    """Build the engine described by the model options (through the one engine factory)."""
    from ..engines import create_engine

    return create_engine(engine_settings_from_args(args), allow_download=not args.no_download)


def intensity_from_args(args: argparse.Namespace):
    from ..preprocess import parse_intensity

    return parse_intensity(args.window) if args.window else None




def boxes_from_args(args: argparse.Namespace, width: int, height: int) -> list[Box]:
    """The ``--box`` options as boxes checked against a ``width`` x ``height`` image."""
    return [Box.from_sequence(b).validate(width, height) for b in (args.box or [])]


def check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> None:
    """Refuse an output path whose suffix is not one of ``allowed``."""
    from ..io import full_suffix

    if full_suffix(path) not in allowed:
        raise InvalidInputError(f"{what} must end in {' or '.join(allowed)}, got {path.name}")


VOLUME_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")


def progress_bar(total: int, unit: str, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True,
                disable=None)
