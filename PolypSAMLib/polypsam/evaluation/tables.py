"""Metric tables: CSV (one row per case and label), a mean ± sd summary, a box plot per metric."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .metrics import METRICS, LabelMetrics

COLUMNS = ("case", "label", *METRICS, "pred_voxels", "ref_voxels", "tolerance_mm")


def _as_rows(rows: Iterable[LabelMetrics | Mapping]) -> list[dict]:
    return [r.as_row() if isinstance(r, LabelMetrics) else dict(r) for r in rows]


def write_csv(rows: Iterable[LabelMetrics | Mapping], path: str | Path) -> Path:
    """Write one line per case and label (infinite distances as ``inf``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in _as_rows(rows):
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})
    return path


def read_csv(path: str | Path) -> list[dict]:
    """Rows written by :func:`write_csv`, with numbers parsed (``inf`` stays infinite)."""
    out = []
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict = {"case": row["case"], "label": int(row["label"])}
            for key in COLUMNS[2:]:
                if key in row and row[key] != "":
                    parsed[key] = int(row[key]) if key.endswith("voxels") else float(row[key])
            out.append(parsed)
    return out


def summarize(rows: Iterable[LabelMetrics | Mapping],
              metrics: Sequence[str] = METRICS) -> list[dict]:
    """Per label and metric: mean, sample sd, n finite values and n infinite/NaN ones."""
    rows = _as_rows(rows)
    out = []
    for label in sorted({r["label"] for r in rows}):
        for metric in metrics:
            values = np.array([float(r[metric]) for r in rows if r["label"] == label], float)
            finite = values[np.isfinite(values)]
            out.append({
                "label": label, "metric": metric,
                "mean": float(finite.mean()) if finite.size else math.nan,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
                "n": int(finite.size), "n_not_finite": int(values.size - finite.size),
            })
    return out


def format_summary(rows: Iterable[LabelMetrics | Mapping]) -> str:
    """A text table: one line per label, ``mean ± sd`` per metric (distances in mm)."""
    stats = summarize(rows)
    labels = sorted({s["label"] for s in stats})
    header = f"{'label':>5} {'cases':>5} " + " ".join(
        f"{m + (' mm' if m.startswith('hd') else ''):>15}" for m in METRICS)
    lines = [header]
    for label in labels:
        cells = []
        count = 0
        for m in METRICS:
            s = next(x for x in stats if x["label"] == label and x["metric"] == m)
            count = max(count, s["n"] + s["n_not_finite"])
            cell = f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["n"] else "n/a"
            if s["n_not_finite"]:
                cell += f" ({s['n_not_finite']} inf)"
            cells.append(f"{cell:>15}")
        lines.append(f"{label:>5} {count:>5} " + " ".join(cells))
    return "\n".join(lines)


BOX_PLOT_KEY = ("box: quartiles and median; whiskers: 1.5 x IQR; circles: outliers;"
                " green triangle: mean; n: values in the box (infinite distances left out)")


def box_plot(rows: Iterable[LabelMetrics | Mapping], path: str | Path,
             metrics: Sequence[str] = METRICS) -> Path:
    """A PNG with one box plot per metric (one box per label; infinite distances left out)."""
    fig = box_plot_figure(rows, metrics)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def box_plot_figure(rows: Iterable[LabelMetrics | Mapping], metrics: Sequence[str] = METRICS):
    """The figure of :func:`box_plot`: each box's n under its label, and what the marks are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _as_rows(rows)
    labels = sorted({r["label"] for r in rows})
    cols = 4
    nrows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for n, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, cols, n + 1)
        data = []
        for label in labels:
            v = np.array([float(r[metric]) for r in rows if r["label"] == label], float)
            data.append(v[np.isfinite(v)])
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1),
                      [f"{lab}\nn={len(d)}" for lab, d in zip(labels, data)])
        ax.set_title(metric + (" (mm)" if metric.startswith("hd") else ""))
        ax.set_xlabel("label")
        if not metric.startswith("hd"):
            ax.set_ylim(-0.02, 1.02)
    fig.text(0.5, 0.01, BOX_PLOT_KEY, ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
