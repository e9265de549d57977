"""PolypSAM with only the Python packages desktop Slicer bundles: Slicer 5.10.0 and Slicer main.

This environment has many packages Slicer lacks (slicerio, imageio/av, pycocotools, fastapi, ...),
which hides features that silently need them. Here the module's features run in a Python that
has only one Slicer's bundled packages (``Testing/slicer_packages/``, read from Slicer's
SuperBuild files at each tag): once as Slicer ships (``bundled``), once after the module's
consented installer installed what it offers (``installed``: torch/sam2 and their pinned
dependencies, plus each optional feature's pins it offered in the first run). Every feature must
either work, be offered with pinned versions, or be hidden with a one-line reason, as
:data:`EXPECTED` says; anything else, e.g. a ``ModuleNotFoundError``, fails the test.

What this cannot show: the versions are this environment's (the metadata reports Slicer's, so
decisions taken on versions are Slicer's; the code run is this environment's), Slicer's Python is
3.12 (checked against each new package's Requires-Python, not run), and the widget's Qt code
(``Testing/test_widget_qt.py`` runs that). Statically, every third-party import reachable from
``PolypSAM.py`` must be Slicer's, installed by the installer, or declared optional.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import package_sets as ps
from server_fixtures import ServerProcess

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "PolypSAMLib"
RUNNER = Path(__file__).resolve().parent / "package_set_features.py"

CORE = ("module imports", "test connection", "server engine: segment", "server engine: propagate",
        "server engine: track", "export seg.nrrd", "export nifti", "export nrrd", "export png",
        "load video: folder of frames")
INSTALLED_BY_FIRST_USE = ("first-use dependency check", "in-process: segment",
                          "in-process: propagate", "in-process: track")
#: (feature, set) -> (kind before the installs, kind after them); "works", "offered", "hidden".
EXPECTED = {
    **{(f, s): ("works", "works") for f in CORE for s in ps.SET_LABELS},
    **{(f, s): ("offered", "works") for f in INSTALLED_BY_FIRST_USE for s in ps.SET_LABELS},
    ("export coco", "5.10.0"): ("offered", "works"),
    ("export coco", "main"): ("offered", "works"),
    ("load video: video file", "5.10.0"): ("offered", "works"),
    ("load video: video file", "main"): ("offered", "works"),
    ("export dicom-seg", "5.10.0"): ("hidden", "hidden"),  # pydicom 2.4.4: highdicom needs 3.0.1
    ("export dicom-seg", "main"): ("works", "works"),  # Slicer main bundles highdicom 0.27.0
}
#: Third-party imports reachable from PolypSAM.py that no feature of the module needs.
NOT_NEEDED_BY_THE_MODULE = {
    "slicerio": "seg.nrrd outside Slicer (CLI, batch); in Slicer the storage node writes it",
    "cv2": "COCO polygons (CLI --coco-encoding polygon); the module exports COCO as RLE",
    "zstandard": "optional: the server client falls back to zlib without it",
}
#: Importable in Slicer but no pip distributions there.
SLICER_MODULES = {"slicer", "vtk", "qt", "ctk", "PythonQt", "PyTorchUtils"}  # PyTorchUtils: an extension


def installer_requirements() -> tuple[list[str], list[str]]:
    """What the first-use installer installs with pip into a Slicer without torch, and which of
    those it installs with ``--no-deps``."""
    from polypsam.mrml import dependencies as deps

    missing = deps.missing_requirements(find_spec=lambda name: None)
    return [*missing["torch"], *missing["runtime"], *missing["sam2"]], list(missing["sam2"])


def offered_in(bundle: ps.BundledSet) -> dict[str, tuple[str, ...]]:
    """The optional features' pins the module offers in that Slicer, decided by the library as
    it decides in Slicer (from what imports there and the bundled versions)."""
    from polypsam.mrml import dependencies as deps

    names = import_names(set(bundle.versions))
    support = {f: deps.optional_support(f, find_spec=lambda m: object() if m in names else None,
                                        version=lambda d: bundle.versions.get(ps.canonical(d), (0, None))[1])
               for f in deps.OPTIONAL_PACKAGES}
    return {f: s.requirements for f, s in support.items() if s.status == "install"}


def import_names(dists: set[str]) -> set[str]:
    """Top-level import names of these distributions (those installed here)."""
    names = set()
    for name, dist in ps.installed().items():
        if name in dists:
            for f in dist.files or ():
                top = f.parts[0]
                if f.parts and top != ".." and not top.endswith((".dist-info", ".libs", ".pth")):
                    names.add(top[:-3] if top.endswith(".py") else top.split(".")[0])
    return names


# -- the lists ------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ps.SET_LABELS)
def test_bundled_list_names_its_source(label):
    bundle = ps.read_set(label)
    assert "https://github.com/Slicer/Slicer" in bundle.header
    assert "SuperBuild/External_python-dicom-requirements.cmake" in bundle.header
    assert bundle.python[:2] == (3, 12)
    pydicom = bundle.versions["pydicom"][1]
    if label == "5.10.0":
        assert pydicom == "2.4.4" and "highdicom" not in bundle.versions
    else:
        assert pydicom == "3.0.2" and bundle.versions["highdicom"][1] == "0.27.0"
        assert bundle.versions["dcmqi"][1] == "0.4.0"
    assert {"numpy", "pillow", "simpleitk", "packaging"} <= set(bundle.versions)
    assert not {"slicerio", "imageio", "av", "pycocotools", "torch"} & set(bundle.versions)


@pytest.mark.parametrize("label", ps.SET_LABELS)
def test_pins_never_replace_a_package_slicer_bundles(label):
    """Every requirement met while installing what the module offers (torch, sam2 and their
    dependencies; each optional feature's pins) is satisfied by the version Slicer bundles, and
    every new package supports Slicer's Python. The pins are this environment's versions, so
    their metadata is the one read."""
    bundle = ps.read_set(label)
    core, no_deps = installer_requirements()
    offered = [r for reqs in offered_in(bundle).values() for r in reqs]
    assert offered, "the module offers optional features' pins"
    dists = ps.installed()
    # torch may differ here (scripts/setup.sh takes POLYPSAM_TORCH_SPEC): its metadata is then
    # this torch's; every other pin must be the version installed here
    for requirement in [r for r in core + offered if "==" in r and not r.startswith("torch==")]:
        name, pin = requirement.split("==")
        here = dists[ps.canonical(name)].version
        assert here == pin, f"{requirement} offered, but the tests run {name} {here}: pin scripts/requirements.txt"
    found = ps.closure(core + offered, no_deps, dists)
    assert not found.missing, found.missing
    assert ps.check_against(bundle, found, dists) == []


def _third_party_imports(path: Path, module: str, is_package: bool) -> tuple[set[str], set[str]]:
    """(polypsam modules, other top-level names) imported anywhere in a file, except under
    ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    package = module if is_package else module.rpartition(".")[0]
    ours, others = set(), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            (ours if name.split(".")[0] == "polypsam" else others).add(name)
    return ours, {n.split(".")[0] for n in others} - set(sys.stdlib_module_names)


def reachable_imports() -> dict[str, set[str]]:
    """Third-party top-level name -> the modules reachable from PolypSAM.py that import it."""
    seen, found = set(), {}
    todo = [("PolypSAM", REPO / "PolypSAM" / "PolypSAM.py", False)]
    while todo:
        module, path, is_package = todo.pop()
        ours, others = _third_party_imports(path, module, is_package)
        for name in others:
            found.setdefault(name, set()).add(module)
        for name in ours:
            parts = name.split(".")
            for n in range(1, len(parts) + 1):
                candidate = ".".join(parts[:n])
                base = LIB.joinpath(*parts[:n])
                for file, package in ((base / "__init__.py", True), (base.with_suffix(".py"), False)):
                    if file.is_file() and candidate not in seen:
                        seen.add(candidate)
                        todo.append((candidate, file, package))
    return found


@pytest.mark.parametrize("label", ps.SET_LABELS)
def test_module_reaches_only_declared_packages(label):
    """Each third-party import reachable from PolypSAM.py (functions' imports included) is
    Slicer's own, bundled by that Slicer, installed by the first-use installer, declared in
    ``dependencies.OPTIONAL_PACKAGES``, or listed here as needed by no feature of the module."""
    from polypsam.mrml import dependencies as deps

    bundle = ps.read_set(label)
    core, no_deps = installer_requirements()
    allowed = (SLICER_MODULES | import_names(set(bundle.versions))
               | import_names(ps.closure(core, no_deps).names)
               | {m for pins in deps.OPTIONAL_PACKAGES.values() for m in pins})
    reached = reachable_imports()
    undeclared = {name: sorted(users) for name, users in reached.items()
                  if name not in allowed and name not in NOT_NEEDED_BY_THE_MODULE}
    assert not undeclared, f"imports reachable from the module that Slicer {label} lacks: {undeclared}"
    stale = set(NOT_NEEDED_BY_THE_MODULE) - set(reached)
    assert not stale, f"no longer imported: drop {stale} from NOT_NEEDED_BY_THE_MODULE"


# -- the features, run -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    process = ServerProcess(tiny_checkpoint)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    import imageio.v3 as iio
    import numpy as np

    frames = np.zeros((4, 48, 64, 3), np.uint8)
    for t in range(4):
        frames[t, 10:30, 10 + 4 * t:30 + 4 * t] = (200, 120, 110)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    iio.imwrite(path, frames, fps=10, codec="libx264", plugin="pyav")
    return path, len(frames)


def run_features(tmp: Path, stage: str, names: set[str], bundle: ps.BundledSet, server, checkpoint,
                 video) -> dict:
    site = tmp / f"site-{stage}"
    versions = {name: version for name, (_, version) in bundle.versions.items()}
    ps.build_site(names, site, versions)
    from conftest import SHARED_DATA

    dicom = SHARED_DATA / "ct" / "totalsegmentator" / "example_ct_dicom"
    cmd = ps.python_command(RUNNER, "--server", server.url, "--checkpoint", str(checkpoint),
                            "--video", str(video[0]), "--video-frames", str(video[1]),
                            "--dicom", str(dicom) if dicom.is_dir() else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp,
                          env=ps.restricted_env(site, LIB, RUNNER.parent))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=ps.SET_LABELS)
