"""First-use dependency flow of the Slicer module (polypsam.mrml.dependencies) with fake installers."""

from __future__ import annotations

import os
import subprocess
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


def _slicer_512(monkeypatch, pip_install):
    """Slicer 5.12+: ``slicer.packaging.pip_install`` (here ``pip_install``) behind PolypSAM's pip."""
    import types

    import slicer

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_install = pip_install
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)


#: What Slicer raises: its progress dialog's path right after errorDisplay (packaging.py@v5.12.0:
#: 759-764), and every path that shows nothing: testing mode, Slicer 5.10's pip_install and
#: PyTorchUtils' light-the-torch run (util.py logProcessOutput: the argument list, no dialog).
SHOWN = subprocess.CalledProcessError(1, "pip install")
NOT_SHOWN = subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", "sam2==1.1.0"])


@pytest.mark.parametrize("failure, shown", [(SHOWN, True), (NOT_SHOWN, False), (OSError("disk full"), False)])
def test_only_failures_slicers_installer_showed_count_as_reported(monkeypatch, failure, shown):
    """Slicer 5.12+: a failure its pip_install showed is not shown twice; any other is PolypSAM's
    to show (issue 18 §3.3)."""
    env = _FakeEnv(ALL - {"sam2"})

    def failing(requirements, **kwargs):
        raise failure

    _slicer_512(monkeypatch, failing)
    for ensure in (lambda: deps.ensure_dependencies(confirm=lambda text: True, torch_installer=None,
                                                    find_spec=env.find_spec),
                   lambda: deps.ensure_optional("coco", confirm=lambda text: True,
                                                find_spec=lambda name: None)):
        with pytest.raises(deps.DependencyInstallError) as caught:
            ensure()
        assert caught.value.reported is shown and not caught.value.restart_needed


def test_pytorch_extension_failure_is_never_taken_as_shown(monkeypatch):
    """PyTorchUtils' installTorch runs light-the-torch with slicer.util._executePythonModule,
    which shows no dialog (SlicerPyTorch PyTorchUtils.py@e1c85cc:224): on Slicer 5.12+ too, its
    failure is PolypSAM's to show."""
    env = _FakeEnv(ALL - {"torch", "torchvision"})
    _slicer_512(monkeypatch, lambda requirements, **kwargs: None)
    ltt = subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install", "torch==2.14.1"])

    def pytorch_utils(torch_requirement, torchvision_requirement):
        raise ltt

    with pytest.raises(deps.DependencyInstallError) as caught:
        deps.ensure_dependencies(confirm=lambda text: True, torch_installer=pytorch_utils,
                                 find_spec=env.find_spec)
    assert not caught.value.reported and caught.value.__cause__ is ltt


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


# -- optional features (COCO, video files, DICOM SEG) and protecting Slicer's packages ------------
class _Dist:
    def __init__(self, name, version):
        self.metadata, self.version = {"Name": name}, version


def test_optional_feature_offers_its_pins_and_installs_after_consent():
    env = _FakeEnv(set())
    support = deps.optional_support("video files", find_spec=env.find_spec)
    assert support.status == "install"
    assert support.requirements == ("imageio==2.38.2", "av==18.1.0")
    asked = []
    status = deps.ensure_optional("video files", confirm=lambda text: asked.append(text) or True,
                                  pip_install=env.pip_install, find_spec=env.find_spec)
    assert status.ready and status.installed == ["imageio==2.38.2", "av==18.1.0"]
    assert [c[0] for c in env.calls] == ["imageio==2.38.2 av==18.1.0"]
    assert "imageio==2.38.2" in asked[0] and "not changed" in asked[0]
    assert deps.optional_support("video files", find_spec=env.find_spec).status == "ready"


def test_optional_feature_declined_installs_nothing():
    env = _FakeEnv(set())
    status = deps.ensure_optional("coco", confirm=lambda text: False, pip_install=env.pip_install,
                                  find_spec=env.find_spec)
    assert status.declined and not status.ready and not env.calls
    assert "pycocotools==2.0.11" in status.message


