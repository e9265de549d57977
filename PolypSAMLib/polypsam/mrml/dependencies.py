"""First-use dependencies of the PolypSAM Slicer module (no Qt; ``slicer`` only when installing).

Nothing here runs at import time or in a module constructor: :func:`ensure_dependencies` is
called when the user presses a button. It checks whether torch, sam2 and sam2's small runtime
packages can be imported (torchvision is not needed: PolypSAM does not use sam2's
``SAM2ImagePredictor``, the only part of sam2 that imports it), asks for consent (one dialog
listing what will be installed), installs them and tells the caller whether Slicer must be
restarted.

* torch: through the PyTorch extension (``PyTorchUtils``, which picks the CUDA build matching
  the driver, and installs a matching torchvision with it) when it is installed, else
  ``slicer.util.pip_install`` with the pinned version below (the same pin as
  ``scripts/setup.sh``).
* sam2: ``SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0`` (its CUDA
  extension is optional and needs a compiler; ``--no-deps`` keeps pip from replacing torch).
* The ``polypsam`` library itself is shipped inside the module, never pip-installed.

Features beside SAM2 that need packages desktop Slicer does not bundle (COCO export, video files,
DICOM SEG where Slicer lacks highdicom) are offered the same way, one consent each, at the pinned
versions of :data:`OPTIONAL_PACKAGES` (:func:`optional_support`, :func:`ensure_optional`).
Every pip install PolypSAM runs gets a constraints file (``-c``) pinning each installed
distribution to its installed version, so pip fails with a message rather than replace one of
Slicer's own packages (its DICOM browser depends on them). The PyTorch extension's install keeps
its own policy (it installs light-the-torch, which pins pip itself: constraining it would make it
fail where Slicer's pip is newer than light-the-torch allows). ``POLYPSAM_INSTALL_CONSENT=yes``
(or ``no``) answers the consent dialog without showing it, for scripted set-ups and CI.

The Slicer calls (confirm dialog, pip, PyTorchUtils) are parameters with Slicer defaults, so the
whole flow is testable without Slicer.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"
SAM2_VERSION = "1.1.0"

#: import name -> pip requirement of sam2's small runtime dependencies (installed normally).
SAM2_RUNTIME = {
    "hydra": "hydra-core>=1.3.2",
    "iopath": "iopath>=0.1.10",
    "tqdm": "tqdm>=4.60",
    "platformdirs": "platformdirs>=3",
    "PIL": "pillow>=9",
}


MIN_PYTHON = (3, 10)  # sam2 needs 3.10+, torch 2.14 has no 3.9 wheel: Slicer 5.10 or newer

#: Features beside SAM2 whose packages desktop Slicer does not bundle: feature -> {import name:
#: pinned requirement}. Testing/test_slicer_package_set.py checks each pin (and its dependencies)
#: against the packages Slicer 5.10.0 and Slicer main bundle: none would replace one of them.
OPTIONAL_PACKAGES: dict[str, dict[str, str]] = {
    "coco": {"pycocotools": "pycocotools==2.0.11"},
    "video files": {"imageio": "imageio==2.38.2", "av": "av==18.1.0"},
    "dicom-seg": {"highdicom": "highdicom==0.27.0"},
}
FEATURE_TITLES = {"coco": "COCO export", "video files": "Loading video files (mp4, avi, mov...)",
                  "dicom-seg": "DICOM SEG export"}
#: feature -> (distribution, lowest version, the Slicer that bundles one): the feature's pinned
#: package needs that distribution at least that new; an older one is Slicer's own and stays.
NEEDS_INSTALLED = {"dicom-seg": ("pydicom", "3.0.1", "Slicer 5.12")}

#: ``yes`` installs without showing the consent dialog, ``no`` declines it (CI, scripted set-ups).
CONSENT_ENV = "POLYPSAM_INSTALL_CONSENT"


class DependencyInstallError(RuntimeError):
    """Installing a dependency failed; ``restart_needed`` says whether a restart may fix it;
    ``reported`` that the user has already seen the failure (Slicer's installer showed it:
    :func:`shown_by_slicer`)."""

    def __init__(self, message: str, restart_needed: bool = False, reported: bool = False) -> None:
        super().__init__(message)
        self.restart_needed = restart_needed
        self.reported = reported


def check_python(version: Sequence[int] = tuple(sys.version_info[:3])) -> None:
    """Refuse, with a clear message, a Slicer whose Python cannot run torch and sam2."""
    if tuple(version[:2]) < MIN_PYTHON:
        found = ".".join(str(v) for v in version[:3])
        raise DependencyInstallError(
            f"PolypSAM needs 3D Slicer 5.10 or newer: this Slicer runs Python {found}, and SAM2"
            f" and PyTorch {TORCH_VERSION} need Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer."
            " Nothing was installed; please install a current Slicer from download.slicer.org."
        )


@dataclass
class DependencyStatus:
    """What :func:`ensure_dependencies` found or did."""

    ready: bool
    installed: list[str] = field(default_factory=list)
    declined: bool = False
    restart_needed: bool = False
    message: str = ""


def _importable(name: str, find_spec: Callable[[str], object]) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(find_spec: Callable[[str], object] = importlib.util.find_spec) -> dict[str, list[str]]:
    """Pip requirements still missing, grouped as ``{"torch": [...], "sam2": [...], "runtime": [...]}``."""
    missing: dict[str, list[str]] = {"torch": [], "sam2": [], "runtime": []}
    if not _importable("torch", find_spec):
        missing["torch"].append(f"torch=={TORCH_VERSION}")
    for module, requirement in SAM2_RUNTIME.items():
        if not _importable(module, find_spec):
            missing["runtime"].append(requirement)
    if not _importable("sam2", find_spec):
        missing["sam2"].append(f"sam2=={SAM2_VERSION}")
    return missing


def describe_plan(missing: dict[str, list[str]], use_pytorch_extension: bool) -> str:
    """The consent text: what will be installed, how, and roughly how big it is."""
    lines = ["PolypSAM needs Python packages that are not installed in Slicer yet:", ""]
    if missing["torch"]:
        how = ("through the PyTorch extension (it picks the build for your GPU driver)"
               if use_pytorch_extension else "with pip (CPU or CUDA build for this platform)")
        lines.append(f"  - {' '.join(missing['torch'])} {how}; this can download 1-3 GB")
    if missing["runtime"]:
        lines.append(f"  - {' '.join(missing['runtime'])} with pip (small)")
    if missing["sam2"]:
        lines.append(f"  - {' '.join(missing['sam2'])} (Meta's SAM2) with pip, built without its"
                     " optional CUDA extension")
    lines += ["", "Installation can take several minutes and Slicer may need a restart afterwards.",
              "Install now?"]
    return "\n".join(lines)


@contextlib.contextmanager
def normal_cursor(app: Any = None) -> Iterator[None]:
    """The normal mouse cursor while a dialog waits for the user: every override cursor (the wait
    cursor ``tryWithErrorDisplay(waitCursor=True)`` sets around a run) is taken off, and put back
    afterwards. Slicer 5.10 and 5.12 show message boxes under it (util.py@v5.10.0:3199
    ``return mbox.exec_()``); Slicer main does this itself (``_temporaryNormalCursor``, b9342947)."""
    if app is None:
        import slicer

        app = getattr(slicer, "app", None)  # None outside Slicer's application (slicer-core)
    shapes = []
    while app is not None and app.overrideCursor() is not None and len(shapes) < 50:  # never hang on a stuck stack
        shapes.append(app.overrideCursor().shape())
        app.restoreOverrideCursor()
    try:
        yield
    finally:
        for shape in reversed(shapes):
            app.setOverrideCursor(shape)


def show_dialog(display: Callable[..., Any], text: str, title: str) -> Any:
    """``display(text, windowTitle=title)`` (a ``slicer.util`` message display) under the normal
    cursor (:func:`normal_cursor`); what it returns."""
    with normal_cursor():
        return display(text, windowTitle=title)


def confirm_dialog(text: str, title: str) -> bool:
    """Slicer's OK/Cancel dialog under the normal cursor: whether the user pressed OK."""
    import slicer

    return bool(show_dialog(slicer.util.confirmOkCancelDisplay, text, title))


