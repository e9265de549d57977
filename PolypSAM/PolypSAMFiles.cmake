# Every file the PolypSAM module ships, in one place.
#
# Included by PolypSAM/CMakeLists.txt (inside a Slicer extension build) and, in CMake script mode,
# by Testing/test_packaging.py, so the lists checked by the tests are the ones the build uses.
# It needs nothing from Slicer.
#
#   MODULE_PYTHON_SCRIPTS          the module's own Python files (relative to PolypSAM/)
#   MODULE_PYTHON_RESOURCES        its UI file and icon (relative to PolypSAM/)
#   POLYPSAM_LIB_PACKAGE_DIR       PolypSAMLib/polypsam (absolute)
#   POLYPSAM_LIB_PYTHON_SCRIPTS    every .py of the library package, found by a recursive glob
#                                  (relative to POLYPSAM_LIB_PACKAGE_DIR, e.g. "engine.py",
#                                  "server/app.py"), installed as the package `polypsam` beside
#                                  PolypSAM.py: a new library file cannot be forgotten.
#   POLYPSAM_LIB_PYTHON_RESOURCES  package data of the library (.yaml, .json), same layout.

# Only PolypSAM.py: Slicer loads every .py in a module folder as a module, so the module's
# Qt-free helpers live in the library (polypsam.mrml, polypsam.engines).
set(MODULE_PYTHON_SCRIPTS
  PolypSAM.py
  )

set(MODULE_PYTHON_RESOURCES
  Resources/Icons/PolypSAM.png
  Resources/UI/PolypSAM.ui
  )

get_filename_component(POLYPSAM_LIB_PACKAGE_DIR
  "${CMAKE_CURRENT_LIST_DIR}/../PolypSAMLib/polypsam" ABSOLUTE)
if(NOT EXISTS "${POLYPSAM_LIB_PACKAGE_DIR}/__init__.py")
  message(FATAL_ERROR "PolypSAM: library package not found at ${POLYPSAM_LIB_PACKAGE_DIR}")
endif()

set(_polypsam_glob_options LIST_DIRECTORIES false RELATIVE "${POLYPSAM_LIB_PACKAGE_DIR}")
if(NOT CMAKE_SCRIPT_MODE_FILE)
  # Re-run the glob at build time so that a library file added later is picked up.
  list(APPEND _polypsam_glob_options CONFIGURE_DEPENDS)
endif()

file(GLOB_RECURSE POLYPSAM_LIB_PYTHON_SCRIPTS ${_polypsam_glob_options}
  "${POLYPSAM_LIB_PACKAGE_DIR}/*.py")
file(GLOB_RECURSE POLYPSAM_LIB_PYTHON_RESOURCES ${_polypsam_glob_options}
  "${POLYPSAM_LIB_PACKAGE_DIR}/*.yaml"
  "${POLYPSAM_LIB_PACKAGE_DIR}/*.json")
# Never ship byte code or editor leftovers that happen to sit in the source tree.
list(FILTER POLYPSAM_LIB_PYTHON_SCRIPTS EXCLUDE REGEX "(^|/)__pycache__/")
list(FILTER POLYPSAM_LIB_PYTHON_RESOURCES EXCLUDE REGEX "(^|/)__pycache__/")
list(SORT POLYPSAM_LIB_PYTHON_SCRIPTS)
list(SORT POLYPSAM_LIB_PYTHON_RESOURCES)
unset(_polypsam_glob_options)
