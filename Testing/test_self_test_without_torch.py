"""PolypSAM where torch and sam2 are not installed (desktop Slicer before first use, the extensions
build factory): its self-test as Slicer runs it (Reload and Test and the SelfTests module call
``runTest()`` directly and count ``SkipTest`` as a failure; ctest runs ``slicer.testing.runUnitTest``,
which runs each ``test_*`` alone: issue 18 §3.7), and the first-use install's dialogs (§3.3, §3.12).

It runs in the Qt harness (``Testing/pythonqt``) with Slicer's own framework from
``../shared/vendor/Slicer``, under ``python -S`` with every distribution of this environment
except torch, torchvision and sam2 (``Testing/package_sets.py``): there ``import torch`` fails and
``importlib.util.find_spec("torch")`` is ``None``, as in that Slicer.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import pytest

import package_sets as ps
from pythonqt.client import Worker, scenario_registry

REPO = Path(__file__).resolve().parents[1]
SLICER_SOURCE = Path(os.environ.get("POLYPSAM_SLICER_SOURCE", REPO.parent / "shared" / "vendor" / "Slicer"))
LEFT_OUT = {"torch", "torchvision", "sam2", "polypsam"}  # polypsam: PYTHONPATH's copy is used

SCENARIOS, in_harness = scenario_registry()


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if importlib.util.find_spec("PyQt5") is None:
        pytest.skip("PyQt5 is not installed (scripts/requirements.txt)")
    if not (SLICER_SOURCE / "Base" / "Python" / "slicer" / "testing.py").is_file():
        pytest.skip(f"Slicer's Python framework not found at {SLICER_SOURCE}")
    site = tmp_path_factory.mktemp("site-without-torch")
    ps.build_site(set(ps.installed()) - LEFT_OUT, site)
    env = {**ps.restricted_env(site, REPO / "PolypSAMLib", REPO / "Testing"),
           "POLYPSAM_SLICER_SOURCE": str(SLICER_SOURCE)}
    worker = Worker("test_self_test_without_torch", "(no checkpoint)", env=env,
                    python=(sys.executable, "-S"))
    yield worker
    worker.close()


class _Messages(logging.Handler):
    """What the test shows with delayDisplay (it logs every message)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


@in_harness
def test_self_test_reports_the_sam2_scenarios_skipped(env):
    """runTest() passes with the GUI scenario run and the SAM2 scenarios reported skipped; under
    ctest's runner the SAM2 test is a skip, not an error."""
    import unittest

    assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("sam2") is None
    with pytest.raises(ImportError):
        import torch  # noqa: F401
    messages, root = _Messages(), logging.getLogger()
    level = root.level
    root.addHandler(messages)
    root.setLevel(logging.INFO)
    try:
        env.slicer.selfTests["PolypSAM"](msec=0)  # what Reload and Test and SelfTests call
    finally:
        root.removeHandler(messages)
        root.setLevel(level)
    assert "Parameter node and GUI passed" in messages.texts
    assert any("skipped: install PyTorch and SAM2 first" in text for text in messages.texts), messages.texts
    env.scene.Clear(0)
    # ctest: slicer.testing.runUnitTest(path, "PolypSAM") loads every test_* of PolypSAMTest
    spec = importlib.util.spec_from_file_location(
        "slicer.testing", SLICER_SOURCE / "Base" / "Python" / "slicer" / "testing.py")
    testing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(testing)
    suite = unittest.TestLoader().loadTestsFromTestCase(env.python_module.PolypSAMTest)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    assert result.wasSuccessful(), result.errors + result.failures
    assert [test.id().rsplit(".", 1)[-1] for test, _why in result.skipped] == ["test_sam2_scenarios"]
    testing.runUnitTest([], "PolypSAM")  # Slicer's own runner: raises unless every test passed


@in_harness
def test_install_consent_shows_the_normal_cursor(env):
    """First use without torch: *Check / install dependencies* asks first; the consent dialog and
    the warning after Cancel show the normal cursor although the button's run set a wait cursor
    (Slicer 5.10 and 5.12 show message boxes under it: util.py@v5.10.0:3199; issue 18 §3.12)."""
    import contextlib

    util = env.slicer.util
    os.environ.pop("POLYPSAM_INSTALL_CONSENT", None)
    main_message_box = util._temporaryNormalCursor
    util._temporaryNormalCursor = contextlib.nullcontext  # messageBox as Slicer 5.10.0 has it
    try:
        env.h.dialogs.answer("ctkMessageBox", env.qt.QMessageBox.Cancel, contains="sam2==1.1.0")
        env.h.dialogs.answer("ctkMessageBox", env.qt.QMessageBox.Ok, contains="installation declined")
        env.press(env.ui.dependenciesButton)
    finally:
        util._temporaryNormalCursor = main_message_box
    consent, declined = env.h.dialogs.shown[-2:]
    assert "torch==" in consent.text and consent.cursor is None, consent
    assert declined.cursor is None, declined
    assert env.qt.QApplication.overrideCursor() is None, "the wait cursor is gone after the run"
    assert "declined" in env.ui.engineStatusLabel.text


@in_harness
def test_a_failed_install_through_the_pytorch_extension_is_shown(env):
    """Slicer 5.12+ (Slicer's own ``slicer.packaging`` present) with the PyTorch extension: its
    installTorch runs light-the-torch with ``slicer.util._executePythonModule``, which shows no
    dialog (SlicerPyTorch PyTorchUtils.py@e1c85cc:224), so PolypSAM shows the failure (issue 18
    §3.3: it was taken as already shown by Slicer's installer)."""
    import subprocess
    import types

    calls = []

    class PyTorchUtilsLogic:  # PyTorchUtils.py@e1c85cc:194, light-the-torch failing
        def installTorch(self, askConfirmation=False, forceComputationBackend=None,
                         torchVersionRequirement=None, torchvisionVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement, torchvisionVersionRequirement))
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install"])

    spec = importlib.util.spec_from_file_location(
        "slicer.packaging", SLICER_SOURCE / "Base" / "Python" / "slicer" / "packaging.py")
    packaging = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packaging)
    extension = types.ModuleType("PyTorchUtils")
    extension.PyTorchUtilsLogic = PyTorchUtilsLogic
    sys.modules.update({"slicer.packaging": packaging, "PyTorchUtils": extension})
    env.slicer.packaging = packaging
    os.environ["POLYPSAM_INSTALL_CONSENT"] = "yes"
    try:
        env.h.dialogs.answer("ctkMessageBox", env.qt.QMessageBox.Ok, contains="light_the_torch")
        env.press(env.ui.dependenciesButton)
    finally:
        del os.environ["POLYPSAM_INSTALL_CONSENT"], sys.modules["PyTorchUtils"], sys.modules["slicer.packaging"]
        del env.slicer.packaging
    env.expect_printed("light_the_torch")  # tryWithErrorDisplay re-raises after its dialog
    assert calls == [(False, "==2.14.1", "==0.29.1")]
    assert "Installing dependencies failed" in env.h.dialogs.shown[-1].text