def runs(request, tmp_path_factory, server, tiny_checkpoint, video_file):
    """Both runs for one Slicer: with its bundled packages, then after the module's installs."""
    label = request.param
    bundle = ps.read_set(label)
    tmp = tmp_path_factory.mktemp(f"slicer-{label}")
    bundled = set(bundle.versions) | set(ps.SLICER_OWN)
    first = run_features(tmp, "bundled", bundled, bundle, server, tiny_checkpoint, video_file)
    offered = [r for result in first.values() if isinstance(result, str)
               and result.startswith("offered: ") for r in result[len("offered: "):].split()]
    _, no_deps = installer_requirements()
    installs = ps.closure(sorted(set(offered)), no_deps)
    second = run_features(tmp, "installed", bundled | installs.names, bundle, server,
                          tiny_checkpoint, video_file)
    return label, bundle, first, second


def _kind(result) -> str:
    return str(result).split(":", 1)[0]


def test_features_with_only_slicers_packages(runs):
    label, bundle, first, _ = runs
    importable = first["_importable"]
    assert not any(importable[m] for m in ("torch", "sam2", "hydra", "slicerio", "imageio", "av",
                                           "pycocotools", "cv2", "fastapi", "zstandard", "pytest"))
    assert importable["highdicom"] == (label == "main") and importable["PIL"]
    assert first["_versions"]["pydicom"] == bundle.versions["pydicom"][1]
    problems = {f: first[f] for (f, s), (kind, _) in EXPECTED.items()
                if s == label and _kind(first[f]) != kind and not str(first[f]).startswith("skipped")}
    assert not problems, json.dumps(problems, indent=1)
    assert first["export coco"] == "offered: pycocotools==2.0.11"
    assert first["load video: video file"] == "offered: imageio==2.38.2 av==18.1.0"
    core, _ = installer_requirements()  # less what Slicer bundles (pillow)
    wanted = sorted(r for r in core if ps.canonical(Requirement(r).name) not in bundle.versions)
    assert "pillow" in bundle.versions and len(wanted) == len(core) - 1
    assert first["first-use dependency check"] == "offered: " + " ".join(wanted)
    calls = first["_installer"]["calls"]
    assert [c["requirements"] for c in calls][-2:] == ["pycocotools==2.0.11", "imageio==2.38.2 av==18.1.0"]
    here = ps.installed()
    for call in calls:  # every pip call pins each of Slicer's packages at Slicer's version
        pins = set(call["constraints"].splitlines())
        assert {f"{here[n].metadata['Name']}=={v}" for n, (_, v) in bundle.versions.items()
                if n in here} <= pins, call["requirements"]
    if label == "5.10.0":
        reason = first["export dicom-seg"]
        assert "Slicer 5.12 or newer" in reason and "pydicom 2.4.4" in reason and "\n" not in reason


