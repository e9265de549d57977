"""Options and conversions shared by the CLI commands (one home each)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidInputError

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
    group.add_argument("--device", default="auto",
                       help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps (default: %(default)s)")
    group.add_argument("--image-size", type=int, default=None,
                       help="model input size (default: the checkpoint's, 1024; 512 for MedSAM2)")
    add_precision_option(group)
    group.add_argument("--window", default=None,
                       help="intensity for scalar images: abdomen|soft_tissue|lung|bone|brain,"
                            " LEVEL,WIDTH, or percentile[:LOW,HIGH] (default: percentile 0.5-99.5)")
    group.add_argument("--no-download", action="store_true",
                       help="never download weights; fail if they are not in the cache")
    group.add_argument("--server", default=None, metavar="URL",
                       help="run on a PolypSAM server ('polypsam serve') at URL, e.g."
                            " http://127.0.0.1:8765; the model options are then the server's")
    add_token_options(group, "the server's token")


TOKEN_VARIABLE = "POLYPSAM_TOKEN"


def add_token_options(group, what: str) -> None:
    """``--token-file PATH`` and ``--token T`` (visible to every user in the process list)."""
    group.add_argument("--token-file", type=Path, default=None, metavar="PATH",
                       help=f"file holding {what}, readable by you only (chmod 600);"
                            f" without it or --token: ${TOKEN_VARIABLE}")
    group.add_argument("--token", default=None, metavar="TOKEN",
                       help=f"{what} on the command line: every user of this machine can read it"
                            f" in the process list; prefer ${TOKEN_VARIABLE} or --token-file")


def token_from_args(args: argparse.Namespace, prog: str = "polypsam") -> str:
    """The token of ``--token``, ``--token-file`` or ``$POLYPSAM_TOKEN`` (first given wins);
    ``""`` when none. ``--token`` works but warns: it shows in the process list."""
    import os

    if args.token is not None:
        print(f"{prog}: warning: --token is visible to every user of this machine in the process"
              f" list; put the token in ${TOKEN_VARIABLE} or a file given with --token-file",
              file=sys.stderr)
        return args.token
    if args.token_file is not None:
        return read_token_file(args.token_file)
    return os.environ.get(TOKEN_VARIABLE, "")


def read_token_file(path: Path) -> str:
    """The token in ``path``; refused when others may read the file or it is empty."""
    import os
    import stat

    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise InvalidInputError(f"token file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read token file {path}: {exc}") from exc
    if os.name == "posix" and mode & 0o077:
        raise InvalidInputError(f"token file {path} can be read by other users (mode {mode:04o}):"
                                f" run chmod 600 {path}")
    if not token:
        raise InvalidInputError(f"token file {path} is empty")
    return token


def add_precision_option(group) -> None:
    """``--precision auto|fp32|bf16``: what SAM2's forward calls run at (engine and server)."""
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="auto: bfloat16 autocast on a CUDA GPU that supports it (TF32 on"
                            " Ampere+), as SAM2 runs; float32 on CPU and MPS. fp32 forces float32,"
                            " bf16 forces autocast (default: %(default)s)")


def add_box_option(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--box", nargs=4, type=float, action="append", required=required,
                        metavar=("X0", "Y0", "X1", "Y1"),
                        help="box in pixel coordinates (x = column, y = row: a volume's I and J"
                             " axes; inclusive); repeat for several objects, labelled 1..N")


def add_prompt_options(parser: argparse.ArgumentParser, where: str, mask_help: str) -> None:
    """``--point``, ``--negative-point`` and ``--mask-prompt``: one object's clicks and mask.

    ``where`` names the image they are on (e.g. "the image", "the key slice").
    """
    group = parser.add_argument_group(
        "clicks and mask prompt",
        f"Clicks and a mask prompt on {where} for ONE object: they go with the single --box, or"
        " make an object of their own without a box. Several --box with clicks is an error.")
    group.add_argument("--point", nargs=2, type=float, action="append", default=[],
                       metavar=("X", "Y"), help="include click in pixel coordinates; repeatable")
    group.add_argument("--negative-point", nargs=2, type=float, action="append", default=[],
                       metavar=("X", "Y"), help="exclude click in pixel coordinates; repeatable")
    group.add_argument("--mask-prompt", type=Path, default=None, metavar="MASK", help=mask_help)


