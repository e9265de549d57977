"""``polypsam evaluate PRED GT``: per case and label metrics table, summary and box plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options

UNITS_HELP = (
    "Units: volume files (NIfTI/NRRD/MHA/DICOM) are measured in mm with their spacing; image"
    " files (PNG/JPEG) carry no spacing and are measured in pixels. Every CSV row says its"
    " distance_unit (mm or px) and kind (volume, slice, image); the summary and the plot give"
    " one block per kind and unit and never average mm with pixels. A subfolder of frame masks"
    " is a video: its frames are cases VIDEO/FRAME.")


def add_metric_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """NSD tolerances (one per unit) and the frame weighting, shared with ``batch --evaluate``."""
    p.add_argument("--tolerance-mm", type=float, default=2.0,
                   help=f"{prefix}NSD tolerance in mm, for volume files (default: %(default)s)")
    p.add_argument("--tolerance-px", type=float, default=2.0,
                   help=f"{prefix}NSD tolerance in pixels, for image files, which have no"
                        " spacing (default: %(default)s)")
    p.add_argument("--frame-weighting", choices=("video", "frame"), default="video",
                   help=f"{prefix}how the frames of a video enter means and plots: 'video' averages"
                        " a video's frames first, so a video counts as one case like an image or a"
                        " volume; 'frame' counts every frame as a case (default: %(default)s)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="compare predictions with reference masks (Dice, IoU, NSD, HD95...)",
        description="Per case and per label Dice, IoU, precision, recall, accuracy, NSD at a"
                    " tolerance and HD95/HD for two mask files or two folders matched by name."
                    " JPEG and colour image masks are binarised at half range; label maps"
                    " (NIfTI/NRRD, label PNGs) are compared per label. Both empty: Dice 1, NSD 1,"
                    " HD95 0; one empty: Dice 0, NSD 0, HD95 inf. " + UNITS_HELP)
    p.add_argument("pred", type=Path, help="predicted mask file or folder")
    p.add_argument("gt", type=Path, help="reference mask file or folder (same names)")
    add_metric_options(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="metrics table .csv")
    p.add_argument("--plot", type=Path, default=None, help="box plot per metric (.png)")
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="labels to score (default: every label present)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--binarize", dest="binarize", action="store_true", default=None,
                   help="binarise every mask (images at half range, volumes at > 0)")
    b.add_argument("--no-binarize", dest="binarize", action="store_false",
                   help="keep integer values as labels, also in JPEG/grey image masks")
    p.add_argument("--resample", action="store_true",
                   help="resample PRED onto GT's grid (nearest neighbour) when they differ")
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import (box_plot, evaluate_cases, format_summary, pair_cases,
                              write_csv)

    options.check_suffix(args.output, (".csv",), "-o (the metrics table)")
    if args.plot is not None:
        options.check_suffix(args.plot, (".png",), "--plot")
    cases = pair_cases(args.pred, args.gt)
    bar = options.progress_bar(len(cases), "case", "evaluate")
    try:
        rows = evaluate_cases(cases, tolerance_mm=args.tolerance_mm,
                              tolerance_px=args.tolerance_px, labels=args.labels,
                              binarize=args.binarize, resample=args.resample,
                              progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    write_csv(rows, args.output)
    print(format_summary(rows, weighting=args.frame_weighting))
    print(f"wrote {args.output}")
    if args.plot is not None:
        box_plot(rows, args.plot, weighting=args.frame_weighting)
        print(f"wrote {args.plot}")
    return 0
