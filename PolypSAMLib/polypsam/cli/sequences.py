"""Sequence commands of the ``polypsam`` CLI: ``propagate`` (volumes) and ``track`` (frames).

``polypsam propagate VOLUME --box X0 Y0 X1 Y1 --slices K0 K1 [--key-slice K] -o OUT.nrrd``
segments the key slice and propagates through the slice range (NIfTI/NRRD/DICOM folder in,
NRRD/NIfTI labelmap out, on the input's grid). ``polypsam track FRAMES --frame FRAME --box ...
-o DIR`` tracks through a folder of frames or a video, writing one PNG label mask per frame named
like the frame (plus optional overlays). Both show progress; Ctrl-C stops cleanly with exit 130,
and neither leaves a partial output. Each output carries its provenance in a sidecar
(``OUT.nrrd.provenance.json``; ``DIR/provenance.json``) that ``polypsam export`` reads back.

Clicks: ``--point X Y`` / ``--negative-point X Y`` are on the key slice (``--key-slice``) or the
prompted frame (``--frame``) and go with the single ``--box`` (or make the object alone);
``--slice-point K X Y`` / ``--frame-point FRAME X Y`` (and their ``-negative-`` forms) are clicks on
other slices/frames, each a conditioning slice of the tracker. ``--mask-prompt`` gives the key
slice's mask (an existing segment: a labelmap on the volume's grid, or a PNG for a frame).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import options
from .export import (add_export_options, check_export_args, export_from_args, labels_in,
                     run_provenance, write_run_sidecar)
from ..errors import InvalidInputError
from .options import EXIT_INTERRUPTED


def register(subparsers) -> None:
    """Add the ``propagate`` and ``track`` commands to the main parser's subparsers."""
    p = subparsers.add_parser(
        "propagate", help="segment a key slice from boxes or clicks and propagate through a volume",
        description="Segment the key slice (default: middle of --slices) of a NIfTI/NRRD volume or"
                    " DICOM folder from box or click prompts, then propagate with SAM2 forward and backward"
                    " through the slice range. One label per box (1..N); the labelmap keeps the"
                    " input's origin, spacing and direction. Overlaps: where objects overlap on a"
                    " slice, the voxel goes to the object with the higher score there (its mask"
                    " logit maximum; on a tie, the lower label).")
    p.add_argument("volume", type=Path, help="NIfTI/NRRD/MHA file or DICOM series folder")
    options.add_box_option(p, required=False)
    options.add_prompt_options(
        p, "the key slice",
        "mask prompt on the key slice (non-zero = inside): a labelmap on the volume's grid (its"
        " key slice is used) or a PNG of the slice size. Alone it seeds the propagation as it"
        " is; with a box or clicks SAM2 refines it first")
    options.add_click_refinement_options(p, "slice")
    p.add_argument("--slices", nargs=2, type=int, required=True, metavar=("K0", "K1"),
                   help="slice range along the volume's K axis as stored (inclusive)")
    p.add_argument("--key-slice", type=int, default=None, metavar="K",
                   help="slice the boxes and --point clicks are on, as segment's --key-slice and"
                        " the manifest's key_slice (default: middle of the range)")
    p.add_argument("--until", choices=("range", "lost"), default="range",
                   help="stop at the slice range or continue beyond it while the object is"
                        " still found (default: %(default)s)")
    p.add_argument("--largest-component", action="store_true",
                   help="keep only each label's largest 3-D connected component")
    p.add_argument("-o", "--output", type=Path, required=True, help="labelmap .nrrd or .nii.gz")
    options.add_overlay_option(p, "one PNG overlay per slice of the range (slice_K.png)",
                               "folder OUT_overlay/ beside -o")
    options.add_engine_options(p)
    add_export_options(p)
    p.set_defaults(handler=run_propagate)

    t = subparsers.add_parser(
        "track", help="track boxes or clicked objects through a folder of frames or a video, both ways",
        description="Segment frame FRAME from box or click prompts and track the objects backward"
                    " and forward through the sequence. Writes one PNG label mask per frame"
                    " (labels 1..N), named like the frames. Overlaps: where objects overlap on a"
                    " frame, the pixel goes to the object with the higher score there (its mask"
                    " logit maximum; on a tie, the lower label).")
    t.add_argument("frames", type=Path, help="folder of PNG/JPEG frames or a video file")
    t.add_argument("--frame", type=int, required=True, metavar="FRAME",
                   help="index of the frame the boxes and --point clicks are on (0-based, natural"
                        " order; the manifest's frame)")
    options.add_box_option(t, required=False)
    options.add_prompt_options(
        t, "frame FRAME",
        "mask prompt on frame FRAME: a PNG of the frame size (non-zero = inside); alone it seeds"
        " the tracking as it is")
    options.add_click_refinement_options(t, "frame")
    t.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    options.add_overlay_option(t, "one PNG overlay per frame, named like the masks",
                               "folder overlay/ in -o")
    options.add_engine_options(t)
    add_export_options(t)
    t.set_defaults(handler=run_track)


