"""SegDeep engine: CT volumes with geometry, threshold and U-Net segmentation, comparison
metrics and printable meshes. Pure Python; never imports Slicer or Qt.

Coordinates: arrays are indexed [k, j, i]; spacing/origin/direction follow ITK (i, j, k order,
LPS millimetres). See :mod:`SegDeepLogic.volume`.
"""

from .errors import (
    CancelledError,
    GeometryMismatchError,
    MeshError,
    MismatchError,
    SegDeepError,
    VolumeError,
    VolumeReadError,
)
from .io import read_volume, write_volume
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
