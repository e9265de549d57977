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

The Slicer calls (confirm dialog, pip, PyTorchUtils) are parameters with Slicer defaults, so the
whole flow is testable without Slicer.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

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


class DependencyInstallError(RuntimeError):
    """Installing a dependency failed; ``restart_needed`` says whether a restart may fix it;
    ``reported`` that the user has already seen the failure (Slicer's installer showed it)."""

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


def _slicer_confirm(text: str) -> bool:
    import slicer

    return bool(slicer.util.confirmOkCancelDisplay(text, windowTitle="PolypSAM: install dependencies"))


def slicer_pip_installer() -> tuple[Callable[[str], None], bool]:
    """``(pip_install, reports_errors)`` for this Slicer.

    Slicer 5.12+ has ``slicer.packaging.pip_install``, which shows its own progress and error
    dialogs under PolypSAM's name; PolypSAM then must not show a second error. Older Slicers
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


def _slicer_pip_install(requirements: str) -> None:
    slicer_pip_installer()[0](requirements)


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
    pip_reports_errors: Optional[bool] = None,
) -> DependencyStatus:
    """Check torch/sam2; with the user's consent install what is missing.

    ``torch_installer=True`` looks up the PyTorch extension; ``None``/``False`` forces pip.
    Returns a :class:`DependencyStatus`; raises :class:`DependencyInstallError` when this
    Slicer's Python is too old (before offering anything) or an install fails (with
    ``restart_needed`` when torch was replaced while loaded, and ``reported`` when
    ``pip_install`` already showed the failure; default: Slicer's installer does from 5.12).
    A restart is asked for only when torch itself was replaced while loaded, or a package still
    cannot be imported.
    """
    missing = missing_requirements(find_spec)
    if not any(missing.values()):
        return DependencyStatus(ready=True, message="torch and sam2 are installed")
    check_python(python_version)
    if pip_reports_errors is None:
        pip_reports_errors = pip_install is _slicer_pip_install and slicer_pip_installer()[1]
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
            reported=pip_reports_errors,
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
