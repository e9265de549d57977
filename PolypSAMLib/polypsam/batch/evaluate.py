"""``--evaluate``: compare each finished case that has a reference mask, write a table and a plot.

This module only pairs a batch's outputs with their references; metrics, the CSV table, the
summary and the box plot are :mod:`polypsam.evaluation`'s (``evaluate_cases``, ``write_csv``,
``format_summary``, ``box_plot``). A case whose reference cannot be compared (another grid, an
unreadable file) is reported and left out; the others are still scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import PolypSAMError
from .schedule import BatchReport, log_failures

METRICS_CSV = "metrics.csv"
METRICS_PNG = "metrics.png"


def evaluation_pairs(report: BatchReport, outdir: Path) -> list[tuple[str, Path, Path]]:
    """``(case_id, prediction, reference)`` for every finished case with a reference mask.

    A frame's prediction is ``mask.png``, a volume's its labelmap; a sequence's ``masks/`` folder
    is paired with the reference folder frame by frame (matched by name: ``CASE/FRAME``).
    """
    from ..evaluation import pair_cases

    pairs: list[tuple[str, Path, Path]] = []
    for r in report.results:
        if r.status not in ("ok", "skipped") or not r.reference or not r.outputs:
            continue
        pred, ref = outdir / r.case_id / r.outputs[0], Path(r.reference)
        if pred.is_dir():
            pairs += [(f"{r.case_id}/{name}", p, q) for name, p, q in pair_cases(pred, ref)]
        else:
            pairs.append((r.case_id, pred, ref))
    return pairs


def evaluate_batch(report: BatchReport, outdir: Path, *, tolerance_mm: float = 2.0,
                   tolerance_px: float = 2.0, weighting: str = "video",
                   warn: Callable[[str], None] | None = None) -> tuple[list[Path], str]:
    """Write ``OUTDIR/metrics.csv`` and ``OUTDIR/metrics.png``; returns them and a summary text.

    Frames of a sequence case are rows ``CASE/FRAME``; ``weighting`` says whether the sequence
    counts once (``video``, its frames averaged) or once per frame (``frame``) in the summary and
    plot. Images are measured in pixels (``tolerance_px``), volumes in mm (``tolerance_mm``);
    they are summarised apart.
    """
    try:
        from ..evaluation import box_plot, evaluate_cases, format_summary, write_csv
    except ImportError as exc:
        raise PolypSAMError("--evaluate needs polypsam.evaluation and matplotlib"
                            f" (pip install matplotlib): {exc}") from exc
    rows, problems = [], []
    for r in report.results:
        if r.status in ("ok", "skipped") and r.reference and r.outputs:
            try:
                pairs = evaluation_pairs(BatchReport(results=[r]), outdir)
                rows += evaluate_cases(pairs, tolerance_mm=tolerance_mm,
                                       tolerance_px=tolerance_px)
            except PolypSAMError as exc:
                problems.append(f"case {r.case_id}: not evaluated: {exc}")
    for line in problems:
        if warn is not None:
            warn(line)
    log_failures(outdir, problems)
    if not rows:
        raise PolypSAMError("--evaluate: no finished case could be compared with a reference"
                            " (column 'reference' of the manifest)")
    written = [write_csv(rows, outdir / METRICS_CSV),
               box_plot(rows, outdir / METRICS_PNG, weighting=weighting)]
    return written, format_summary(rows, weighting=weighting)
