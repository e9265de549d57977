"""PolypSAM.py imported with Slicer's own Python module framework, on every test run.

``../shared/vendor/Slicer`` holds Slicer's pure-Python framework (``Base/Python/slicer``:
ScriptedLoadableModule, parameterNodeWrapper, i18n), unchanged, in the layout of a Slicer
checkout. ``scripts/check_slicer_parameter_node.py`` imports the module with it on slicer-core
MRML and checks the module description, the logic's parameter node (every field written, saved
and reloaded, validators), Add box, the requests built from it, the library path set-up, and that
Slicer's ``connectGui`` finds a connector for every ``.ui`` binding. It runs in its own process: it installs stand-ins
for ``qt``/``ctk``, which must not leak into other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENDOR_SLICER = Path(os.environ.get("POLYPSAM_SLICER_SOURCE", REPO.parent / "shared" / "vendor" / "Slicer"))


def test_module_imports_with_slicers_own_framework():
    if not (VENDOR_SLICER / "Base" / "Python" / "slicer" / "ScriptedLoadableModule.py").is_file():
        pytest.skip(f"Slicer's Python framework not found at {VENDOR_SLICER}")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_slicer_parameter_node.py"), str(VENDOR_SLICER)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK: Slicer's parameterNodeWrapper accepts PolypSAMParameterNode" in proc.stdout
    assert "saved and reloaded with the scene" in proc.stdout
    assert "requests: " in proc.stdout  # each action's request built from Slicer's parameter node
    # every .ui binding got one of Slicer's GUI connectors
    bound = [line for line in proc.stdout.splitlines() if " -> " in line]
    assert len(bound) >= 12 and not any("-> None" in line for line in bound), proc.stdout
