"""Metric tables: CSV (one row per case and label), summaries and box plots that say their units.

Means never mix units or kinds. Rows are summarised in blocks of one kind and one distance unit
(volumes in mm, single slices of volume files in mm, image files in pixels), per label.
Frames of one video (cases named ``VIDEO/FRAME``) are weighted by ``weighting``:

* ``"video"`` (default): a video's frames are averaged first, per metric (over the frames whose
  value is finite; a video with none is infinite), so a video counts as one case, as much as
  one image or one volume;
* ``"frame"``: every frame counts as one case.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .metrics import DISTANCE_METRICS, DISTANCE_UNITS, KINDS, METRICS, LabelMetrics, case_group

COLUMNS = ("case", "group", "kind", "label", *METRICS, "distance_unit", "nsd_tolerance",
           "pred_voxels", "ref_voxels")
WEIGHTINGS = {
    "video": "the frames of a video are averaged first: a video counts as one case",
    "frame": "every frame of a video counts as one case",
}
_KIND_ORDER = ("volume", "slice", "image")
_SHORT_KIND = {"volume": "volumes", "slice": "slices", "image": "images"}


def _as_rows(rows: Iterable[LabelMetrics | Mapping]) -> list[dict]:
    out = []
    for r in rows:
        row = r.as_row() if isinstance(r, LabelMetrics) else dict(r)
        row.setdefault("group", case_group(str(row["case"])))
        row.setdefault("kind", "volume")
        row.setdefault("distance_unit", "mm")
        out.append(row)
    return out


def write_csv(rows: Iterable[LabelMetrics | Mapping], path: str | Path) -> Path:
    """Write one line per case and label, numbers in full precision (the shortest text that
    reads back as the same float; infinite distances as ``inf``). ``distance_unit`` says what
    ``hd95``, ``hd`` and ``nsd_tolerance`` are measured in (``mm`` or ``px``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in _as_rows(rows):
            writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v)
                             for k, v in row.items()})
    return path


def read_csv(path: str | Path) -> list[dict]:
    """Rows written by :func:`write_csv`, with numbers parsed (``inf`` stays infinite)."""
    out = []
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict = {"case": row["case"], "label": int(row["label"]),
                            "group": row.get("group") or case_group(row["case"]),
                            "kind": row.get("kind") or "volume",
                            "distance_unit": row.get("distance_unit") or "mm"}
            for key in (*METRICS, "nsd_tolerance", "pred_voxels", "ref_voxels"):
                if row.get(key, "") != "":
                    parsed[key] = int(row[key]) if key.endswith("voxels") else float(row[key])
            out.append(parsed)
    return out


def blocks(rows: Iterable[LabelMetrics | Mapping]) -> list[tuple[str, str, list[dict]]]:
    """``(kind, distance_unit, rows)`` per kind and unit present (volumes, slices, images)."""
    rows = _as_rows(rows)
    keys = sorted({(r["kind"], r["distance_unit"]) for r in rows},
                  key=lambda k: (_KIND_ORDER.index(k[0]) if k[0] in _KIND_ORDER else 9, k))
    return [(kind, unit, [r for r in rows if (r["kind"], r["distance_unit"]) == (kind, unit)])
            for kind, unit in keys]


