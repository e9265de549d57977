"""Check that this Python has the packages a bundled list names, at the listed versions.

Run with a desktop Slicer's ``PythonSlicer`` (the CI workflow does, before and after the module's
installer ran)::

    Slicer-5.10.0-linux-amd64/bin/PythonSlicer scripts/check_slicer_packages.py Testing/slicer_packages/slicer-5.10.0.txt

Before any install it shows that the list is what that Slicer bundles; after, that no install
replaced one of Slicer's packages. Prints each difference; exits 1 if there is any.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path


def differences(listing: str) -> list[str]:
    found = []
    for line in listing.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, version = line.strip().split("==")
        try:
            here = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            here = None
        if here != version:
            found.append(f"{name}: listed {version}, here {here or 'not installed'}")
    return found


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    found = differences(Path(sys.argv[1]).read_text())
    for line in found:
        print(line)
    print(f"{len(found)} difference(s) from {sys.argv[1]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
