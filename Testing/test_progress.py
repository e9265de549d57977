"""Progress in a log: without a terminal, long commands print plain lines on stderr (every 10 %
or 30 s; one per fine-tuning epoch) instead of a bar that shows nothing until the end."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG, synthetic_rgb
from server_fixtures import child_env


def test_plain_lines_every_tenth_and_when_a_step_is_slow():
    from polypsam.progress import PlainProgress, progress_bar

    log = io.StringIO()  # not a terminal
    bar = progress_bar(25, "track", "frame", stream=log)
    assert isinstance(bar, PlainProgress)
    for _ in range(25):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert [re.match(r"track: (\d+)/25 frames \((\d+)%\)", ln).group(1) for ln in lines] == [
        "3", "5", "8", "10", "13", "15", "18", "20", "23", "25"]
    assert "elapsed" in lines[0] and "left" in lines[0] and "left" not in lines[-1]
    # a slow step: lines keep coming while nothing is counted
    log = io.StringIO()
    slow = PlainProgress(4, "propagate", "slice", stream=log, seconds=0.2)
    slow.update(1)
    time.sleep(0.7)
    slow.close()
    lines = log.getvalue().splitlines()
    assert len(lines) >= 3 and all(ln.startswith("propagate: 1/4 slices (25%)") for ln in lines)
    closed = len(lines)
    time.sleep(0.3)
    assert len(log.getvalue().splitlines()) == closed  # nothing after close
    # a detail bar (the batches of an epoch) says nothing in a log; every_update: each update
    log = io.StringIO()
    progress_bar(8, "epoch 1", "batch", leave=False, stream=log).update(8)
    epochs = progress_bar(3, "fine-tuning", "epoch", every_update=True, stream=log)
    epochs.set_postfix(loss="0.5000")
    epochs.update(1)
    epochs.close()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]
    assert log.getvalue().startswith("fine-tuning: 1/3 epochs (33%)") and "loss=0.5000" in log.getvalue()


def _cli(*args) -> subprocess.CompletedProcess:
    """A real ``polypsam`` process with stdout and stderr going to pipes (no terminal)."""
    proc = subprocess.run([sys.executable, "-m", "polypsam.cli", *map(str, args)],
                          env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_propagate_and_track_print_progress_lines_in_a_log(tiny_checkpoint, tmp_path):
    from polypsam import io as pio
    from polypsam.geometry import Volume

    model = ["--checkpoint", tiny_checkpoint, "--config", TINY_CONFIG, "--device", "cpu",
             "--image-size", TEST_IMAGE_SIZE]
    rng = np.random.default_rng(0)
    ct = tmp_path / "ct.nrrd"
    pio.write_volume(Volume(rng.normal(0, 30, (10, 40, 48)).astype(np.int16)), ct)
    proc = _cli("propagate", ct, "--box", "10", "10", "30", "30", "--slices", "0", "9",
                "-o", tmp_path / "l.nrrd", *model)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("propagate: ")]
    assert [ln.split(" (")[0] for ln in lines] == [f"propagate: {k}/10 slices" for k in range(1, 11)]
    assert "\r" not in proc.stderr  # no bar redrawn in a log
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(5):
        Image.fromarray(synthetic_rgb(40, 48, seed=i)).save(frames / f"{i}.png")
    proc = _cli("track", frames, "--frame", "2", "--box", "5", "5", "30", "30",
                "-o", tmp_path / "masks", *model)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("track: ")]
    assert [ln.split(" (")[0] for ln in lines] == [f"track: {i}/5 frames" for i in range(1, 6)]


def test_finetune_prints_one_line_per_epoch_in_a_log(tiny_checkpoint, tmp_path, capsys):
    from polypsam.cli import main

    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(synthetic_rgb(48, 64, seed=i)).save(data / "images" / f"{i}.png")
        mask = np.zeros((48, 64), np.uint8)
        mask[14:34, 16:36] = 255
        Image.fromarray(mask).save(data / "masks" / f"{i}.png")
    rc = main(["finetune", str(data), "-o", str(tmp_path / "ft.pt"), "--checkpoint",
               str(tiny_checkpoint), "--config", TINY_CONFIG, "--image-size", str(TEST_IMAGE_SIZE),
               "--epochs", "2", "--batch-size", "2", "--device", "cpu",
               "--cache-dir", str(tmp_path / "features")])
    err = capsys.readouterr().err
    assert rc == 0, err
    epochs = [ln for ln in err.splitlines() if ln.startswith("fine-tuning: ")]
    assert [ln.split(" (")[0] for ln in epochs] == ["fine-tuning: 1/2 epochs", "fine-tuning: 2/2 epochs"]
    assert all("loss=" in ln and "dice=" in ln for ln in epochs)
    assert not any(ln.startswith("epoch 1") for ln in err.splitlines())  # no per-batch lines
