"""Errors PolypSAM raises for bad input or a missing/broken model.

Every error a user can cause derives from :class:`PolypSAMError`; the CLI prints its message as
one line and exits non-zero, the Slicer module shows it in a dialog. Messages name the problem.
"""

from __future__ import annotations


class PolypSAMError(Exception):
    """Base class of all user-facing PolypSAM errors."""


class InvalidInputError(PolypSAMError, ValueError):
    """An image, volume, box or option is not acceptable."""


class CheckpointError(PolypSAMError):
    """A checkpoint is missing, corrupt, fails its SHA256 check or does not fit its config."""


class DeviceError(PolypSAMError):
    """The requested compute device does not exist or is not available."""


class CancelledError(PolypSAMError):
    """The caller cancelled a long-running operation."""


class ServerError(PolypSAMError):
    """The PolypSAM server cannot be reached, refused the request or stopped while working."""