def test_dicom_seg_needs_a_slicer_whose_pydicom_highdicom_accepts():
    """Slicer 5.10 bundles pydicom 2.4.4; highdicom needs >= 3.0.1: hidden, nothing offered."""
    env = _FakeEnv(set())
    old = deps.optional_support("dicom-seg", find_spec=env.find_spec, version=lambda name: "2.4.4")
    assert old.status == "unavailable" and not old.requirements
    assert "Slicer 5.12 or newer" in old.reason and "pydicom 2.4.4" in old.reason
    assert "\n" not in old.reason
    with pytest.raises(deps.DependencyInstallError, match="Slicer 5.12 or newer"):
        deps.ensure_optional("dicom-seg", confirm=lambda text: pytest.fail("asked"),
                             pip_install=env.pip_install, find_spec=env.find_spec,
                             version=lambda name: "2.4.4")
    assert not env.calls
    new = deps.optional_support("dicom-seg", find_spec=env.find_spec, version=lambda name: "3.0.2")
    assert new.status == "install" and new.requirements == ("highdicom==0.27.0",)
    bundled = deps.optional_support("dicom-seg", find_spec=_FakeEnv({"highdicom"}).find_spec,
                                    version=lambda name: "3.0.2")
    assert bundled.status == "ready"


def test_optional_install_failure_is_one_clear_error():
    env = _FakeEnv(set())

    def failing(requirements):
        raise RuntimeError("ResolutionImpossible: numpy==2.0.2 is installed")

    with pytest.raises(deps.DependencyInstallError, match="never changed.*ResolutionImpossible"):
        deps.ensure_optional("coco", confirm=lambda text: True, pip_install=failing,
                             find_spec=env.find_spec)


def test_consent_from_the_environment_answers_without_a_dialog(monkeypatch):
    """POLYPSAM_INSTALL_CONSENT=yes/no answers Slicer's dialog (CI installs through it)."""
    import slicer

    shown = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, **kw: shown.append(text) or True, raising=False)
    env = _FakeEnv(set())
    monkeypatch.setenv(deps.CONSENT_ENV, "no")
    assert deps.ensure_optional("coco", pip_install=env.pip_install, find_spec=env.find_spec).declined
    monkeypatch.setenv(deps.CONSENT_ENV, "yes")
    assert deps.ensure_optional("coco", pip_install=env.pip_install, find_spec=env.find_spec).ready
    assert not shown and [c[0] for c in env.calls] == ["pycocotools==2.0.11"]
    monkeypatch.delenv(deps.CONSENT_ENV)
    env = _FakeEnv(ALL - {"sam2"})
    assert deps.ensure_dependencies(pip_install=env.pip_install, torch_installer=None,
                                    find_spec=env.find_spec).ready
    assert len(shown) == 1 and "sam2==1.1.0" in shown[0], "without the variable the dialog asks"


def test_installs_pin_every_installed_distribution():
    dists = [_Dist("numpy", "2.0.2"), _Dist("pydicom", "2.4.4"), _Dist("Pillow", "11.2.1"),
             _Dist("numpy", "1.26.0"), _Dist("", "1.0"), _Dist("odd name", "1")]
    assert deps.installed_constraints(lambda: dists) == "numpy==2.0.2\nPillow==11.2.1\npydicom==2.4.4\n"
    seen = []

    def pip_install(requirements):
        path = requirements.split(" -c ", 1)[1].strip("'")
        seen.append((requirements.split(" -c ")[0], open(path).read(), path))

    deps.protecting_installed(pip_install, lambda: dists)("--no-deps sam2==1.1.0")
    (requirements, text, path), = seen
    assert requirements == "--no-deps sam2==1.1.0" and "pydicom==2.4.4" in text
    assert not os.path.exists(path), "the constraints file is removed afterwards"


def _wheel(folder, name, version, requires=()):
    """A minimal wheel (metadata only) for pip to resolve from a local folder."""
    import zipfile

    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{info}/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
    return path


def test_real_pip_refuses_to_replace_an_installed_package(tmp_path):
    """pip itself (dry run, local wheels, no network): a package needing a newer version of an
    installed one resolves to a replacement without the constraints and fails with them."""
    import subprocess

    import tqdm

    _wheel(tmp_path, "tqdm", "999.0")
    _wheel(tmp_path, "polypsam_probe", "1.0", ["tqdm>=999"])
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-cache-dir",
           "--disable-pip-version-check", "--find-links", str(tmp_path), "polypsam_probe"]
    free = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert free.returncode == 0 and "tqdm-999.0" in free.stdout, free.stdout + free.stderr
    runs = []

    def pip_install(requirements):
        import shlex

        runs.append(subprocess.run(cmd[:-1] + shlex.split(requirements), capture_output=True,
                                   text=True, timeout=120))

    deps.protecting_installed(pip_install)("polypsam_probe")
    assert runs[0].returncode != 0, runs[0].stdout
    assert f"tqdm=={tqdm.__version__}" in runs[0].stdout + runs[0].stderr
