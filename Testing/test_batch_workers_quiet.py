"""``polypsam batch --workers N`` as a terminal sees it: Ctrl-C (SIGINT to the whole process group,
as a terminal sends it) prints PolypSAM's line only, no Dask warning or worker traceback, and a
run that ends normally prints no Dask chatter either."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time

from PIL import Image

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG, synthetic_rgb
from server_fixtures import child_env

PROGRESS = re.compile(r"batch: \d+/\d+ cases \(")


def _batch(manifest, out, checkpoint) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "polypsam.cli", "batch", str(manifest), "-o", str(out),
         "--workers", "2", "--threads", "1", "--checkpoint", str(checkpoint), "--config", TINY_CONFIG,
         "--device", "cpu", "--image-size", str(TEST_IMAGE_SIZE)],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group, which the test signals like a terminal
    # --threads 1: 2 workers x 1 thread fit 2 cores, so no oversubscription note is printed


def test_ctrl_c_and_normal_end_print_only_polypsam_lines(tiny_checkpoint, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "input", "boxes"])
        for i in range(12):
            Image.fromarray(synthetic_rgb(48, 64, seed=i)).save(frames / f"{i}.png")
            writer.writerow([f"c{i}", str(frames / f"{i}.png"), "8 8 40 36"])
    out = tmp_path / "out"
    proc = _batch(manifest, out, tiny_checkpoint)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*/case.json"))) < 2:  # the workers are busy with cases
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    own = [ln for ln in stderr.splitlines() if not PROGRESS.match(ln)]
    assert own == [f"polypsam: interrupted; finished cases are kept in {out}: run the same"
                   " command again to resume"], stderr
    assert stdout == ""
    # the same command again resumes and ends normally: nothing but progress on stderr
    proc = _batch(manifest, out, tiny_checkpoint)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert all(PROGRESS.match(ln) for ln in stderr.splitlines()), stderr
    assert "0 failed" in stdout and "12 cases done" not in stdout  # some were finished before
