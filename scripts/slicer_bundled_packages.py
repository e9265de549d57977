"""Print the Python packages desktop 3D Slicer bundles at a git ref of Slicer's source.

Slicer installs its Python packages at build time from ``SuperBuild/External_python-*.cmake``:
each writes a requirements file (``name==version --hash=...`` lines between ``[===[`` and
``]===]``) and runs ``pip install --require-hashes`` on it, so the list is complete (hash mode
needs every dependency pinned). SimpleITK is either one of those files
(``External_python-SimpleITK.cmake``) or, in older versions, built from source by
``External_SimpleITK.cmake`` (its version is then read from the ``slicer-vX.Y.Z`` tag comment).

    python scripts/slicer_bundled_packages.py /path/to/Slicer.git v5.10.0 > Testing/slicer_packages/slicer-5.10.0.txt
    python scripts/slicer_bundled_packages.py /path/to/Slicer.git main --label main > Testing/slicer_packages/slicer-main.txt

The first argument is any git directory of https://github.com/Slicer/Slicer (bare or not).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True,
                          text=True).stdout


def bundled(git_dir: str, ref: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``({name: version}, {path: [names]})`` of the packages bundled at ``ref``."""
    paths = [p for p in git(git_dir, "ls-tree", "--name-only", ref, "SuperBuild/").split()
             if re.fullmatch(r"SuperBuild/External_python-[^/]+\.cmake", p)]
    versions: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    for path in sorted(paths):
        text = git(git_dir, "show", f"{ref}:{path}")
        for block in re.findall(r"\[===\[(.*?)\]===\]", text, re.S):
            for line in block.splitlines():
                match = REQUIREMENT.match(line)
                if match:
                    name, version = match.groups()
                    if versions.setdefault(name, version) != version:
                        raise SystemExit(f"{name} has two versions at {ref}: {versions[name]}, {version}")
                    sources.setdefault(path, []).append(name)
    if not any(n.lower() == "simpleitk" for n in versions):
        path = "SuperBuild/External_SimpleITK.cmake"
        tag = re.search(r"slicer-v(\d+\.\d+\.\d+)", git(git_dir, "show", f"{ref}:{path}"))
        if tag:
            versions["SimpleITK"] = tag.group(1)
            sources[path + " (built from source; version of its GIT_TAG comment)"] = ["SimpleITK"]
    return versions, sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("git_dir", help="a git directory of Slicer/Slicer")
    parser.add_argument("ref", help="a tag or branch, e.g. v5.10.0 or main")
    parser.add_argument("--label", help="the name to print (default: the ref)")
    args = parser.parse_args()
    commit = git(args.git_dir, "rev-parse", f"{args.ref}^{{commit}}").strip()
    date = git(args.git_dir, "log", "-1", "--format=%cs", commit).strip()
    python = re.search(r'set\(Slicer_REQUIRED_PYTHON_VERSION "([\d.]+)"\)',
                       git(args.git_dir, "show", f"{commit}:CMakeLists.txt"))
    versions, sources = bundled(args.git_dir, commit)
    label = args.label or args.ref
    print(f"# Python packages bundled with desktop 3D Slicer {label} (pip distributions, name==version).")
    print(f"# Source: https://github.com/Slicer/Slicer {args.ref}, commit {commit} ({date}),")
    print("# the requirements each SuperBuild file installs with pip --require-hashes:")
    for path, names in sources.items():
        print(f"#   {path}: {' '.join(dict.fromkeys(names))}")
    if python:
        print(f"# Python {python.group(1)} (CMakeLists.txt, Slicer_REQUIRED_PYTHON_VERSION).")
    print("# Not pip distributions, also in Slicer: its own modules (slicer, vtk, qt, ctk, mrml, ...).")
    print("# Made by scripts/slicer_bundled_packages.py; edit by re-running it, never by hand.")
    for name in sorted(versions, key=str.lower):
        print(f"{name}=={versions[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
