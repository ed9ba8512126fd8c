"""Resampling volumes onto new voxel grids, in physical space (SimpleITK underneath)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import SimpleITK as sitk

from ._compat import zip_strict
from .errors import VolumeError
from .io import from_sitk, to_sitk
from .volume import Volume

Interpolation = Literal["nearest", "linear", "bspline"]
_INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


def resample_to_spacing(
    volume: Volume,
    spacing_mm: Sequence[float],
    *,
    interpolation: Interpolation = "linear",
    default_value: float = 0.0,
) -> Volume:
    """Resample ``volume`` to voxels of ``spacing_mm`` (i, j, k order), covering the same extent.

    The new grid keeps the origin and direction; its size is chosen so that the physical
    extent (voxel centre to voxel centre) is covered. Masks should use ``"nearest"``.

    Examples
    --------
    >>> import numpy as np
    >>> vol = Volume(np.zeros((10, 10, 10), np.float32), spacing=(1.0, 1.0, 1.0))
    >>> resample_to_spacing(vol, (2.0, 2.0, 2.0)).shape_ijk
    (5, 5, 5)
    """
    spacing_mm = tuple(float(s) for s in spacing_mm)
    if len(spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_mm):
        raise VolumeError(f"target spacing must be 3 positive values in mm, got {spacing_mm}")
    old_size = np.array(volume.shape_ijk, dtype=float)
    extent = old_size * np.array(volume.spacing)
    size = [max(1, int(round(e / s))) for e, s in zip_strict(extent, spacing_mm)]
    reference = Volume(np.zeros(size[::-1], dtype=np.uint8), spacing_mm, volume.origin, volume.direction)
    return resample_to_grid(volume, reference, interpolation=interpolation, default_value=default_value)


def resample_to_grid(
    volume: Volume,
    reference: Volume,
    *,
    interpolation: Interpolation = "linear",
    default_value: float = 0.0,
) -> Volume:
    """Resample ``volume`` onto the voxel grid of ``reference`` (physical space is respected).

    Voxels of the new grid outside ``volume`` get ``default_value``.
    """
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {interpolation!r}")
    image = to_sitk(volume)
    ref = sitk.Image(list(reference.shape_ijk), sitk.sitkUInt8)
    ref.SetSpacing(reference.spacing)
    ref.SetOrigin(reference.origin)
    ref.SetDirection(tuple(reference.direction.ravel()))
    out_type = image.GetPixelID() if interpolation == "nearest" else sitk.sitkFloat32
    resampled = sitk.Resample(image, ref, sitk.Transform(), _INTERPOLATORS[interpolation], float(default_value), out_type)
    return from_sitk(resampled)
