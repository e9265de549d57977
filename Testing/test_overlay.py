"""Pictures for a person to judge a result: overlays (clicks visible and distinct, a legend, small
images enlarged, the demo's random weights said on it), the evaluation box plot (n per box, what
the marks are) and the fine-tuning curves (the best epoch marked)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from server_fixtures import REPO, child_env

CT = "ct/totalsegmentator/example_ct_sm.nii.gz"
LABELS = "ct/totalsegmentator/example_seg.nii.gz"
STRIP = (32, 32, 32)  # the legend's background
NOTE_COLOUR = (255, 210, 0)


@pytest.fixture(scope="module")
def ct_slice(shared_data):
    """A 122 x 101 slice of TotalSegmentator's example CT and its liver (label 5)."""
    from polypsam import io
    from polypsam.geometry import box_of_mask

    ct, seg = io.read_volume(shared_data / CT), io.read_volume(shared_data / LABELS)
    liver = (seg.array[20] == 5).astype(np.uint8)
    return ct.array[20], liver, box_of_mask(liver.astype(bool))


def test_small_slice_enlarged_with_distinct_clicks_and_a_legend(ct_slice):
    from polypsam.overlay import (EXCLUDE_CLICK, INCLUDE_CLICK, PALETTE, contour, draw_overlay,
                                  overlay_scale)
    from polypsam.preprocess import CT_WINDOWS, to_model_rgb

    image, liver, box = ct_slice
    assert image.shape == (101, 122) and overlay_scale(image.shape) == 3
    ys, xs = np.nonzero(liver)
    inside = (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))
    picture = draw_overlay(image, liver, CT_WINDOWS["abdomen"], boxes=[box],
                           points=[(*inside, True), (5, 5, False)])
    assert picture.shape[1] == 366 and picture.shape[0] > 303
    view, strip = picture[:303], picture[303:]
    # each pixel is a 3 x 3 block; away from the marks it is the windowed image
    base = np.repeat(np.repeat((to_model_rgb(image, CT_WINDOWS["abdomen"]) * 255 + 0.5)
                               .astype(np.uint8), 3, axis=0), 3, axis=1)
    big = np.repeat(np.repeat(liver, 3, axis=0), 3, axis=1)
    edge = contour(big.astype(bool))
    cx, cy = inside[0] * 3 + 1, inside[1] * 3 + 1
    edge[cy - 8:cy + 9, cx - 8:cx + 9] = False  # where the include click is drawn over it
    assert np.all(view[edge] == PALETTE[0])
    changed = np.any(view != base, axis=2)
    assert changed.sum() > edge.sum()  # the box and the clicks as well
    # the include click: white, outlined in black, on the object (where the contour is green)
    assert tuple(view[cy, cx]) == INCLUDE_CLICK and tuple(view[cy, cx + 6]) == INCLUDE_CLICK
    assert tuple(view[cy - 1, cx + 3]) == EXCLUDE_CLICK  # its black outline
    assert tuple(view[5 * 3 + 1, 5 * 3 + 1]) == EXCLUDE_CLICK
    assert {INCLUDE_CLICK, EXCLUDE_CLICK}.isdisjoint({tuple(c) for c in PALETTE})
    # the legend: its background, the label's swatch colour and both click marks drawn in it
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert STRIP in colours and tuple(PALETTE[0]) in colours
    assert INCLUDE_CLICK in colours and EXCLUDE_CLICK in colours
    plain = draw_overlay(image, liver, CT_WINDOWS["abdomen"], legend=False, min_side=0)
    assert plain.shape == (101, 122, 3)  # the old picture, on request


def test_note_is_written_in_the_legend(ct_slice):
    from polypsam.overlay import draw_overlay

    image, liver, _box = ct_slice
    without = draw_overlay(image, liver)
    noted = draw_overlay(image, liver, note="random weights: these masks mean nothing at all,"
                                            " a pipeline check")
    assert noted.shape[0] >= without.shape[0] + 2 * 20  # wrapped on rows of its own
    assert np.all(noted[:303] == without[:303])
    assert np.all(noted[without.shape[0]:] != NOTE_COLOUR, axis=2).sum() > 0
    assert np.any(np.all(noted[without.shape[0]:] == NOTE_COLOUR, axis=2))


def test_demo_overlay_says_random_weights(tmp_path):
    """``scripts/demo.py --random-weights`` (no download attempted): the overlay's legend and its
    PNG text say the weights are random."""
    from PIL import Image

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out",
                           str(tmp_path), "--random-weights"], env=child_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stderr
    with Image.open(tmp_path / "demo_overlay.png") as image:
        note = image.text.get("polypsam:note", "")
        picture = np.asarray(image.convert("RGB"))
    assert note.startswith("RANDOM WEIGHTS")
    assert np.any(np.all(picture == NOTE_COLOUR, axis=2)), "the note is drawn in the legend"


def test_evaluate_plot_shows_n_per_box_and_what_the_marks_are():
    from polypsam.evaluation.tables import BOX_PLOT_KEY, box_plot_figure, box_plot_key

    rows = [{"case": f"c{i}", "label": label, "dice": 0.5 + 0.1 * i, "iou": 0.4, "nsd": 0.7,
             "hd95": np.inf if (label, i) == (2, 0) else 3.0 + i}
            for label in (1, 2) for i in range(3)]
    fig = box_plot_figure(rows, ("dice", "hd95"))
    dice, hd95 = fig.axes
    assert [t.get_text() for t in dice.get_xticklabels()] == ["1\nn=3", "2\nn=3"]
    assert [t.get_text() for t in hd95.get_xticklabels()] == ["1\nn=3", "2\nn=2"]  # inf left out
    assert [t.get_text() for t in fig.texts] == [box_plot_key("video")]
    assert "triangle: mean" in BOX_PLOT_KEY and "n: values" in BOX_PLOT_KEY


def test_finetuning_curves_mark_the_best_epoch(tmp_path):
    from polypsam.finetune.sidecar import metrics_figure, plot_metrics

    history = [{"epoch": e, "lr": 1e-4, "train_loss": 1.0 / e, "val_dice": d, "val_iou": d - 0.1}
               for e, d in ((1, 0.50), (2, 0.71), (3, 0.71), (4, 0.60))]
    fig = metrics_figure(history)
    _loss, validation, _lr = fig.axes
    labels = [line.get_label() for line in validation.get_lines()]
    assert "best epoch 2 (Dice 0.7100)" in labels  # the first of equal scores: the one kept
    best = validation.get_lines()[labels.index("best epoch 2 (Dice 0.7100)")]
    assert list(best.get_xdata()) == [2] and list(best.get_ydata()) == [0.71]
    for ax in fig.axes:  # a dashed line at the best epoch on each panel
        assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())
    assert plot_metrics(tmp_path / "ft.pt", history).is_file()