def _slicer_confirm(text: str) -> bool:
    answer = os.environ.get(CONSENT_ENV, "").strip().lower()
    if answer in ("yes", "no"):
        logging.info("PolypSAM: %s=%s answers: %s", CONSENT_ENV, answer, text)
        return answer == "yes"
    return confirm_dialog(text, "PolypSAM: install dependencies")


def shown_by_slicer(exc: BaseException) -> bool:
    """Whether Slicer already showed ``exc`` to the user in an error dialog.

    Only Slicer's ``packaging.pip_install`` (5.12+, also behind ``slicer.util.pip_install``) shows
    one, and only on its progress-dialog path, where it raises ``CalledProcessError(code, "pip
    install")`` right after ``errorDisplay`` (packaging.py@v5.12.0:759-764, @583e9b37:779-784).
    Its other paths (testing mode, PythonSlicer, a worker thread), Slicer 5.10's pip_install and
    PyTorchUtils' ``installTorch`` (``slicer.util._executePythonModule("light_the_torch", ...)``)
    raise ``CalledProcessError`` with the argument list and show nothing (util.py@v5.10.0:3954)."""
    return isinstance(exc, subprocess.CalledProcessError) and exc.cmd == "pip install"


def slicer_pip_installer() -> tuple[Callable[[str], None], bool]:
    """``(pip_install, reports_errors)`` for this Slicer.

    Slicer 5.12+ has ``slicer.packaging.pip_install``, which shows its own progress and error
    dialogs under PolypSAM's name (a failure it showed is :func:`shown_by_slicer`). Older Slicers
    have only ``slicer.util.pip_install``, whose failures PolypSAM reports itself.
    """
    try:
        from slicer import packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_install"):
        return (lambda requirements: packaging.pip_install(requirements, requester="PolypSAM")), True
    import slicer

    return slicer.util.pip_install, False


