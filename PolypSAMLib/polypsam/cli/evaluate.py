"""``polypsam evaluate PRED GT``: per case and label metrics table, summary and box plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="compare predictions with reference masks (Dice, IoU, NSD, HD95...)",
        description="Per case and per label Dice, IoU, precision, recall, accuracy, NSD at a"
                    " tolerance and HD95/HD in mm (physical space; images: pixels), for two mask"
                    " files or two folders matched by name. JPEG and colour image masks are"
                    " binarised at half range; label maps (NIfTI/NRRD, label PNGs) are compared"
                    " per label. Both empty: Dice 1, NSD 1, HD95 0; one empty: Dice 0, NSD 0,"
                    " HD95 inf.")
    p.add_argument("pred", type=Path, help="predicted mask file or folder")
    p.add_argument("gt", type=Path, help="reference mask file or folder (same names)")
    p.add_argument("--tolerance-mm", type=float, default=2.0,
                   help="NSD tolerance in mm (default: %(default)s)")
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
        rows = evaluate_cases(cases, tolerance_mm=args.tolerance_mm, labels=args.labels,
                              binarize=args.binarize, resample=args.resample,
                              progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    write_csv(rows, args.output)
    print(format_summary(rows))
    print(f"NSD tolerance {args.tolerance_mm:g} mm; wrote {args.output}")
    if args.plot is not None:
        box_plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0
