"""Exception types raised by the SegDeep engine.

Every error a user can trigger with bad input derives from :class:`SegDeepError`, so the CLI
and the Slicer module can show its message and exit cleanly instead of printing a traceback.
"""

from __future__ import annotations


class SegDeepError(Exception):
    """Base class of every error caused by the user's input or environment."""


class VolumeError(SegDeepError, ValueError):
    """The image is unusable: wrong dimensionality, empty, non-finite, bad spacing, ..."""


class VolumeReadError(SegDeepError, OSError):
    """The file or folder is missing or cannot be read as an image."""


class GeometryMismatchError(SegDeepError, ValueError):
    """Two images that must share a voxel grid do not (size, spacing, origin or direction)."""


class MeshError(SegDeepError, ValueError):
    """A surface could not be built or written (for example from an empty mask)."""


class CancelledError(SegDeepError):
    """The user cancelled a long-running operation; nothing was written."""


class MismatchError(SegDeepError):
    """The out-of-distribution check said "mismatch" (the CT is not the anatomy the model was
    trained on), so the result was withheld. ``result`` holds the run's verdict, findings and
    what was withheld (``result.withheld``); nothing was written or added."""

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class OutputError(SegDeepError, ValueError):
    """An output path cannot be written safely: it exists (without overwrite), is a folder or a
    special file (FIFO, device), names an input or another output, or its folder is not writable.
    Raised before any work is done."""


class WriteError(SegDeepError, OSError):
    """A file could not be written completely (disk full, file size limit, a writer that failed
    silently); nothing was put under the final name."""


class ImageSizeError(VolumeReadError):
    """An image header declares more voxels than the configured limit (``SEGDEEP_MAX_VOXELS``)."""


class ModelPackageError(SegDeepError, ValueError):
    """A model package is missing, unreadable, inconsistent or unsafe to load."""
