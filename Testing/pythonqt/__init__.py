"""PythonQt-rules Qt harness: a Slicer module's widget on real Qt widgets, without Slicer.

WHAT IT CANNOT SHOW. This is PyQt5 on the offscreen platform dressed in PythonQt's rules, not
Slicer. It cannot show:

* the real signal timing of Slicer's widgets: qMRMLNodeComboBox, ctkCollapsibleButton and
  ctkMessageBox are stand-ins written from Slicer's and CTK's headers and sources (v5.10.0), so
  the order and number of their signals follow those sources only as far as the stand-ins do
  (a flat list instead of qMRMLSceneModel's tree, no lazy updates);
* VTK objects through signals: PythonQt converts a ``vtkMRMLNode*`` argument with CTK's VTK
  support; here the stand-ins pass the Python object as it is;
* modal loops: ``exec_()`` and the static dialogs return the answer a test queued
  (:mod:`dialogs`); nothing the user could do while a dialog is open runs;
* the Segment Editor: ``slicer.modules.SegmentEditorWidget`` does not exist, so its undo
  snapshot and masking hooks are never called;
* slice-view interaction: there are no views; :class:`harness.SliceViews` makes the MRML changes
  the markups widgets make on a click (a point defined in place mode), not the mouse handling,
  picking or rendering;
* anything of Slicer's C++ application beyond the stand-ins in :mod:`application`
  (layout manager, module reload, Python console, DICOM database, extensions).

What it does show: the module's Python running against real Qt widgets loaded from its .ui,
with PythonQt's attribute, connection and error rules (:mod:`wrapping`, each rule cited from
PythonQt's source), Slicer's own ``slicer.util``, ``ScriptedLoadableModule`` and
``parameterNodeWrapper`` from a Slicer source tree, on a real slicer-core MRML scene.

Modules: :mod:`wrapping` (PythonQt's rules), :mod:`signals` (connections and slot calls),
:mod:`qtmodule` (the ``qt``/``ctk``/``PythonQt`` modules and ``QUiLoader``), :mod:`mrmlwidgets`,
:mod:`nodefilter` and :mod:`ctkwidgets` (stand-ins), :mod:`dialogs` (scripted answers),
:mod:`application` (``slicer.app``, main window, module loading), :mod:`harness`
(:func:`harness.boot`), :mod:`session` (what a scenario works with), :mod:`worker` and
:mod:`client` (the harness process and the pytest side). Usage:
``Testing/test_widget_qt.py`` and docs/development.md.
"""
