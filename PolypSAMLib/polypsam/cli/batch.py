"""``polypsam batch MANIFEST.csv -o OUTDIR``: many cases from a CSV manifest, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import options
from .evaluate import add_metric_options

MANIFEST_HELP = """\
manifest columns (CSV with a header row; input and boxes or points are required):
  case_id    output folder name (letters, digits, . _ -; default: the input's name)
  input      frame (PNG/JPEG), volume (NIfTI/NRRD/MHA, DICOM file or series folder),
             folder of frames or video; relative to the manifest's folder
  task       segment | propagate | track, or empty (frame: segment; volume: propagate,
             or segment if it has one slice; frames/video: track)
  boxes      X0 Y0 X1 Y1 pixels (inclusive; x = column, y = row), several separated
             by ';' -> labels 1..N, e.g. "40 155 263 279; 300 20 370 80"
  points     include clicks "X Y; X Y" on the key slice/frame for ONE object (as --point):
             with the single box, or alone as one object; several boxes with points is an
             error for that row
  negative_points   exclude clicks "X Y; X Y" (as --negative-point)
  slice_points, slice_negative_points   propagate: clicks "K X Y; K X Y" on other slices
             (as --slice-point K X Y)
  frame_points, frame_negative_points   track: clicks "FRAME X Y; FRAME X Y" on other
             frames (as --frame-point FRAME X Y)
  key_slice  volume: slice K the boxes and points are on, as --key-slice (propagate:
             default middle of slices; segment: required unless the volume has one slice)
  slices     propagate: slice range "K0 K1" (inclusive; default all slices)
  frame      track: index of the frame the boxes and points are on (0-based; default 0;
             as --frame)
  reference  optional reference mask (image, labelmap or folder of masks) for --evaluate
  window     optional intensity for this row, as --window

  other columns (notes, patient id...) are kept as they are, in summary.csv and case.json

outputs: OUTDIR/CASE_ID/ mask.png | labelmap.nii.gz (input's geometry) | masks/FRAME.png,
with --overlay also overlay.png | overlay/slice_K.png | overlay/FRAME.png, plus case.json
(status, prompts, provenance, timings; written last, marks the case done);
OUTDIR/summary.csv (every row with its status: ok, skipped = finished earlier, failed,
invalid = the row could not be read, not run = interrupted first), failures.csv, batch.log
(always: start, every case, end); with --evaluate metrics.csv and metrics.png.
A bad row or failed case is logged and the batch goes on (exit status 1 at the end).
Re-running skips finished cases; changed rows or model settings run again.

example:
  case_id,input,task,boxes,points,negative_points,slices,key_slice,frame,reference,window
  kvasir1,images/a.jpg,,39 6 429 337,,,,,,masks/a.jpg,
  kvasir2,images/b.jpg,,,210 170; 230 180,20 20,,,,masks/b.jpg,
  lesion1,ct/lesion_img.nii.gz,propagate,250 240 290 280,270 260,,5 7,6,,ct/lesion.nii.gz,
  clip1,video/frames,track,149 69 201 104,,,,,0,,
"""

EXIT_FAILED_CASES = 1
LABELMAP_SUFFIXES = {"nifti": ".nii.gz", "nrrd": ".nrrd"}  # --labelmap-format, as export's --to
LABELMAP_ALIASES = {"nii.gz": "nifti"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="run segment/propagate/track on every row of a CSV manifest",
        description="Run every case of a manifest CSV (images, volumes, frame folders or videos"
                    " with their box and click prompts) and write one output folder per case. Resumable;"
                    " a failed case is logged and the batch goes on. --workers N runs N"
                    " processes here, --scheduler ADDRESS an existing Dask cluster.",
        epilog=MANIFEST_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="manifest CSV (columns below)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--workers", type=int, default=0, metavar="N",
                       help="run N worker processes on this machine (Dask LocalCluster; each"
                            " loads the model once) (default: %(default)s: one case after another"
                            " in this process)")
    scale.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="address of an existing Dask scheduler (tcp://host:8786); inputs and"
                            " OUTDIR must be at the same paths on every worker")
    p.add_argument("--threads", type=int, default=0, metavar="T",
                   help="torch threads of every model call, in this process and on every worker"
                        " (default: %(default)s = this process's torch thread count). Results can differ by a"
                        " pixel between thread counts; the same T gives the same outputs whether"
                        " a case runs here or on a worker. Recorded in case.json")
    p.add_argument("--labelmap-format", choices=tuple(LABELMAP_SUFFIXES), default="nifti",
                   type=lambda text: LABELMAP_ALIASES.get(text, text),
                   help="file format of volume labelmaps, named as export's --to (nii.gz is the"
                        " older spelling of nifti) (default: %(default)s)")
    p.add_argument("--overlay", action="store_true",
                   help="also write overlays for a person to look at in each case folder:"
                        " overlay.png (a frame or one slice) or overlay/ (one PNG per slice or"
                        " frame), as --overlay of segment, propagate and track")
    p.add_argument("--evaluate", action="store_true",
                   help="at the end, compare cases that have a reference mask: OUTDIR/metrics.csv"
                        " and OUTDIR/metrics.png")
    add_metric_options(p, "--evaluate: ")
    options.add_engine_options(p)
    p.set_defaults(handler=run_batch_command)


def run_batch_command(args: argparse.Namespace) -> int:
    import os

    from ..batch import BatchPlan, read_manifest, run_batch
    from ..batch.runner import default_threads
    from ..errors import InvalidInputError

    if args.workers < 0:
        raise InvalidInputError(f"--workers must be 0 or more, got {args.workers}")
    if args.threads < 0:
        raise InvalidInputError(f"--threads must be a positive number, got {args.threads}")
    if args.output.exists() and not args.output.is_dir():
        raise InvalidInputError(f"-o {args.output} exists and is not a folder")
    if args.window:
        options.intensity_from_args(args)  # a bad --window fails before any case runs
    manifest = read_manifest(args.manifest)
    plan = BatchPlan(outdir=args.output.resolve(),
                     settings=options.engine_settings_from_args(args),
                     allow_download=not args.no_download, window=args.window or "",
                     labelmap_suffix=LABELMAP_SUFFIXES[args.labelmap_format],
                     overlay=args.overlay, threads=args.threads)
    plan = default_threads(plan)
    say_trained_intensity(plan)
    cores = os.cpu_count() or 1
    if args.workers and plan.threads and args.workers * plan.threads > cores:
        print(f"polypsam: note: {args.workers} workers x {plan.threads} torch threads on {cores}"
              f" cores: every model call runs with {plan.threads} threads, as in one process, so"
              " the outputs are the same; --threads sets another count (the same in one process"
              " gives the same outputs)", file=sys.stderr)
    for error in manifest.errors:
        print(f"polypsam: row {error.row} invalid, not run: {error.message}", file=sys.stderr)
    if manifest.extra_columns:
        print(f"polypsam: manifest columns kept as they are (in summary.csv and case.json):"
              f" {', '.join(manifest.extra_columns)}", file=sys.stderr)
    bar = options.progress_bar(len(manifest.cases), "case", "batch")

    def on_result(result) -> None:
        if result.status == "failed":
            bar.write(f"polypsam: case {result.case_id} failed: {result.error}", file=sys.stderr)
        bar.update(1)

    try:
        report = run_batch(manifest, plan, workers=args.workers, scheduler=args.scheduler,
                           on_result=on_result)
    except KeyboardInterrupt:
        bar.close()
        print(f"polypsam: interrupted; finished cases are kept in {plan.outdir}: run the same"
              " command again to resume", file=sys.stderr)
        return options.EXIT_INTERRUPTED
    finally:
        bar.close()
    print(f"{report.count('ok')} cases done, {report.count('skipped')} already finished,"
          f" {report.failed} failed ({report.seconds:.1f} s); outputs in {plan.outdir}")
    if report.failed:
        print(f"failures listed in {plan.outdir / 'failures.csv'}")
    if args.evaluate:
        from ..batch.evaluate import evaluate_batch

        written, summary = evaluate_batch(
            report, plan.outdir, tolerance_mm=args.tolerance_mm, tolerance_px=args.tolerance_px,
            weighting=args.frame_weighting,
            warn=lambda line: print(f"polypsam: {line}", file=sys.stderr))
        print(summary)
        print("wrote " + " and ".join(str(p) for p in written))
    return EXIT_FAILED_CASES if report.failed else 0


def say_trained_intensity(plan) -> None:
    """Say when the checkpoint's fine-tuning intensity applies to rows without a window."""
    from ..engines import trained_intensity
    from ..preprocess import describe_intensity

    trained = trained_intensity(plan.settings)
    if trained is None:
        return
    if not plan.window:
        print(f"polypsam: scalar inputs of rows without a window: {describe_intensity(trained)},"
              " as the checkpoint was fine-tuned (from its sidecar; recorded in case.json)",
              file=sys.stderr)
    else:
        print(f"polypsam: note: --window {plan.window} differs from the checkpoint's fine-tuning"
              f" intensity, {describe_intensity(trained)}", file=sys.stderr)