def installed_constraints(
        distributions: Callable[[], Iterable[importlib.metadata.Distribution]] = importlib.metadata.distributions,
) -> str:
    """A pip constraints file's text pinning every installed distribution to its version (the
    first one found on ``sys.path`` where a name is installed twice, as Python imports it)."""
    pins: dict[str, str] = {}
    for dist in distributions():
        name, version = dist.metadata.get("Name"), dist.version
        if not name or not version or any(c.isspace() for c in name + version):
            continue
        pins.setdefault(name.lower().replace("_", "-").replace(".", "-"), f"{name}=={version}")
    return "".join(pin + "\n" for pin in sorted(pins.values(), key=str.lower))


@contextlib.contextmanager
def constraints_file(
        distributions: Callable[[], Iterable[importlib.metadata.Distribution]] = importlib.metadata.distributions,
) -> Iterator[str]:
    """The path of a temporary :func:`installed_constraints` file, removed afterwards."""
    handle, path = tempfile.mkstemp(prefix="polypsam-constraints-", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(installed_constraints(distributions))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def protecting_installed(
        pip_install: Callable[[str], None],
        distributions: Callable[[], Iterable[importlib.metadata.Distribution]] = importlib.metadata.distributions,
) -> Callable[[str], None]:
    """``pip_install`` that may add packages but never changes an installed one: each call gets
    ``-c`` with a fresh :func:`constraints_file` (pip fails, naming the conflict, instead)."""

    def install(requirements: str) -> None:
        with constraints_file(distributions) as path:
            pip_install(f"{requirements} -c {shlex.quote(path)}")

    return install


def _slicer_pip_install(requirements: str) -> None:
    protecting_installed(slicer_pip_installer()[0])(requirements)


def pytorch_extension_installer() -> Optional[Callable[[str, str], object]]:
    """``install(torch_requirement, torchvision_requirement)`` through PyTorchUtils, if present."""
    try:
        import PyTorchUtils  # the PyTorch Slicer extension
    except ImportError:
        return None

    def install(torch_requirement: str, torchvision_requirement: str):
        logic = PyTorchUtils.PyTorchUtilsLogic()
        return logic.installTorch(askConfirmation=False, torchVersionRequirement=torch_requirement,
                                  torchvisionVersionRequirement=torchvision_requirement)

    return install


def ensure_dependencies(
    *,
    confirm: Callable[[str], bool] = _slicer_confirm,
    pip_install: Callable[[str], None] = _slicer_pip_install,
    torch_installer: Optional[Callable[[str, str], object]] | bool = True,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    log: Callable[[str], None] = logging.info,
    python_version: Sequence[int] = tuple(sys.version_info[:3]),
) -> DependencyStatus:
    """Check torch/sam2; with the user's consent install what is missing.

    ``torch_installer=True`` looks up the PyTorch extension; ``None``/``False`` forces pip.
    Returns a :class:`DependencyStatus`; raises :class:`DependencyInstallError` when this
    Slicer's Python is too old (before offering anything) or an install fails (with
    ``restart_needed`` when torch was replaced while loaded, and ``reported`` when Slicer's
    installer already showed the failure: :func:`shown_by_slicer`).
    A restart is asked for only when torch itself was replaced while loaded, or a package still
    cannot be imported.
    """
    missing = missing_requirements(find_spec)
    if not any(missing.values()):
        return DependencyStatus(ready=True, message="torch and sam2 are installed")
    check_python(python_version)
    if torch_installer is True:
        torch_installer = pytorch_extension_installer()
    torch_installer = torch_installer or None
    if not confirm(describe_plan(missing, torch_installer is not None)):
        return DependencyStatus(ready=False, declined=True,
                                message="installation declined: PolypSAM cannot run without torch and sam2")

    torch_was_loaded = "torch" in sys.modules
    installed: list[str] = []
    try:
        if missing["torch"]:
            torch_req = missing["torch"][0]
            # PyTorchUtils always installs torchvision too: pin the one that matches torch.
            vision_req = f"torchvision=={TORCHVISION_VERSION}"
            if torch_installer is not None:
                log(f"PolypSAM: installing {torch_req} {vision_req} through the PyTorch extension")
                result = torch_installer(torch_req[len("torch"):], vision_req[len("torchvision"):])
                if result is None:
                    raise DependencyInstallError("the PyTorch extension did not install PyTorch")
            else:
                log(f"PolypSAM: pip install {' '.join(missing['torch'])}")
                pip_install(" ".join(missing["torch"]))
            installed += missing["torch"]
        if missing["runtime"]:
            log(f"PolypSAM: pip install {' '.join(missing['runtime'])}")
            pip_install(" ".join(missing["runtime"]))
            installed += missing["runtime"]
        if missing["sam2"]:
            # --no-build-isolation builds against the torch just installed; setuptools/wheel
            # must be there for that.
            for module, requirement in (("setuptools", "setuptools>=64"), ("wheel", "wheel")):
                if not _importable(module, find_spec):
                    pip_install(requirement)
            log(f"PolypSAM: SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation {missing['sam2'][0]}")
            previous = os.environ.get("SAM2_BUILD_CUDA")
            os.environ["SAM2_BUILD_CUDA"] = "0"
            try:
                pip_install(f"--no-deps --no-build-isolation {missing['sam2'][0]}")
            finally:
                if previous is None:
                    os.environ.pop("SAM2_BUILD_CUDA", None)
                else:
                    os.environ["SAM2_BUILD_CUDA"] = previous
            installed += missing["sam2"]
    except DependencyInstallError:
        raise
    except Exception as exc:  # pip failures come as CalledProcessError and friends
        done = f" (already installed: {' '.join(installed)})" if installed else ""
        raise DependencyInstallError(
            f"installing PolypSAM's dependencies failed{done}: {exc}",
            restart_needed=torch_was_loaded and bool(missing["torch"]) and bool(installed),
            reported=shown_by_slicer(exc),
        ) from exc

    importlib.invalidate_caches()
    still_missing = [req for reqs in missing_requirements(find_spec).values() for req in reqs]
    torch_replaced = torch_was_loaded and bool(missing["torch"])
    if still_missing or torch_replaced:
        text = ("Packages were installed; restart Slicer to use them"
                + (f" (still not importable: {' '.join(still_missing)})" if still_missing else "")
                + ".")
        return DependencyStatus(ready=False, installed=installed, restart_needed=True, message=text)
    return DependencyStatus(ready=True, installed=installed, message="installed " + " ".join(installed))


def requirements_summary() -> Sequence[str]:
    """Every requirement the module may install (for documentation and the settings panel)."""
    return [f"torch=={TORCH_VERSION}", f"sam2=={SAM2_VERSION}",
            *SAM2_RUNTIME.values()]


@dataclass(frozen=True)
class Support:
    """Whether a feature runs in this Python: ``status`` is ``ready``, ``install`` (its pinned
    ``requirements`` are installed with consent first) or ``unavailable`` (``reason``: one line
    naming what it needs)."""

    feature: str
    status: str
    requirements: tuple[str, ...] = ()
    reason: str = ""


def _installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _older(version: str, lowest: str) -> bool:
    """``version < lowest`` on their release numbers (``2.4.4``, ``3.0.1rc1`` -> 3.0.1)."""
    def release(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])

    return release(version) < release(lowest)


