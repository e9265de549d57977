"""The Slicer extension's CMake packaging ships every Python file the module needs.

Slicer extensions have broken by listing only the main ``.py`` of a module: the library it
imports was never installed. Here the lists live in ``PolypSAM/PolypSAMFiles.cmake``:

* a pure-Python reading of that file checks that every ``.py`` of the module folder is listed,
  that every listed file exists and that the library is globbed from ``PolypSAMLib/polypsam``;
* with ``cmake`` on the PATH, CMake itself evaluates the file (script mode) and must list every
  ``.py`` under ``PolypSAMLib/polypsam``;
* with ``cmake`` and a C/C++ compiler, the real top-level ``CMakeLists.txt`` is configured,
  built and installed against a stand-in "Slicer" package whose two macros copy files the way
  Slicer's ``slicerMacroBuildScriptedModule`` / CTK's ``ctkMacroCompilePythonScript`` do (paths
  relative to the source dir, copied under DESTINATION_DIR, whose contents are installed), and
  the installed tree must hold ``PolypSAM.py`` with the package ``polypsam`` beside it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "PolypSAM"
LIB_PACKAGE = REPO / "PolypSAMLib" / "polypsam"
FILES_CMAKE = MODULE_DIR / "PolypSAMFiles.cmake"
CMAKE = shutil.which("cmake")


def _strip_comments(text: str) -> str:
    """CMake text without ``# ...`` comments (a ``#`` inside a quoted string is kept)."""
    lines = []
    for line in text.splitlines():
        quoted, cut = False, len(line)
        for pos, char in enumerate(line):
            if char == '"' and (pos == 0 or line[pos - 1] != "\\"):
                quoted = not quoted
            elif char == "#" and not quoted:
                cut = pos
                break
        lines.append(line[:cut])
    return "\n".join(lines)


def _cmake_set(text: str, name: str) -> list[str]:
    """Values of ``set(NAME v1 v2 ...)`` in a CMake file (first occurrence)."""
    match = re.search(rf"\bset\(\s*{name}\s+([^)]*)\)", _strip_comments(text))
    assert match, f"set({name} ...) not found"
    return match.group(1).split()


