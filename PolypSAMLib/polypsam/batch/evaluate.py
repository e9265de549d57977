"""``--evaluate``: compare each finished case that has a reference mask, write a table and a plot.

This module only pairs a batch's outputs with their references; the metrics, the CSV table and
the plot are :mod:`polypsam.evaluation`'s (issue 13, built beside the batch).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PolypSAMError
from .schedule import BatchReport

METRICS_CSV = "metrics.csv"
METRICS_PNG = "metrics.png"


def evaluation_pairs(report: BatchReport, outdir: Path) -> list[tuple[str, Path, Path]]:
    """``(case_id, prediction, reference)`` for every finished case with a reference mask.

    A frame's prediction is ``mask.png``, a volume's its labelmap, a sequence's ``masks/`` folder
    (matched to the reference folder's masks by file name).
    """
    pairs = []
    for r in report.results:
        if r.status in ("ok", "skipped") and r.reference and r.outputs:
            pairs.append((r.case_id, outdir / r.case_id / r.outputs[0], Path(r.reference)))
    return pairs


def evaluate_batch(report: BatchReport, outdir: Path, *, tolerance_mm: float = 2.0) -> list[Path]:
    """Write ``OUTDIR/metrics.csv`` and ``OUTDIR/metrics.png``; returns the paths written."""
    pairs = evaluation_pairs(report, outdir)
    if not pairs:
        raise PolypSAMError("--evaluate: no finished case has a reference mask (column"
                            " 'reference' of the manifest)")
    try:
        from .. import evaluation
    except ImportError as exc:
        raise PolypSAMError("--evaluate needs polypsam.evaluation, which this installation does"
                            " not have yet") from exc
    # Call site for the evaluation package's public functions (wired once they are on main).
    return evaluation.evaluate_cases(pairs, outdir / METRICS_CSV, plot=outdir / METRICS_PNG,
                                     tolerance_mm=tolerance_mm)
