"""PythonQt-rules Qt harness: PolypSAM's widget on real Qt widgets (PyQt5), see harness.py."""
