"""PolypSAM: box-prompted SAM2 segmentation of endoscopy frames, CT volumes and sequences.

The library has no Qt dependency; only :mod:`polypsam.mrml` imports ``slicer``.
"""

__version__ = "0.1.0"