def _module_python_files() -> set[str]:
    return {
        p.relative_to(MODULE_DIR).as_posix()
        for p in MODULE_DIR.rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _library_python_files() -> set[str]:
    return {
        p.relative_to(LIB_PACKAGE).as_posix()
        for p in LIB_PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    }


# -- pure Python reading --------------------------------------------------------------------------
def test_every_module_python_file_is_listed_and_exists():
    text = FILES_CMAKE.read_text()
    scripts = _cmake_set(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_set(text, "MODULE_PYTHON_RESOURCES")
    missing = sorted(_module_python_files() - set(scripts))
    assert not missing, f"Python files in PolypSAM/ not listed in PolypSAMFiles.cmake: {missing}"
    for rel in scripts + resources:
        assert (MODULE_DIR / rel).is_file(), f"PolypSAMFiles.cmake lists a missing file: {rel}"
    assert "PolypSAM.py" in scripts
    assert {"Resources/UI/PolypSAM.ui", "Resources/Icons/PolypSAM.png"} <= set(resources)


def test_library_is_globbed_recursively_from_the_package():
    text = _strip_comments(FILES_CMAKE.read_text())
    assert re.search(r'\.\./PolypSAMLib/polypsam"', text), "library package dir not referenced"
    assert re.search(
        r"file\(GLOB_RECURSE\s+POLYPSAM_LIB_PYTHON_SCRIPTS\b[^)]*\"\$\{POLYPSAM_LIB_PACKAGE_DIR\}/\*\.py\"",
        text,
    ), "POLYPSAM_LIB_PYTHON_SCRIPTS must glob every .py of the package, recursively"
    assert "RELATIVE" in text, "the glob must give paths relative to the package (subfolders kept)"


def test_module_cmakelists_installs_library_as_polypsam_package():
    text = _strip_comments((MODULE_DIR / "CMakeLists.txt").read_text())
    assert "include(${CMAKE_CURRENT_SOURCE_DIR}/PolypSAMFiles.cmake)" in text
    build = re.search(r"slicerMacroBuildScriptedModule\(([^)]*)\)", text)
    assert build and "SCRIPTS ${MODULE_PYTHON_SCRIPTS}" in build.group(1)
    assert "RESOURCES ${MODULE_PYTHON_RESOURCES}" in build.group(1)
    lib = re.search(r"ctkMacroCompilePythonScript\(([^)]*)\)", text)
    assert lib, "the library must be copied/installed with ctkMacroCompilePythonScript"
    args = " ".join(lib.group(1).split())
    assert 'SCRIPTS "${POLYPSAM_LIB_PYTHON_SCRIPTS}"' in args
    assert "SOURCE_DIR ${POLYPSAM_LIB_PACKAGE_DIR}" in args
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/polypsam" in args
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/polypsam" in args
    assert "NO_INSTALL_SUBDIR" in args


def test_top_level_cmakelists_is_a_slicer_extension():
    text = _strip_comments((REPO / "CMakeLists.txt").read_text())
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({var}\s+\"[^\"]+\"\)", text), f"{var} missing or empty"
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', text)
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
             "add_subdirectory(PolypSAM)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(item) for item in order]
    assert all(p >= 0 for p in positions), dict(zip(order, positions))
    assert positions == sorted(positions), "extension CMake statements out of order"
    assert (REPO / "Resources" / "Icons" / "PolypSAM.png").is_file()


# -- CMake itself ---------------------------------------------------------------------------------
def _cmake_lists(tmp_path: Path) -> dict[str, list[str]]:
    script = tmp_path / "print_files.cmake"
    names = ["MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES", "POLYPSAM_LIB_PYTHON_SCRIPTS",
             "POLYPSAM_LIB_PYTHON_RESOURCES"]
    body = [f'include("{FILES_CMAKE.as_posix()}")']
    body += [f'message("{n}=${{{n}}}")' for n in names]
    script.write_text("\n".join(body) + "\n")
    run = subprocess.run([CMAKE, "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = {}
    for line in run.stderr.splitlines():  # message() without a mode writes to stderr
        name, sep, value = line.partition("=")
        if sep and name in names:
            out[name] = [v for v in value.split(";") if v]
    assert set(out) == set(names), run.stderr
    return out


@pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")
def test_cmake_evaluates_lists_covering_every_python_file(tmp_path):
    lists = _cmake_lists(tmp_path)
    assert set(lists["POLYPSAM_LIB_PYTHON_SCRIPTS"]) == _library_python_files()
    assert "__init__.py" in lists["POLYPSAM_LIB_PYTHON_SCRIPTS"]
    assert _module_python_files() <= set(lists["MODULE_PYTHON_SCRIPTS"])
    for rel in lists["POLYPSAM_LIB_PYTHON_SCRIPTS"] + lists["POLYPSAM_LIB_PYTHON_RESOURCES"]:
        assert (LIB_PACKAGE / rel).is_file(), rel


# A stand-in for an installed Slicer: just the variables and the two macros the extension uses,
# with the same path semantics as Slicer's/CTK's (relative paths from SOURCE_DIR, copied into
# DESTINATION_DIR, the contents of DESTINATION_DIR installed into INSTALL_DIR).
_STUB_CONFIG = """
set(Slicer_VERSION "@VERSION@")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-@VERSION_MM@/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-@VERSION_MM@/qt-scripted-modules")
set(Slicer_USE_PYTHONQT ON)
set(Slicer_FOUND TRUE)
"""

_STUB_USE = r"""
set(BUILD_TESTING OFF)
macro(stubCopyPython target source_dir destination_dir install_dir)
  set(_copied)
  foreach(_f ${ARGN})
    if(IS_ABSOLUTE "${_f}")
      message(FATAL_ERROR "stub: absolute paths are not installed under their package: ${_f}")
    endif()
    if(NOT EXISTS "${source_dir}/${_f}")
      message(FATAL_ERROR "stub: ${target} lists a nonexistent file '${_f}'")
    endif()
    add_custom_command(OUTPUT "${destination_dir}/${_f}"
      COMMAND ${CMAKE_COMMAND} -E copy "${source_dir}/${_f}" "${destination_dir}/${_f}"
      DEPENDS "${source_dir}/${_f}")
    list(APPEND _copied "${destination_dir}/${_f}")
  endforeach()
  add_custom_target(Copy${target}PythonFiles ALL DEPENDS ${_copied})
  install(DIRECTORY "${destination_dir}/" DESTINATION "${install_dir}")
endmacro()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT MY_SOURCE_DIR)
    set(MY_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  if(NOT MY_NO_INSTALL_SUBDIR)
    message(FATAL_ERROR "stub: only NO_INSTALL_SUBDIR is modelled")
  endif()
  stubCopyPython(${MY_TARGET_NAME} "${MY_SOURCE_DIR}" "${MY_DESTINATION_DIR}" "${MY_INSTALL_DIR}"
    ${MY_SCRIPTS} ${MY_RESOURCES})
endmacro()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords: ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  ctkMacroCompilePythonScript(TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS ${MY_SLICER_SCRIPTS} RESOURCES ${MY_SLICER_RESOURCES}
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} NO_INSTALL_SUBDIR)
endmacro()
function(slicer_add_python_unittest)
endfunction()
"""


def _slicer_stub(tmp_path: Path, version: str) -> Path:
    stub = tmp_path / f"SlicerStub-{version}"
    stub.mkdir()
    config = _STUB_CONFIG.replace("@VERSION@", version)
    config = config.replace("@VERSION_MM@", ".".join(version.split(".")[:2]))
    (stub / "SlicerConfig.cmake").write_text(config)
    (stub / "UseSlicer.cmake").write_text(_STUB_USE)
    (stub / "Empty.cmake").write_text("")
    return stub


@pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")
def test_extension_refuses_slicer_older_than_5_10(tmp_path):
    """Slicer 5.8 ships Python 3.9, which sam2 and torch 2.14 do not support."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler for project() to enable")
    stub = _slicer_stub(tmp_path, "5.8.1")
    proc = subprocess.run([CMAKE, "-S", str(REPO), "-B", str(tmp_path / "build"),
                           f"-DSlicer_DIR={stub}"], capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "PolypSAM needs Slicer 5.10 or newer" in proc.stderr and "5.8.1" in proc.stderr


@pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")
def test_extension_builds_and_installs_module_with_library(tmp_path):
    if not (shutil.which("cc") or shutil.which("gcc")) or not (
        shutil.which("c++") or shutil.which("g++")
    ):
        pytest.skip("no C/C++ compiler for project() to enable")
    stub = _slicer_stub(tmp_path, "5.10.0")
    build, prefix = tmp_path / "build", tmp_path / "install"

    def run(*args: str) -> None:
        proc = subprocess.run([CMAKE, *args], capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"cmake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"

    run("-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}",
        f"-DCMAKE_INSTALL_PREFIX={prefix}")
    run("--build", str(build))
    run("--install", str(build))

    modules = prefix / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    for rel in _cmake_set(FILES_CMAKE.read_text(), "MODULE_PYTHON_SCRIPTS") + _cmake_set(
        FILES_CMAKE.read_text(), "MODULE_PYTHON_RESOURCES"
    ):
        assert (modules / rel).is_file(), f"module file not installed: {rel}"
    installed_lib = {
        p.relative_to(modules / "polypsam").as_posix() for p in (modules / "polypsam").rglob("*.py")
    }
    assert installed_lib == _library_python_files()
    for rel in installed_lib:
        assert (modules / "polypsam" / rel).read_bytes() == (LIB_PACKAGE / rel).read_bytes()
    # Nothing of the library lands outside the package folder.
    stray = sorted(p.name for p in modules.iterdir() if p.name in _library_python_files())
    assert not stray, stray