def optional_support(
    feature: str,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    version: Callable[[str], Optional[str]] = _installed_version,
) -> Support:
    """What :data:`OPTIONAL_PACKAGES`' ``feature`` needs in this Python (nothing is installed)."""
    title = FEATURE_TITLES[feature]
    missing = tuple(req for module, req in OPTIONAL_PACKAGES[feature].items()
                    if not _importable(module, find_spec))
    if not missing:
        return Support(feature, "ready")
    if feature in NEEDS_INSTALLED:
        dist, lowest, slicer_version = NEEDS_INSTALLED[feature]
        found = version(dist)
        if found is not None and _older(found, lowest):
            return Support(feature, "unavailable", reason=(
                f"{title} needs {slicer_version} or newer: {' '.join(missing)} needs {dist} >= "
                f"{lowest}, and this Slicer's own {dist} {found} is not replaced"))
    return Support(feature, "install", missing,
                   f"{title} needs {' '.join(missing)}, installed with your consent")


def describe_optional(support: Support) -> str:
    """The consent text for installing what ``support`` lists."""
    return "\n".join([
        f"{FEATURE_TITLES[support.feature]} needs Python packages that are not installed in"
        " Slicer yet:", "", *(f"  - {req} with pip" for req in support.requirements), "",
        "Packages already installed (Slicer's own included) are not changed.", "Install now?"])