def run_propagate(args: argparse.Namespace) -> int:
    from .. import io
    from ..geometry import check_slice_range
    from ..propagation import propagate

    options.check_suffix(args.output, options.VOLUME_SUFFIXES, "-o (a labelmap)")
    check_export_args(args, args.volume)
    intensity = options.intensity_from_args(args)
    volume = io.read_volume(args.volume)
    nk, nj, ni = volume.shape
    k0, k1 = check_slice_range(args.slices, nk, "--slices")
    if args.key_slice is not None and not k0 <= args.key_slice <= k1:
        raise InvalidInputError(f"--key-slice {args.key_slice} lies outside --slices {k0} {k1}")
    key = (k0 + k1) // 2 if args.key_slice is None else args.key_slice
    mask = None
    if args.mask_prompt is not None:
        mask = options.read_mask_prompt(args.mask_prompt, (nj, ni), key)
    prompts = options.prompts_from_args(args, ni, nj, mask)
    refinements = options.refinements_from_args(args, nk, "slice")
    engine = options.engine_from_args(args)
    intensity, intensity_record = options.run_intensity(args, engine, scalar=True)
    bar = options.progress_bar(k1 - k0 + 1, "slice", "propagate")

    def progress(done: int, total: int) -> None:
        if args.until == "lost" and done > bar.total:
            bar.total = done
        bar.update(done - bar.n)

    try:
        result = propagate(
            engine, volume, prompts, (k0, k1), key, until=args.until, refinements=refinements,
            largest_component=args.largest_component, intensity=intensity, progress=progress,
        )
    except KeyboardInterrupt:
        bar.close()
        print("polypsam: interrupted; no labelmap was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    prov = run_provenance(args, engine, source=args.volume, prompts={
        "boxes": [p.box for p in prompts if p.box is not None],
        "prompts": [p.to_dict() for p in prompts],
        "refinements": [r.to_dict() for r in refinements],
        "key_slice": result.key_slice, "slices": list(result.slices)},
        until=args.until, largest_component=args.largest_component,
        key_slice_scores={str(k): v for k, v in result.scores.items()},
        intensity=intensity_record)
    lab = result.labelmap.array
    stage = options.output_stage(args)  # the labelmap and its export appear together, or none
    io.write_volume(result.labelmap, stage.path(args.output))
    write_run_sidecar(args, stage.path(args.output), prov, labels_in(lab), frames=False)
    overlay = options.overlay_path(args, options.sibling(args.output, "_overlay"))
    if overlay is not None:
        from ..overlay import slice_overlay_name, slice_overlays

        folder = stage.path(overlay)
        folder.mkdir(parents=True, exist_ok=True)
        first, last = result.slices
        for k, picture in slice_overlays(volume.array, result.labelmap.array,
                                         range(first, last + 1), intensity, key=result.key_slice,
                                         prompts=prompts, refinements=refinements):
            io.write_png(picture, folder / slice_overlay_name(k))
        write_run_sidecar(args, folder, prov, labels_in(lab), frames=False,
                          picture="mask contours and prompts drawn on each slice, for viewing")
    export_from_args(args, result.labelmap, provenance=prov, frames=False,
                     reference_dicom=args.volume if args.volume.is_dir() else None, stage=stage)
    stage.commit()
    lab = result.labelmap.array
    write_run_sidecar(args, args.output, prov, labels_in(lab), frames=False)
    export_from_args(args, result.labelmap, provenance=prov, frames=False,
                     reference_dicom=args.volume if args.volume.is_dir() else None)
    for label, score in sorted(result.scores.items()):
        voxels = int((lab == label).sum())
        print(f"label {label}: key-slice score {score:.3f} voxels {voxels}")
    print(f"key slice {result.key_slice}, slices {result.slices[0]}..{result.slices[1]} written;"
          f" wrote {args.output}" + (f" and overlays in {overlay}" if overlay is not None else ""))
    return 0