def add_click_refinement_options(parser: argparse.ArgumentParser, unit: str) -> None:
    """``--slice-point K X Y`` / ``--frame-point FRAME X Y`` (and ``-negative-``): clicks on other
    slices/frames (K: the volume's slice axis; a frame is FRAME, never I, the column axis)."""
    letter = "K" if unit == "slice" else "FRAME"
    group = parser.add_argument_group(
        f"clicks on other {unit}s",
        f"Clicks on {unit} {letter} (not the prompted one) for the single object: each becomes a"
        f" conditioning {unit} of the tracker, as SAM2's add_new_points_or_box takes it.")
    group.add_argument(f"--{unit}-point", nargs=3, type=float, action="append", default=[],
                       metavar=(letter, "X", "Y"), dest="refine_points",
                       help=f"include click at (X, Y) on {unit} {letter}; repeatable")
    group.add_argument(f"--{unit}-negative-point", nargs=3, type=float, action="append",
                       default=[], metavar=(letter, "X", "Y"), dest="refine_negative_points",
                       help=f"exclude click at (X, Y) on {unit} {letter}; repeatable")


def prompts_from_args(args: argparse.Namespace, width: int, height: int, mask=None) -> list:
    """The objects' prompts (:class:`~polypsam.engine.Prompt`) from --box, clicks and ``mask``.

    The rule is :func:`polypsam.engine.object_prompts`: clicks and the mask go with the single
    box, or form one object alone. Everything is checked against a ``width`` x ``height`` image.
    """
    from ..engine import object_prompts

    points = [tuple(p) for p in args.point] + [tuple(p) for p in args.negative_point]
    labels = [1] * len(args.point) + [0] * len(args.negative_point)
    other = bool(getattr(args, "refine_points", None) or getattr(args, "refine_negative_points", None))
    if not args.box and not points and mask is None and not other:
        raise InvalidInputError("give a prompt: --box, --point or --mask-prompt")
    return object_prompts(args.box or [], points, labels, mask, width, height, other_clicks=other,
                          boxes_name="--box options", advice="run once per object")


def refinements_from_args(args: argparse.Namespace, count: int, unit: str) -> list:
    """Clicks on other slices/frames as :class:`~polypsam.engine.FramePrompt` (object 1)."""
    from ..engine import frame_clicks

    clicks = [(*v, 1) for v in args.refine_points] + [(*v, 0) for v in args.refine_negative_points]
    return frame_clicks(clicks, count, unit)


def read_mask_prompt(path: Path, shape: tuple[int, int], slice_k: int | None = None):
    """A mask prompt file as a boolean ``H x W`` mask (non-zero = inside).

    A PNG/JPEG for a frame or slice; a volume file (labelmap on the input's grid) gives its
    slice ``slice_k``. The shape must be ``shape``.
    """
    import numpy as np

    from .. import io

    if io.is_image_file(path):
        mask = np.asarray(io.read_image(path))
        if mask.ndim == 3:
            mask = mask.max(axis=2)
    else:
        volume = io.read_volume(path)
        if slice_k is None or not 0 <= slice_k < volume.shape[0]:
            raise InvalidInputError(f"--mask-prompt {path}: a volume mask needs the slice it is on")
        if volume.shape[1:] != tuple(shape):
            raise InvalidInputError(
                f"--mask-prompt {path} has slices of {volume.shape[1:]}; the image's are {tuple(shape)}"
            )
        mask = volume.array[slice_k]
    if mask.shape != tuple(shape):
        raise InvalidInputError(
            f"--mask-prompt {path} is {mask.shape[1]}x{mask.shape[0]} pixels; the image is"
            f" {shape[1]}x{shape[0]}"
        )
    mask = mask != 0
    if not mask.any():
        raise InvalidInputError(f"--mask-prompt {path} is empty (no non-zero pixel)")
    return mask


OVERLAY_BESIDE = "<beside -o>"  # --overlay given without a path


def add_overlay_option(parser: argparse.ArgumentParser, what: str, default: str) -> None:
    """``--overlay [PATH]``, the same on every command: alone it writes to ``default``."""
    parser.add_argument("--overlay", nargs="?", const=OVERLAY_BESIDE, default=None,
                        metavar="PATH",
                        help=f"also write {what} for a person to look at: the image with each"
                             " label's contour, the prompts and a legend (small images enlarged);"
                             f" alone: {default}")