def case_values(rows: Sequence[Mapping], metric: str, weighting: str = "video"):
    """``(values, frames_left_out)``: one value per case under ``weighting`` (see the module),
    and how many infinite frame values were left out of their video's mean."""
    check_weighting(weighting)
    if weighting == "frame":
        return np.array([float(r[metric]) for r in rows], float), 0
    by_group: dict[str, list[float]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(float(r[metric]))
    values, left_out = [], 0
    for frames in by_group.values():
        v = np.array(frames, float)
        finite = v[np.isfinite(v)]
        values.append(float(finite.mean()) if finite.size else math.inf)
        if finite.size and len(frames) > 1:
            left_out += int(v.size - finite.size)
    return np.array(values, float), left_out


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        from ..errors import InvalidInputError

        raise InvalidInputError(f"frame weighting must be one of {', '.join(WEIGHTINGS)},"
                                f" got {weighting!r}")
    return weighting


def summarize(rows: Iterable[LabelMetrics | Mapping], metrics: Sequence[str] = METRICS,
              weighting: str = "video") -> list[dict]:
    """Per kind, distance unit, label and metric: mean, sample sd, n cases with a finite value,
    n cases without (infinite distances, counted apart) and frames left out of a video's mean.

    Under ``weighting="video"`` a case is a video (its frames averaged) or a single file.
    """
    out = []
    for kind, unit, block in blocks(rows):
        for label in sorted({r["label"] for r in block}):
            here = [r for r in block if r["label"] == label]
            for metric in metrics:
                values, left_out = case_values(here, metric, weighting)
                finite = values[np.isfinite(values)]
                out.append({
                    "kind": kind, "distance_unit": unit, "label": label, "metric": metric,
                    "mean": float(finite.mean()) if finite.size else math.nan,
                    "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
                    "n": int(finite.size), "n_not_finite": int(values.size - finite.size),
                    "frames_left_out": left_out,
                })
    return out


def metric_title(metric: str, unit: str) -> str:
    """``hd95 (mm)``; unitless metrics as they are."""
    return f"{metric} ({unit})" if metric in DISTANCE_METRICS else metric


def format_summary(rows: Iterable[LabelMetrics | Mapping], weighting: str = "video") -> str:
    """A text table per kind and distance unit: one line per label, ``mean ± sd`` per metric."""
    rows = _as_rows(rows)
    stats = summarize(rows, weighting=weighting)
    lines: list[str] = []
    videos = 0
    for kind, unit, block in blocks(rows):
        tolerances = ", ".join(f"{v:g}" for v in sorted({float(r["nsd_tolerance"]) for r in block}))
        frames: dict[str, int] = {}
        for r in block:
            frames[r["group"]] = frames.get(r["group"], 0) + 1
        multi = sum(1 for c in frames.values() if c > 1)
        videos += multi
        lines.append(f"{KINDS.get(kind, kind)}: distances in {DISTANCE_UNITS[unit]} ({unit}),"
                     f" NSD tolerance {tolerances} {unit}")
        lines.append(f"{'label':>5} {'cases':>5} "
                     + " ".join(f"{metric_title(m, unit):>15}" for m in METRICS))
        for label in sorted({r["label"] for r in block}):
            cells, count, left_out = [], 0, []
            for m in METRICS:
                s = next(x for x in stats if (x["kind"], x["distance_unit"], x["label"],
                                              x["metric"]) == (kind, unit, label, m))
                count = max(count, s["n"] + s["n_not_finite"])
                cell = f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["n"] else "n/a"
                if s["n_not_finite"]:
                    cell += f" ({s['n_not_finite']} inf)"
                if s["frames_left_out"]:
                    left_out.append(f"{m}: {s['frames_left_out']}")
                cells.append(f"{cell:>15}")
            lines.append(f"{label:>5} {count:>5} " + " ".join(cells))
            if left_out:
                lines.append(f"      infinite frame values left out of their video's mean:"
                             f" {', '.join(left_out)}")
    if videos:
        lines.append(f"{videos} video(s): {WEIGHTINGS[weighting]} (frame weighting"
                     f" '{weighting}')")
    return "\n".join(lines)


BOX_PLOT_KEY = ("box: quartiles and median; whiskers: 1.5 x IQR; circles: outliers;"
                " green triangle: mean; n: values in the box (infinite distances left out)")


def box_plot_key(weighting: str = "video") -> str:
    """The line under the box plot: what its marks are and what one value (n) is."""
    return f"{BOX_PLOT_KEY}; {WEIGHTINGS[weighting]}"


def box_plot(rows: Iterable[LabelMetrics | Mapping], path: str | Path,
             metrics: Sequence[str] = METRICS, weighting: str = "video") -> Path:
    """A PNG of :func:`box_plot_figure`."""
    fig = box_plot_figure(rows, metrics, weighting)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def box_plot_figure(rows: Iterable[LabelMetrics | Mapping], metrics: Sequence[str] = METRICS,
                    weighting: str = "video"):
    """A matplotlib figure with one box plot per kind, unit and metric (one box per label, with
    its n; infinite distances left out); distance titles give their unit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = blocks(rows)
    cols = 4
    per_block = math.ceil(len(metrics) / cols)
    nrows = per_block * len(parts)
    fig = Figure(figsize=(3.4 * cols, 3.1 * nrows + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    for b, (kind, unit, block) in enumerate(parts):
        labels = sorted({r["label"] for r in block})
        for n, metric in enumerate(metrics):
            ax = fig.add_subplot(nrows, cols, b * per_block * cols + n + 1)
            data = []
            for label in labels:
                values, _ = case_values([r for r in block if r["label"] == label], metric,
                                        weighting)
                data.append(values[np.isfinite(values)])
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(labels) + 1),
                          [f"{lab}\nn={len(d)}" for lab, d in zip(labels, data)])
            ax.set_title(f"{_SHORT_KIND.get(kind, kind)}: {metric_title(metric, unit)}",
                         fontsize=10)
            ax.set_xlabel("label", fontsize=8)
            if metric not in DISTANCE_METRICS:
                ax.set_ylim(-0.02, 1.02)
    fig.text(0.5, 0.005, box_plot_key(weighting), ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
