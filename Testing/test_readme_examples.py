"""The README is a front page a newcomer can follow: short, its links resolve, its test command is
CI's, and its examples run as written on what a fresh clone has after ``setup.sh demo``.

The examples run in a temporary folder laid out like the repository root after the demo: ``out/``
is what ``scripts/demo.py`` wrote there (the sample frame and video), ``samples/`` links to the
shipped CT, and ``.venv/bin/activate`` / ``.venv/bin/polypsam`` lead to this test's environment.
Tests never reach the network, so the registry weights the README's commands use by default
(``sam2.1_hiera_tiny``) are the demo's random-weight model, placed in a temporary cache under the
registry's file name: the real loading path (SHA256 pinned at first use) runs, the masks mean
nothing, and only their format, geometry and files are checked. The README's offline advice
(``--checkpoint out/random_sam2.1_hiera_tiny.pt``) is run too, with an empty cache.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server_fixtures import child_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 120
FRAME_SHAPE = (288, 384)
VIDEO_FRAMES = 5


def markdown_files() -> list[Path]:
    """The README, every page under docs/, and the other Markdown pages the README links to."""
    return [README, *sorted((REPO / "docs").glob("*.md")), REPO / "samples" / "README.md",
            REPO / "BENCHMARKS.md"]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README.md has no section '## {heading}'"
    return match.group(1)


def test_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES})"


def test_every_relative_link_points_to_an_existing_file():
    missing = []
    for page in markdown_files():
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # code is not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # absolute URL or an anchor on the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                missing.append(f"{page.relative_to(REPO)}: {target}")
    assert not missing, "links to files that do not exist: " + "; ".join(missing)


def test_readme_test_command_is_what_ci_runs():
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["bash scripts/setup.sh test"], ci
    setup = "\n".join(bash_blocks(section(README.read_text(encoding="utf-8"), "Set up (Linux or"
                                          " macOS, Python 3.10+)")))
    assert re.search(r"^bash scripts/setup\.sh test\b", setup, flags=re.M)
    assert re.search(r"^bash scripts/setup\.sh demo\b", setup, flags=re.M)


def test_sample_ct_ships_with_its_licence_and_attribution():
    samples = REPO / "samples"
    assert sorted(p.name for p in samples.iterdir()) == [
        "LICENSE_TotalSegmentator_Apache-2.0.txt", "README.md", "example_ct_sm.nii.gz"]
    assert "Apache License" in (samples / "LICENSE_TotalSegmentator_Apache-2.0.txt").read_text()
    attribution = (samples / "README.md").read_text(encoding="utf-8")
    assert "wasserth/TotalSegmentator" in attribution and "10.1148/ryai.230024" in attribution
    assert (samples / "example_ct_sm.nii.gz").stat().st_size == 483312


@pytest.fixture(scope="module")
def fresh_root(tmp_path_factory) -> Path:
    """A folder like the repository root after ``bash scripts/setup.sh demo`` (offline)."""
    root = tmp_path_factory.mktemp("clone")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out",
                           str(root / "out"), "--random-weights"], env=child_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (root / "samples").symlink_to(REPO / "samples", target_is_directory=True)
    polypsam = Path(sys.executable).parent / "polypsam"
    assert polypsam.is_file(), f"set-up installs the polypsam command beside {sys.executable}"
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "polypsam").symlink_to(polypsam)
    (venv_bin / "activate").write_text(f'export PATH="{polypsam.parent}:$PATH"\n')
    return root


def run_bash(script: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = child_env()
    env["POLYPSAM_CACHE_DIR"] = str(cache)
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


def test_readme_examples_run_as_written(fresh_root, tmp_path):
    import SimpleITK as sitk
    import slicerio
    from PIL import Image

    text = README.read_text(encoding="utf-8")
    usage = bash_blocks(section(text, "Run the command line"))
    examples = bash_blocks(section(text, "Three examples"))
    assert len(examples) == 3 and "source .venv/bin/activate" in usage[0]
    cache = tmp_path / "cache"  # the registry's file name holding the demo's random weights
    cache.mkdir()
    (cache / "sam2.1_hiera_tiny.pt").symlink_to(fresh_root / "out" / "random_sam2.1_hiera_tiny.pt")
    proc = run_bash("\n".join(usage + examples), fresh_root, cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "segment" in proc.stdout and "propagate" in proc.stdout  # polypsam --help
    out = fresh_root / "out"

    # a frame: a label mask of the frame's size, its overlay and provenance
    mask = np.asarray(Image.open(out / "frame_mask.png"))
    assert mask.shape == FRAME_SHAPE and set(np.unique(mask)) <= {0, 1}
    assert Image.open(out / "frame_mask_overlay.png").size[0] >= FRAME_SHAPE[1]
    provenance = json.loads((out / "frame_mask.png.provenance.json").read_text())
    assert "sam2.1_hiera_tiny" in json.dumps(provenance)

    # a CT: a labelmap on the sample's grid, labels only in slices 7..11, overlays, a .seg.nrrd
    ct = sitk.ReadImage(str(REPO / "samples" / "example_ct_sm.nii.gz"))
    labels = sitk.ReadImage(str(out / "kidney.nrrd"))
    assert labels.GetSize() == ct.GetSize()
    assert np.allclose(labels.GetSpacing(), ct.GetSpacing())
    assert np.allclose(labels.GetOrigin(), ct.GetOrigin())
    assert np.allclose(labels.GetDirection(), ct.GetDirection())
    array = sitk.GetArrayFromImage(labels)  # K, J, I
    assert set(np.unique(array)) <= {0, 1}
    assert not array[:7].any() and not array[12:].any()
    assert sorted(p.name for p in (out / "kidney_overlay").glob("*.png")) == [
        f"slice_{k:04d}.png" for k in range(7, 12)]
    segmentation = slicerio.read_segmentation(str(out / "kidney.seg.nrrd"))
    assert [s["name"] for s in segmentation["segments"]] == ["kidney"]

    # a video: one label mask per frame, their overlays and the folder's provenance
    masks = sorted((out / "tracked").glob("*.png"))
    assert len(masks) == VIDEO_FRAMES
    for path in masks:
        frame = np.asarray(Image.open(path))
        assert frame.shape == FRAME_SHAPE and set(np.unique(frame)) <= {0, 1}
    assert len(list((out / "tracked" / "overlay").glob("*.png"))) == VIDEO_FRAMES
    assert (out / "tracked" / "provenance.json").is_file()


def test_readme_offline_advice_runs(fresh_root, tmp_path):
    """Without the registry weights (an empty cache), the README's offline option works."""
    from PIL import Image

    text = README.read_text(encoding="utf-8")
    advice = re.search(r"add `(--checkpoint out/\S+)` to each command", " ".join(text.split()))
    assert advice, "README says how to run offline"
    frame = bash_blocks(section(text, "Three examples"))[0].strip()
    command = frame.replace("out/frame_mask", "out/offline_mask") + " " + advice.group(1)
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    proc = run_bash("source .venv/bin/activate\n" + command, fresh_root, empty)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mask = np.asarray(Image.open(fresh_root / "out" / "offline_mask.png"))
    assert mask.shape == FRAME_SHAPE and set(np.unique(mask)) <= {0, 1}
    assert not any(empty.iterdir()), "nothing was downloaded or pinned"

