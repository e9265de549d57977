"""What fine-tuning writes beside the best checkpoint: the JSON sidecar, a metrics CSV, a plot.

The sidecar (``OUT.pt.json``, written and read by :mod:`polypsam.checkpoints`) records how the
checkpoint was made: SAM2 config and image size (read back by :mod:`polypsam.engines`, so
``polypsam segment --checkpoint OUT.pt`` needs neither), base checkpoint and its SHA256, data
fingerprints, hyper-parameters, seed, per-epoch metrics and the PolypSAM version.
"""

from __future__ import annotations

import csv
from pathlib import Path

CSV_COLUMNS = ("epoch", "lr", "train_loss", "val_dice", "val_iou", "val_precision", "val_recall",
               "val_accuracy", "improved", "seconds")


def metrics_csv_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".metrics.csv")


def metrics_png_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".metrics.png")


def write_metrics_csv(checkpoint: Path, history: list[dict]) -> Path:
    path = metrics_csv_path(checkpoint)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow(row)
    return path


def plot_metrics(checkpoint: Path, history: list[dict]) -> Path | None:
    """PNG of training loss, validation Dice/IoU and learning rate per epoch (matplotlib Agg)."""
    try:
        fig = metrics_figure(history)
    except ImportError:  # the plot is optional; CSV and sidecar hold the same numbers
        return None
    path = metrics_png_path(checkpoint)
    fig.savefig(path)
    return path


def metrics_figure(history: list[dict]):
    """The figure of :func:`plot_metrics`; the best epoch (the checkpoint kept) is marked."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.2), dpi=100)
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker=".")
    ax_loss.set(title="training loss (Dice + BCE)", xlabel="epoch")
    for key in ("val_dice", "val_iou"):
        ax_val.plot(epochs, [r[key] for r in history], marker=".", label=key[4:])
    best = max(history, key=lambda r: r["val_dice"])  # the first of equals, as training keeps it
    for ax in (ax_loss, ax_val, ax_lr):
        ax.axvline(best["epoch"], color="0.6", linestyle="--", linewidth=1)
    ax_val.plot([best["epoch"]], [best["val_dice"]], marker="*", markersize=12, color="tab:red",
                linestyle="none", label=f"best epoch {best['epoch']} (Dice {best['val_dice']:.4f})")
    ax_val.set(title="validation", xlabel="epoch", ylim=(0, 1))
    ax_val.legend()
    ax_lr.plot(epochs, [r["lr"] for r in history], marker=".")
    ax_lr.set(title="learning rate", xlabel="epoch", yscale="log")
    fig.tight_layout()
    return fig
