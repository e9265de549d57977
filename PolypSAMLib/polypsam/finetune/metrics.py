"""Validation metrics of the Polyps-SAM2 recipe: Dice, IoU, precision, recall, accuracy.

Per image with :func:`polypsam.evaluation.metrics.overlap_metrics` (the definitions and empty-mask
convention of ``polypsam evaluate``), then averaged over images (the mean-per-image convention of
the Kvasir-SEG and CVC-ClinicDB benchmarks).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..evaluation.metrics import overlap_metrics

METRICS = ("dice", "iou", "precision", "recall", "accuracy")


def mask_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The recipe's metrics of one predicted bool mask against its truth."""
    return overlap_metrics(pred, truth)


def mean_metrics(per_image: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over images."""
    rows = list(per_image)
    if not rows:
        raise ValueError("no images to average metrics over")
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