def ensure_optional(
    feature: str,
    *,
    confirm: Callable[[str], bool] = _slicer_confirm,
    pip_install: Callable[[str], None] = _slicer_pip_install,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    version: Callable[[str], Optional[str]] = _installed_version,
    log: Callable[[str], None] = logging.info,
) -> DependencyStatus:
    """With the user's consent, install the pinned packages ``feature`` still needs.

    Raises :class:`DependencyInstallError` when the feature cannot be had in this Slicer (its
    one-line reason) or pip fails (``reported`` as for :func:`ensure_dependencies`).
    """
    support = optional_support(feature, find_spec, version)
    if support.status == "ready":
        return DependencyStatus(ready=True, message=f"{FEATURE_TITLES[feature]}: ready")
    if support.status == "unavailable":
        raise DependencyInstallError(support.reason)
    if not confirm(describe_optional(support)):
        return DependencyStatus(ready=False, declined=True, message=(
            f"installation declined: {FEATURE_TITLES[feature]} needs {' '.join(support.requirements)}"))
    log(f"PolypSAM: pip install {' '.join(support.requirements)}")
    try:
        pip_install(" ".join(support.requirements))
    except Exception as exc:  # pip failures come as CalledProcessError and friends
        raise DependencyInstallError(
            f"installing {' '.join(support.requirements)} failed (packages already installed,"
            f" Slicer's own included, are never changed): {exc}", reported=shown_by_slicer(exc)) from exc
    importlib.invalidate_caches()
    if optional_support(feature, find_spec, version).status != "ready":
        return DependencyStatus(ready=False, installed=list(support.requirements),
                                restart_needed=True, message=(
                                    f"{' '.join(support.requirements)} installed; restart Slicer to use them."))
    return DependencyStatus(ready=True, installed=list(support.requirements),
                            message="installed " + " ".join(support.requirements))
