"""Python as a given desktop Slicer has it: its bundled packages, and a site-packages of only those.

``Testing/slicer_packages/slicer-<label>.txt`` lists what desktop Slicer bundles (made by
``scripts/slicer_bundled_packages.py`` from Slicer's SuperBuild files; each names its source).
:func:`build_site` links the chosen distributions of *this* environment (at this environment's
versions: the names are Slicer's, the versions need not be) into a folder; run
``python -S`` with only that folder, the library and ``Testing/`` on ``PYTHONPATH`` and every
other distribution is simply not installed: ``import`` raises ``ModuleNotFoundError`` and
``importlib.util.find_spec`` returns ``None``, as in that Slicer.

Slicer's own modules that are no pip distributions in desktop Slicer (``slicer``, ``vtk``) come
from slicer-core here (:data:`SLICER_OWN`).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

SETS_DIR = Path(__file__).resolve().parent / "slicer_packages"
SET_LABELS = ("5.10.0", "main")
SLICER_OWN = ("slicer-core", "vtk")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class BundledSet:
    """One Slicer's bundled distributions: ``{canonical name: (name, version)}``, its Python."""

    label: str
    versions: dict[str, tuple[str, str]]
    python: tuple[int, int, int]
    header: str = ""


def read_set(label: str) -> BundledSet:
    text = (SETS_DIR / f"slicer-{label}.txt").read_text()
    versions = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            versions[canonical(name)] = (name, version)
    python = re.search(r"^# Python (\d+)\.(\d+)\.(\d+)", text, re.M)
    if python is None:
        raise ValueError(f"slicer-{label}.txt names no Python version")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    return BundledSet(label, versions, tuple(int(v) for v in python.groups()), header)


def installed() -> dict[str, md.Distribution]:
    """This environment's distributions (the first found on ``sys.path`` for a name)."""
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        name = dist.metadata.get("Name")
        if name:
            found.setdefault(canonical(name), dist)
    return found


@dataclass
class Closure:
    """Distributions a set of requirements installs, and every requirement met on the way."""

    names: set[str] = field(default_factory=set)
    edges: list[tuple[str, Requirement]] = field(default_factory=list)  # (required by, req)
    missing: list[str] = field(default_factory=list)  # needed but not in this environment


def closure(requirements: Iterable[str], no_deps: Iterable[str] = (),
            dists: dict[str, md.Distribution] | None = None) -> Closure:
    """What pip installs for ``requirements`` (``no_deps``: those installed with ``--no-deps``),
    read from this environment's metadata (markers evaluated for this platform, no extras)."""
    dists = installed() if dists is None else dists
    env = default_environment()
    env["extra"] = ""
    out = Closure()
    todo = [("(installer)", Requirement(r), canonical(Requirement(r).name) in
             {canonical(Requirement(n).name) for n in no_deps}) for r in requirements]
    while todo:
        parent, req, skip_deps = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        out.edges.append((parent, req))
        name = canonical(req.name)
        if name in out.names:
            continue
        dist = dists.get(name)
        if dist is None:
            out.missing.append(f"{req} (for {parent})")
            continue
        out.names.add(name)
        if not skip_deps:
            todo += [(name, Requirement(r), False) for r in dist.requires or []]
    return out


def check_against(bundle: BundledSet, found: Closure,
                  dists: dict[str, md.Distribution] | None = None) -> list[str]:
    """Problems: a requirement met on the way that the bundled version of a package does not
    satisfy (pip would replace Slicer's package), or a new package whose ``Requires-Python``
    excludes that Slicer's Python."""
    dists = installed() if dists is None else dists
    problems = []
    for parent, req in found.edges:
        bundled = bundle.versions.get(canonical(req.name))
        if bundled and not req.specifier.contains(bundled[1], prereleases=True):
            problems.append(f"{parent} needs {req}; Slicer {bundle.label} bundles {bundled[0]} {bundled[1]}")
    python = ".".join(str(v) for v in bundle.python)
    for name in sorted(found.names - set(bundle.versions)):
        requires = dists[name].metadata.get("Requires-Python") if name in dists else None
        if requires and not SpecifierSet(requires).contains(python):
            problems.append(f"{name} requires Python {requires}; Slicer {bundle.label} has {python}")
    return problems


def _top_levels(dist: md.Distribution) -> set[str]:
    return {f.parts[0] for f in dist.files or () if f.parts and f.parts[0] != ".."}


def build_site(names: Iterable[str], target: Path, versions: dict[str, str] | None = None,
               dists: dict[str, md.Distribution] | None = None) -> list[str]:
    """Link the files of the distributions ``names`` into ``target`` (a folder for
    ``PYTHONPATH``); returns the names not installed here. A top-level entry that other
    (unchosen) distributions share, e.g. a namespace package, is linked file by file.
    ``versions`` (canonical name -> version) is what the linked metadata reports: the code is
    this environment's, the version the one that Slicer bundles (decisions read it)."""
    dists = installed() if dists is None else dists
    versions = versions or {}
    chosen = {canonical(n) for n in names}
    owners: dict[tuple[str, str], set[str]] = {}
    for name, dist in dists.items():
        root = str(dist.locate_file(""))
        for top in _top_levels(dist):
            owners.setdefault((root, top), set()).add(name)
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted(chosen & set(dists)):
        dist = dists[name]
        root = Path(dist.locate_file(""))
        for top in sorted(_top_levels(dist)):
            link = target / top
            if top.endswith(".dist-info") and versions.get(name, dist.version) != dist.version:
                _metadata_with_version(root / top, link, versions[name])
                continue
            if owners[(str(root), top)] <= chosen:
                if not link.exists() and not link.is_symlink() and (root / top).exists():
                    link.symlink_to(root / top)
                continue
            for f in dist.files or ():
                if f.parts and f.parts[0] == top and (root / f).exists():
                    path = target / f
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if not path.exists():
                        path.symlink_to(root / f)
    return sorted(chosen - set(dists))


def _metadata_with_version(source: Path, target: Path, version: str) -> None:
    """A copy of a ``.dist-info`` folder whose METADATA says ``Version: version``."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "METADATA":
            text = re.sub(r"^Version: .*$", f"Version: {version}", item.read_text(), count=1, flags=re.M)
            (target / item.name).write_text(text)
        elif not (target / item.name).exists():
            (target / item.name).symlink_to(item)


def restricted_env(site: Path, *paths: Path) -> dict[str, str]:
    """Environment for ``python -S``: only ``site`` and ``paths`` beside the standard library."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, *paths))
    env["PYTHONNOUSERSITE"] = "1"
    return env


def python_command(script: Path, *args: str) -> list[str]:
    """``python -S script args``: no site-packages, so only ``PYTHONPATH`` adds packages."""
    return [sys.executable, "-S", str(script), *args]
