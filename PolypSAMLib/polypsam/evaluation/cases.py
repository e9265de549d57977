"""Evaluating cases: a prediction and a reference (files, or folders matched by name).

Distances are in mm for volume files (their spacing) and in pixels for image files (PNG/JPEG
carry no spacing), so each unit has its own NSD tolerance: ``tolerance_mm`` and
``tolerance_px``. Every row records its unit and kind (:class:`~.metrics.LabelMetrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import InvalidInputError
from .masks import LoadedMask, case_name, load_mask, match_grids, pair_cases
from .metrics import LabelMetrics, label_metrics

DEFAULT_TOLERANCE_MM = 2.0
DEFAULT_TOLERANCE_PX = 2.0


def evaluate_case(pred: str | Path, ref: str | Path, *, case: str | None = None,
                  tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                  tolerance_px: float = DEFAULT_TOLERANCE_PX,
                  labels: Sequence[int] | None = None, binarize: bool | None = None,
                  resample: bool = False) -> list[LabelMetrics]:
    """Metrics of one prediction against its reference, one row per label.

    ``labels`` defaults to every non-zero label present in either mask; ``binarize`` overrides
    the automatic choice of :func:`~polypsam.evaluation.masks.load_mask` for both masks;
    ``resample`` puts PRED onto GT's grid (nearest neighbour) instead of refusing different
    grids. A requested label found in neither mask is an error here (use
    :func:`evaluate_cases` for folders, where a label may be absent from some cases).
    NSD uses ``tolerance_mm`` when GT is a volume file, ``tolerance_px`` when it is an image.
    """
    pred_mask, ref_mask = load_mask(pred, binarize), load_mask(ref, binarize)
    present = pred_mask.labels() | ref_mask.labels()
    if labels is not None:
        unknown = sorted(set(int(v) for v in labels) - present)
        if unknown:
            raise InvalidInputError(
                f"label(s) {unknown} are in neither PRED {pred} nor GT {ref}"
                f" (labels there: {sorted(present) or 'none'})")
    return _metrics(pred_mask, ref_mask, case or case_name(Path(ref)),
                    (tolerance_mm, tolerance_px), labels, resample)


def evaluate_cases(cases: Iterable[tuple[str, str | Path, str | Path]], *,
                   tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                   tolerance_px: float = DEFAULT_TOLERANCE_PX,
                   labels: Sequence[int] | None = None, binarize: bool | None = None,
                   resample: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> list[LabelMetrics]:
    """Metrics of many ``(case, pred, ref)`` triples, one row per case and label.

    Without ``labels`` each case is scored on the labels present in either of its masks. With
    ``labels``, every case is scored on those labels (absent from both masks counts as a correct
    empty result), and a label found in no case at all is an error (a typo, most likely).
    A case named ``VIDEO/FRAME`` is a frame of the video ``VIDEO`` (see
    :func:`~polypsam.evaluation.tables.summarize` for how frames are weighted).
    """
    cases = list(cases)
    if not cases:
        raise InvalidInputError("no cases to evaluate")
    rows: list[LabelMetrics] = []
    seen: set[int] = set()
    for done, (name, pred, ref) in enumerate(cases, start=1):
        pred_mask, ref_mask = load_mask(pred, binarize), load_mask(ref, binarize)
        seen |= pred_mask.labels() | ref_mask.labels()
        rows.extend(_metrics(pred_mask, ref_mask, name, (tolerance_mm, tolerance_px), labels,
                             resample))
        if progress is not None:
            progress(done, len(cases))
    if labels is not None:
        unknown = sorted(set(int(v) for v in labels) - seen)
        if unknown:
            raise InvalidInputError(f"label(s) {unknown} occur in none of the {len(cases)} cases"
                                    f" (labels there: {sorted(seen) or 'none'})")
    return rows


def evaluate_paths(pred: str | Path, ref: str | Path, **kwargs) -> list[LabelMetrics]:
    """:func:`evaluate_cases` on two files or two folders (matched by name without suffix)."""
    return evaluate_cases(pair_cases(Path(pred), Path(ref)), **kwargs)


def distance_unit(ref: LoadedMask) -> str:
    """``px`` for an image file (no spacing), ``mm`` for a volume file."""
    return "px" if ref.from_image_file else "mm"


def _metrics(pred_mask, ref_mask, case, tolerances, labels, resample) -> list[LabelMetrics]:
    tolerance_mm, tolerance_px = tolerances
    for value, unit in ((tolerance_mm, "mm"), (tolerance_px, "px")):
        if not value >= 0:
            raise InvalidInputError(f"the NSD tolerance must be >= 0 {unit}, got {value}")
    unit = distance_unit(ref_mask)
    pred_image = match_grids(pred_mask, ref_mask, resample)
    wanted = sorted(set(int(v) for v in labels) if labels is not None
                    else (pred_mask.labels() | ref_mask.labels()))
    if not wanted:
        # both masks empty and no label requested: score label 1 (the conventional "both empty")
        wanted = [1]
    tolerance = tolerance_px if unit == "px" else tolerance_mm
    return [label_metrics(pred_image, ref_mask.image, lab, tolerance, case, distance_unit=unit)
            for lab in wanted]
