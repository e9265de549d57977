"""First-use dependency flow of the Slicer module (polypsam.mrml.dependencies) with fake installers."""

from __future__ import annotations

import os
import sys

import pytest

from polypsam.mrml import dependencies as deps


# -- first-use dependencies -----------------------------------------------------------------------
class _FakeEnv:
    """Which modules import; installs "add" modules; records the calls and SAM2_BUILD_CUDA."""

    PIP_TO_MODULE = {"torch": "torch", "torchvision": "torchvision", "sam2": "sam2",
                     "hydra-core": "hydra", "iopath": "iopath", "tqdm": "tqdm",
                     "platformdirs": "platformdirs", "pillow": "PIL", "setuptools": "setuptools",
                     "wheel": "wheel"}

    def __init__(self, present, install_works=True):
        self.present = set(present)
        self.calls = []
        self.install_works = install_works

    def find_spec(self, name):
        return object() if name in self.present else None

    def pip_install(self, requirements):
        self.calls.append((requirements, os.environ.get("SAM2_BUILD_CUDA")))
        if self.install_works:
            for token in requirements.split():
                if not token.startswith("-"):
                    base = token.split("=")[0].split(">")[0]
                    self.present.add(self.PIP_TO_MODULE.get(base, base))


ALL = {"torch", "torchvision", "sam2", "hydra", "iopath", "tqdm", "platformdirs", "PIL",
       "setuptools", "wheel"}


def test_dependencies_present_needs_no_dialog():

    env = _FakeEnv(ALL)
    status = deps.ensure_dependencies(confirm=lambda text: pytest.fail("asked"),
                                      pip_install=env.pip_install, torch_installer=None,
                                      find_spec=env.find_spec)
    assert status.ready and not env.calls


def test_torch_without_torchvision_is_enough():
    """PolypSAM never imports torchvision (a CPU-only torch has no PyPI torchvision here)."""

    env = _FakeEnv(ALL - {"torchvision"})
    status = deps.ensure_dependencies(confirm=lambda text: pytest.fail("asked"),
                                      pip_install=env.pip_install, torch_installer=None,
                                      find_spec=env.find_spec)
    assert status.ready and not env.calls
    assert not any("torchvision" in r for r in deps.requirements_summary())


def test_dependencies_declined_installs_nothing():

    env = _FakeEnv(ALL - {"torch", "torchvision", "sam2"})
    asked = []
    status = deps.ensure_dependencies(confirm=lambda text: asked.append(text) or False,
                                      pip_install=env.pip_install, torch_installer=None,
                                      find_spec=env.find_spec)
    assert status.declined and not status.ready and not env.calls
    assert f"torch=={deps.TORCH_VERSION}" in asked[0] and f"sam2=={deps.SAM2_VERSION}" in asked[0]


def test_dependencies_pip_flow_pins_torch_and_builds_sam2_without_cuda(monkeypatch):

    monkeypatch.delitem(sys.modules, "torch", raising=False)  # a fresh Slicer: torch not loaded
    monkeypatch.delenv("SAM2_BUILD_CUDA", raising=False)
    env = _FakeEnv({"PIL", "setuptools", "wheel"})
    status = deps.ensure_dependencies(confirm=lambda text: True, pip_install=env.pip_install,
                                      torch_installer=None, find_spec=env.find_spec)
    assert status.ready and not status.restart_needed, status
    reqs = [c[0] for c in env.calls]
    assert reqs[0] == f"torch=={deps.TORCH_VERSION}", "torchvision is not needed"
    assert reqs[-1] == f"--no-deps --no-build-isolation sam2=={deps.SAM2_VERSION}"
    assert env.calls[-1][1] == "0", "sam2 must be built with SAM2_BUILD_CUDA=0"
    assert all(flag is None for _, flag in env.calls[:-1])
    assert "SAM2_BUILD_CUDA" not in os.environ, "the environment is restored"
    assert any("hydra-core" in r for r in reqs)
    assert not any("polypsam" in r for r in reqs), "the library ships with the module"


def test_dependencies_use_pytorch_extension_when_present(monkeypatch):

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    env = _FakeEnv(ALL - {"torch", "torchvision"})
    used = []

    def installer(torch_req, vision_req):
        used.append((torch_req, vision_req))
        env.present |= {"torch", "torchvision"}
        return object()

    status = deps.ensure_dependencies(confirm=lambda text: True, pip_install=env.pip_install,
                                      torch_installer=installer, find_spec=env.find_spec)
    assert status.ready
    assert used == [(f"=={deps.TORCH_VERSION}", f"=={deps.TORCHVISION_VERSION}")]
    assert not env.calls


def test_dependencies_report_restart_when_still_not_importable(monkeypatch):

    env = _FakeEnv(ALL - {"sam2"}, install_works=False)
    status = deps.ensure_dependencies(confirm=lambda text: True, pip_install=env.pip_install,
                                      torch_installer=None, find_spec=env.find_spec)
    assert status.restart_needed and not status.ready
    assert "restart" in status.message.lower()


def test_dependencies_install_failure_is_one_clear_error():

    env = _FakeEnv(ALL - {"sam2"})

    def failing(requirements):
        raise RuntimeError("pip exited with status 1")

    with pytest.raises(deps.DependencyInstallError, match="pip exited with status 1"):
        deps.ensure_dependencies(confirm=lambda text: True, pip_install=failing,
                                 torch_installer=None, find_spec=env.find_spec)


def test_old_slicer_python_is_refused_before_anything_is_offered():
    """Slicer 5.6/5.8 ship Python 3.9: sam2 and torch 2.14 cannot install there."""
    env = _FakeEnv(ALL - {"torch", "sam2"})
    with pytest.raises(deps.DependencyInstallError, match="Slicer 5.10 or newer.*Python 3.9.10"):
        deps.ensure_dependencies(confirm=lambda text: pytest.fail("asked"),
                                 pip_install=env.pip_install, torch_installer=None,
                                 find_spec=env.find_spec, python_version=(3, 9, 10))
    assert not env.calls
    deps.check_python((3, 12, 0))  # Slicer 5.10+


def test_no_restart_when_torch_was_not_replaced(monkeypatch):
    """Installing sam2 beside an already loaded torch works in this session."""
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    env = _FakeEnv(ALL - {"sam2"})
    status = deps.ensure_dependencies(confirm=lambda text: True, pip_install=env.pip_install,
                                      torch_installer=None, find_spec=env.find_spec)
    assert status.ready and not status.restart_needed, status


def test_failure_shown_by_slicers_installer_is_not_shown_twice():
    env = _FakeEnv(ALL - {"sam2"})

    def failing(requirements):
        raise RuntimeError("pip exited with status 1")

    with pytest.raises(deps.DependencyInstallError) as caught:
        deps.ensure_dependencies(confirm=lambda text: True, pip_install=failing,
                                 torch_installer=None, find_spec=env.find_spec,
                                 pip_reports_errors=True)
    assert caught.value.reported and not caught.value.restart_needed


def test_slicer_packaging_installs_under_polypsams_name(monkeypatch):
    """Slicer 5.12+: slicer.packaging.pip_install(requester="PolypSAM") shows its own dialogs."""
    import types

    import slicer

    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = lambda requirements, **kwargs: calls.append((requirements, kwargs))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    install, reports = deps.slicer_pip_installer()
    install("sam2==1.1.0")
    assert reports and calls == [("sam2==1.1.0", {"requester": "PolypSAM"})]
