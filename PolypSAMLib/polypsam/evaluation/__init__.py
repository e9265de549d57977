"""Evaluation of segmentations against reference masks: metrics, case matching, tables, plots.

Library use (what ``polypsam evaluate`` and ``polypsam batch --evaluate`` call)::

    from polypsam.evaluation import evaluate_paths, write_csv, format_summary, box_plot
    rows = evaluate_paths("pred_dir", "gt_dir", tolerance_mm=2.0)   # or evaluate_cases([...])
    write_csv(rows, "metrics.csv"); print(format_summary(rows)); box_plot(rows, "metrics.png")

Every row says its distance unit (``mm`` for volume files, ``px`` for image files) and kind;
summaries and plots never mix them, and frames of a video (cases ``VIDEO/FRAME``) count as one
case unless ``weighting="frame"`` (:mod:`polypsam.evaluation.tables`).

Metric definitions and the empty-mask convention: :mod:`polypsam.evaluation.metrics`; mask
loading (binarising image masks, label maps per label): :mod:`polypsam.evaluation.masks`.
"""

from .cases import (DEFAULT_TOLERANCE_MM, DEFAULT_TOLERANCE_PX, evaluate_case, evaluate_cases,
                    evaluate_paths)
from .masks import load_mask, match_grids, pair_cases
from .metrics import (EMPTY_CONVENTION, METRICS, LabelMetrics, label_metrics, overlap_metrics,
                      surface_metrics)
from .tables import WEIGHTINGS, box_plot, format_summary, read_csv, summarize, write_csv

__all__ = [
    "DEFAULT_TOLERANCE_MM", "DEFAULT_TOLERANCE_PX", "EMPTY_CONVENTION", "METRICS", "WEIGHTINGS",
    "LabelMetrics", "box_plot",
    "evaluate_case", "evaluate_cases", "evaluate_paths", "format_summary", "label_metrics",
    "load_mask", "match_grids", "overlap_metrics", "pair_cases", "read_csv", "summarize",
    "surface_metrics", "write_csv",
]