def run_track(args: argparse.Namespace) -> int:
    from .. import io
    from ..frames import read_frames
    from ..geometry import check_index
    from ..overlay import draw_overlay
    from ..propagation import iter_track

    intensity = options.intensity_from_args(args)
    check_export_args(args)
    frames = read_frames(args.frames)
    n = len(frames)
    check_index(args.frame, n, f"--frame {args.frame}", "the sequence's frames")
    first = np.asarray(frames[args.frame])
    mask = None
    if args.mask_prompt is not None:
        mask = options.read_mask_prompt(args.mask_prompt, first.shape[:2])
    prompts = options.prompts_from_args(args, first.shape[1], first.shape[0], mask)
    refinements = options.refinements_from_args(args, n, "frame")
    boxes = [p.box for p in prompts]
    if args.output.exists() and not args.output.is_dir():
        raise InvalidInputError(f"-o {args.output} exists and is not a folder")
    names = list(getattr(frames, "names", None) or [f"{i:04d}" for i in range(n)])
    engine = options.engine_from_args(args)
    intensity, intensity_record = options.run_intensity(args, engine, scalar=first.ndim == 2)
    stage = options.output_stage(args)  # masks go to a temporary folder, renamed when all are done
    staged = stage.path(args.output)
    staged.mkdir(exist_ok=True)
    overlay_dir = options.overlay_path(args, args.output / "overlay")
    if overlay_dir is not None:
        stage.path(overlay_dir).mkdir(parents=True, exist_ok=True)
    bar = options.progress_bar(n, "frame", "track")
    written = 0
    present: set[int] = set()
    kept = {} if args.export else None
    try:
        for frame, labels, _scores in iter_track(
            engine, frames, args.frame, prompts, refinements=refinements, intensity=intensity,
        ):
            io.write_png(labels, staged / f"{names[frame]}.png")
            present |= labels_in(labels)
            if kept is not None:
                kept[frame] = labels
            if overlay_dir is not None:
                here = [r for r in refinements if r.frame == frame]
                io.write_png(draw_overlay(
                    np.asarray(frames[frame]), labels, intensity,
                    boxes=boxes if frame == args.frame else (),
                    points=options.prompt_points(prompts if frame == args.frame else here),
                ), stage.path(overlay_dir / f"{names[frame]}.png"))
            written += 1
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        stage.discard()
        print(f"polypsam: interrupted after {written} of {n} frames; nothing was written to"
              f" {args.output}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    prov = run_provenance(args, engine, source=args.frames, prompts={
        "boxes": [b for b in boxes if b is not None],
        "prompts": [p.to_dict() for p in prompts],
        "refinements": [r.to_dict() for r in refinements], "key_frame": args.frame},
        intensity=intensity_record)
    overlays = None
    if overlay_dir is not None:
        overlays = (f"{overlay_dir.name}/" if overlay_dir.parent == args.output
                    else str(overlay_dir))
        if args.output not in overlay_dir.parents:  # a folder of its own: its own provenance
            write_run_sidecar(args, stage.path(overlay_dir), prov, present, frames=True,
                              picture="mask contours and prompts drawn on each frame, for viewing")
    write_run_sidecar(args, staged, prov, present, frames=True,
                      files=[f"{name}.png" for name in names], overlays=overlays)
    if kept:
        blank = np.zeros_like(next(iter(kept.values())))
        export_from_args(args, np.stack([kept.get(i, blank) for i in range(n)]), provenance=prov,
                         frames=True, frame_names=names, stage=stage)
    stage.commit()
    print(f"wrote {written} masks to {args.output}" + (f" and overlays to {overlay_dir}"
                                                         if overlay_dir is not None else ""))
    return 0
