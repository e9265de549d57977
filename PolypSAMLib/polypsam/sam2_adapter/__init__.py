"""SAM2 in this process: Meta's ``sam2`` model code behind PolypSAM's engine protocol.

The only package (with :mod:`polypsam.checkpoints`) that imports torch and sam2, grouped by role
as sam2 groups its own ``modeling/``:

* :mod:`.model` builds a SAM2 model from a config and an official-layout checkpoint, and picks the
  device;
* :mod:`.image` is the 2-D path (image encoder → prompt encoder → mask decoder), equal to Meta's
  ``SAM2ImagePredictor`` without torchvision;
* :mod:`.video` is the streaming video path around Meta's ``SAM2VideoPredictor`` (frames from
  memory, memory that does not grow with the sequence);
* :mod:`.engine` is :class:`~.engine.SAM2Engine`, the in-process implementation of
  :class:`polypsam.engine.Engine`.

Importing this package imports nothing heavy; torch and sam2 load with the submodules.
"""
