"""SegDeep engine: CT volumes with geometry, threshold and U-Net segmentation, comparison
metrics and printable meshes. Pure Python; never imports Slicer or Qt.

Coordinates: arrays are indexed [k, j, i]; spacing/origin/direction follow ITK (i, j, k order,
LPS millimetres). See :mod:`SegDeepLogic.volume`.

Importing the package is light (NumPy only): ``read_volume``/``write_volume`` load SimpleITK on first
use, so the 3D Slicer panel, which imports the package at start-up, does not.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CancelledError,
    GeometryMismatchError,
    MeshError,
    MismatchError,
    SegDeepError,
    VolumeError,
    VolumeReadError,
)
from .volume import Volume

__version__ = "0.1.0"

__all__ = [
    "CancelledError",
    "GeometryMismatchError",
    "MeshError",
    "MismatchError",
    "SegDeepError",
    "Volume",
    "VolumeError",
    "VolumeReadError",
    "read_volume",
    "write_volume",
]


def __getattr__(name: str) -> Any:
    """``read_volume`` and ``write_volume`` from :mod:`SegDeepLogic.io`, imported on first use (PEP 562)."""
    if name in ("read_volume", "write_volume"):
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