def test_features_after_the_consented_installs(runs):
    """Only what the module offered was added: now every feature works (DICOM SEG stays hidden
    on 5.10, whose pydicom is never replaced)."""
    label, _, _, second = runs
    importable = second["_importable"]
    assert all(importable[m] for m in ("torch", "sam2", "hydra", "imageio", "av", "pycocotools"))
    assert not any(importable[m] for m in ("slicerio", "cv2", "fastapi", "zstandard", "pytest"))
    problems = {f: second[f] for (f, s), (_, kind) in EXPECTED.items()
                if s == label and _kind(second[f]) != kind and not str(second[f]).startswith("skipped")}
    assert not problems, json.dumps(problems, indent=1)
    assert not set(NOT_NEEDED_BY_THE_MODULE) & set(second["_modules"])


# -- what the CI workflow in real Slicer uses (.github/workflows/slicer-selftest.yml) ------------
def test_check_slicer_packages_reports_every_difference(tmp_path):
    """The CI's check that a Slicer has the listed packages (and still has them after the
    installs), run here on this environment."""
    import importlib.metadata as md

    script = REPO / "scripts" / "check_slicer_packages.py"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# header\nnumpy=={md.version('numpy')}\npillow=={md.version('pillow')}\n")
    ok = subprocess.run([sys.executable, str(script), str(listing)], capture_output=True, text=True)
    assert ok.returncode == 0 and "0 difference(s)" in ok.stdout, ok.stdout + ok.stderr
    listing.write_text("numpy==0.0.1\nno-such-package==1.0\n")
    bad = subprocess.run([sys.executable, str(script), str(listing)], capture_output=True, text=True)
    assert bad.returncode == 1 and "2 difference(s)" in bad.stdout
    assert "numpy: listed 0.0.1" in bad.stdout and "no-such-package: listed 1.0, here not installed" in bad.stdout


