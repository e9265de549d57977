"""Segmentation metrics of the Polyps-SAM2 recipe: Dice, IoU, precision, recall, accuracy.

Per image from the confusion counts of a predicted and a ground-truth bool mask, then averaged
over images (the mean-per-image convention of the Kvasir-SEG and CVC-ClinicDB benchmarks).
An empty prediction of an empty truth counts as perfect.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

METRICS = ("dice", "iou", "precision", "recall", "accuracy")


def mask_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Metrics of one ``pred`` mask against ``truth`` (same shape, bool)."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = pred.size - tp - fp - fn

    def ratio(num: int, den: int) -> float:
        return 1.0 if den == 0 else num / den

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0),
        "recall": ratio(tp, tp + fn),
        "accuracy": (tp + tn) / pred.size,
    }


def mean_metrics(per_image: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over images."""
    rows = list(per_image)
    if not rows:
        raise ValueError("no images to average metrics over")
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