def overlay_path(args: argparse.Namespace, beside: Path) -> Path | None:
    """Where ``--overlay`` writes: its PATH, ``beside`` when given alone, ``None`` without it."""
    if args.overlay is None:
        return None
    return beside if args.overlay == OVERLAY_BESIDE else Path(args.overlay)


def sibling(output: Path, tail: str) -> Path:
    """``mask.png`` + ``_overlay.png`` → ``mask_overlay.png`` (``.nii.gz`` counted whole)."""
    from ..io import full_suffix

    suffix = full_suffix(output)
    stem = output.name[: len(output.name) - len(suffix)] if suffix else output.name
    return output.with_name(stem + tail)


def prompt_points(prompts) -> list[tuple[float, float, bool]]:
    """Every prompt's clicks as ``(x, y, include)`` for :func:`polypsam.overlay.draw_overlay`."""
    from ..overlay import prompt_marks

    return prompt_marks(prompts)[1]


def engine_settings_from_args(args: argparse.Namespace):
    """The :class:`~polypsam.engines.EngineSettings` described by the model options."""
    from ..engines import EngineSettings, settings_for

    if getattr(args, "server", None):
        return EngineSettings(kind="server", server_url=args.server, token=token_from_args(args))
    return settings_for(args.checkpoint, args.config, device=args.device,
                        image_size=args.image_size, precision=getattr(args, "precision", "auto"))


def engine_from_args(args: argparse.Namespace):
    """Build the engine described by the model options (through the one engine factory).

    It is closed when the command ends, however it ends (``args.resources``, an ExitStack set
    by :func:`polypsam.cli.main`): a server run deletes its session instead of holding it for
    the server's idle timeout.
    """
    from ..engines import create_engine

    engine = create_engine(engine_settings_from_args(args), allow_download=not args.no_download)
    resources = getattr(args, "resources", None)
    if resources is not None:
        resources.callback(engine.close)
    return engine


def output_stage(args: argparse.Namespace):
    """An :class:`~polypsam.io.OutputStage` for the command's outputs: write each to
    ``stage.path(target)``, then ``stage.commit()``; if the command fails or is interrupted
    first, the staged files are removed when it ends (``args.resources``)."""
    from ..io import OutputStage

    stage = OutputStage()
    resources = getattr(args, "resources", None)
    if resources is not None:
        resources.callback(stage.discard)
    return stage


def intensity_from_args(args: argparse.Namespace):
    from ..preprocess import parse_intensity

    return parse_intensity(args.window) if args.window else None


def run_intensity(args: argparse.Namespace, engine, scalar: bool):
    """``(intensity, provenance record)`` a run of ``engine`` applies to a scalar (or RGB) input:
    ``--window``, else the intensity the checkpoint was fine-tuned with (its sidecar, through
    ``engine.info``), said on stderr, as is a ``--window`` that differs from it."""
    from ..preprocess import describe_intensity
    from ..provenance import intensity_provenance

    given = intensity_from_args(args)
    info = engine.info
    trained = info.default_intensity(None) if hasattr(info, "default_intensity") else None
    used, record = intensity_provenance(given, "--window", trained, scalar)
    if scalar and trained is not None:
        name = info.checkpoint or info.model
        if given is None:
            print(f"polypsam: intensity: {describe_intensity(trained)}, as {name} was fine-tuned"
                  " (from its sidecar; --window overrides)", file=sys.stderr)
        elif given != trained:
            print(f"polypsam: note: --window gives {describe_intensity(given)}, but {name} was"
                  f" fine-tuned with {describe_intensity(trained)}", file=sys.stderr)
    return used, record


def check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> None:
    """Refuse an output path whose suffix is not one of ``allowed``."""
    from ..io import full_suffix

    if full_suffix(path) not in allowed:
        raise InvalidInputError(f"{what} must end in {' or '.join(allowed)}, got {path.name}")


VOLUME_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")


def progress_bar(total: int, unit: str, desc: str):
    """A bar on a terminal; in a log (no terminal) a line every 10 % or 30 s, on stderr."""
    from ..progress import progress_bar as bar

    return bar(total, desc, unit)
