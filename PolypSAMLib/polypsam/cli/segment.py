"""``polypsam segment``: one image or one volume slice, one mask per box or click prompt.

``--candidates`` keeps SAM2's three candidate masks: ``-o OUT`` gets the best one (as without
the option) and ``OUT_candidate1`` .. ``OUT_candidate3`` (same suffix) each hold one candidate as
label 1 (candidates overlap, so they cannot share one labelmap); their scores are printed.
Every file written gets a provenance sidecar ``FILE.provenance.json`` (model, checkpoint
SHA256, prompts, scores, segments), which ``polypsam export FILE`` carries over.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import options
from .export import (add_export_options, check_export_args, export_from_args, labels_in,
                     run_provenance, write_run_sidecar)
from ..errors import InvalidInputError


OVERLAP_RULE = ("Overlaps: one labelmap holds one label per pixel, so where the masks of several"
                " boxes overlap the pixel goes to the object with the higher score (SAM2's"
                " predicted IoU; on a tie, the lower label).")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment one image or one volume slice from boxes or clicks",
        description="Segment a PNG/JPEG frame, or slice K (--key-slice) of a NIfTI/NRRD/DICOM"
                    " volume, with one mask per box (labels 1..N), or one object from clicks"
                    " (--point, --negative-point) and/or a mask prompt, with or without one box. "
                    + OVERLAP_RULE + " The pixel counts printed are those written.")
    p.add_argument("image", type=Path, help="PNG/JPEG frame, volume file or DICOM folder")
    options.add_box_option(p, required=False)
    options.add_prompt_options(
        p, "the image (or --key-slice K)",
        "mask prompt (non-zero = inside): a PNG of the image's size, or for a volume a labelmap"
        " on its grid (slice K is used); SAM2 refines it with the other prompts")
    p.add_argument("--candidates", action="store_true",
                   help="keep SAM2's three candidate masks: -o gets the best, OUT_candidate1..3"
                        " (same suffix) one each; scores are printed (one object only)")
    p.add_argument("--key-slice", "--slice", type=int, default=None, dest="slice_k", metavar="K",
                   help="slice K of a volume, the one segmented (boxes and clicks in its pixel"
                        " coordinates; as propagate's --key-slice and the manifest's key_slice;"
                        " --slice is the older spelling)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="mask PNG for a frame; .nrrd/.nii.gz labelmap for a volume slice")
    options.add_overlay_option(p, "a PNG overlay", "OUT_overlay.png beside -o")
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
            raise InvalidInputError("--key-slice applies to volumes, not to PNG/JPEG frames")
        image = io.read_image(args.image)
        volume = None
    else:
        volume = io.read_volume(args.image)
        if args.slice_k is None:
            if volume.shape[0] != 1:
                raise InvalidInputError(
                    f"{args.image} has {volume.shape[0]} slices: choose one with --key-slice K"
                )
            args.slice_k = 0
        check_index(args.slice_k, volume.shape[0], f"--key-slice {args.slice_k}",
                    "the volume's slices")
        options.check_suffix(args.output, options.VOLUME_SUFFIXES,
                             "a volume input gives a volume labelmap: -o")
        image = volume.array[args.slice_k]
    height, width = image.shape[:2]
    mask = None
    if args.mask_prompt is not None:
        mask = options.read_mask_prompt(args.mask_prompt, (height, width), args.slice_k)
    prompts = options.prompts_from_args(args, width, height, mask)
    if args.candidates and len(prompts) > 1:
        raise InvalidInputError("--candidates keeps the three masks of one object: give one prompt")
    overlay = options.overlay_path(args, options.sibling(args.output, "_overlay.png"))
    if overlay is not None:
        options.check_suffix(overlay, (".png",), "--overlay")
    engine = options.engine_from_args(args)
    intensity, intensity_record = options.run_intensity(args, engine, scalar=image.ndim == 2)
    results = engine.segment_2d(image, prompts, intensity=intensity, multimask=args.candidates)

    def full_labels(labels: np.ndarray) -> np.ndarray:
        full = np.zeros(volume.shape, dtype=labels.dtype)
        full[args.slice_k] = labels
        return full

    def write(labels: np.ndarray, path: Path) -> None:
        if volume is None:
            io.write_png(labels, path)
        else:
            io.write_volume(volume.with_array(full_labels(labels)), path)

    labels = labelmap_from_masks(results)
    frames = volume is None
    prov = run_provenance(args, engine, source=args.image, prompts={
        "boxes": [p.box for p in prompts if p.box is not None],
        "prompts": [p.to_dict() for p in prompts], "slice": args.slice_k},
        scores={str(n): r.score for n, r in enumerate(results, start=1)},
        intensity=intensity_record)
    stage = options.output_stage(args)  # every output appears together, or none
    write(labels, stage.path(args.output))
    write_run_sidecar(args, stage.path(args.output), prov, labels_in(labels), frames=frames)
    if overlay is not None:
        io.write_png(draw_overlay(image, labels, intensity, boxes=[r.box for r in results],
                                  points=options.prompt_points(prompts)), stage.path(overlay))
        write_run_sidecar(args, stage.path(overlay), prov, labels_in(labels), frames=frames,
                          picture="mask contours and prompts drawn on the input, for viewing")
    export_from_args(args, labels if frames else volume.with_array(full_labels(labels)),
                     provenance=prov, frames=frames,
                     frame_names=[args.image.stem] if frames else None,
                     reference_dicom=args.image if args.image.is_dir() else None, stage=stage)
    if args.candidates:
        (result,) = results
        for index, (cand, score) in enumerate(zip(result.candidates, result.candidate_scores), 1):
            path = stage.path(candidate_path(args.output, index))
            write(cand.astype(np.uint8), path)
            write_run_sidecar(args, path, {**prov, "candidate": index, "candidate_score": score},
                              {1} if cand.any() else set(), frames=frames)
    stage.commit()
    for label, result in enumerate(results, start=1):
        what = result.prompt.describe() if result.prompt is not None else ""
        written, own = int((labels == label).sum()), int(result.mask.sum())
        lost = f" ({own - written} overlapping pixels went to higher-scoring labels)" \
            if written < own else ""
        print(f"label {label}: {what} score {result.score:.3f} pixels {written}{lost}")
    if args.candidates:
        (result,) = results
        for index, (cand, score) in enumerate(zip(result.candidates, result.candidate_scores), 1):
            path = candidate_path(args.output, index)
            best = " (best, in -o)" if index - 1 == result.best else ""
            print(f"candidate {index}: score {score:.3f} pixels {int(cand.sum())}{best} -> {path}")
    print(f"wrote {args.output}" + (f" and {overlay}" if overlay is not None else ""))
    return 0


def candidate_path(output: Path, index: int) -> Path:
    """``out.png`` → ``out_candidate1.png`` (``.nii.gz`` kept whole)."""
    from ..io import full_suffix

    suffix = full_suffix(output)
    stem = output.name[: len(output.name) - len(suffix)] if suffix else output.name
    return output.with_name(f"{stem}_candidate{index}{suffix}")