def test_ci_workflow_uses_what_exists():
    import yaml

    from polypsam.mrml import dependencies as deps

    text = (REPO / ".github" / "workflows" / "slicer-selftest.yml").read_text()
    job = yaml.safe_load(text)["jobs"]["selftest"]
    version = job["env"]["SLICER_VERSION"]
    assert (ps.SETS_DIR / f"slicer-{version}.txt").is_file()
    assert version.startswith("5.10"), "the oldest Slicer PolypSAM supports"
    assert "runUnitTest" in job["env"]["SELFTEST"] and "'PolypSAM')" in job["env"]["SELFTEST"]
    steps = {step.get("name", ""): step for step in job["steps"]}
    install = next(step for name, step in steps.items() if "installer" in name)
    assert install["env"][deps.CONSENT_ENV] == "yes"
    for feature in ("coco", "video files"):
        assert feature in deps.OPTIONAL_PACKAGES and f"ensure_optional('{feature}')" in install["run"]
    assert "ensure_dependencies()" in install["run"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert sum("check_slicer_packages.py" in r for r in runs) == 2, "before and after the installs"
    assert sum('--python-code "$SELFTEST"' in r for r in runs) == 2, "without and with torch"
    assert all("--additional-module-paths" in r for r in runs if "--python-code" in r)
    for path in ("scripts/check_slicer_packages.py", "PolypSAM/PolypSAM.py"):
        assert (REPO / path).is_file()
    assert "cannot run" in text.split("\nname:")[0], "its top says it cannot run here"
    code = install["run"].split('--python-code "', 1)[1].rsplit('"', 1)[0]
    compile(code, "install step", "exec")
    compile(job["env"]["SELFTEST"], "self-test", "exec")
