"""The PolypSAM server (``polypsam serve``) and its standard-library client (:mod:`.client`).

:mod:`.wire` and :mod:`.client` need only the standard library and NumPy (they run in Slicer
without torch or sam2); :mod:`.app`, :mod:`.sessions` and :mod:`.worker` run on the server.
"""
