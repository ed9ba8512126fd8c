"""Run the network only around the body: a box on the model grid from the CT's body outline.

A CT with a large field of view is mostly air around the patient; the sliding window spends
most of its time there, predicting background. :func:`find_body_crop` finds the box (on the
model grid, with a safety margin) around the largest connected piece of voxels above
:data:`BODY_HU`, grown to at least one window; the network runs on that box only, and
:meth:`BodyCrop.paste` puts its output back into a whole-grid map that is certain background
(probability 1, entropy 0) outside the box. Structures lie inside the body, so nothing the
network would segment is lost; the windows are placed over the box instead of the whole grid,
so the probabilities inside differ from a whole-grid run by window placement only (measured on
the 33 OpenKBP validation CTs: docs/speed_accuracy/).

When no voxel is above the threshold (an all-air image, or an image that is not CT), or the
box is the whole grid, the network runs on the whole grid as before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ._compat import zip_strict

__all__ = ["BODY_HU", "BODY_MARGIN_MM", "BODY_MIN_SLICE_VOXELS", "BodyCrop", "find_body_crop", "region_on_ct"]

BODY_HU = -500.0
"""Voxels above this (HU) are body (soft tissue, bone, and the couch, which is not kept: only the
largest connected piece is). Lung and air are below."""

BODY_MARGIN_MM = 10.0
"""Safety margin (mm) added around the body's box on every side."""

BODY_MIN_SLICE_VOXELS = 10
"""Along the head-feet axis, a slice with at least this many voxels above :data:`BODY_HU` is in the box."""


@dataclasses.dataclass(frozen=True)
class BodyCrop:
    """The box of the model grid the network runs on.

    Attributes
    ----------
    box : tuple of 3 slices or None
        (k, j, i) slices of the model array; None: the whole grid.
    grid_shape : tuple of 3 int
        The model array's shape (k, j, i).
    reason : str
        Why the box is what it is (for the result's parameters).
    threshold_hu, margin_mm : float
        The settings used.
    """

    box: tuple[slice, slice, slice] | None
    grid_shape: tuple[int, int, int]
    reason: str
    threshold_hu: float = BODY_HU
    margin_mm: float = BODY_MARGIN_MM

    @property
    def fraction(self) -> float:
        """Fraction of the model grid's voxels inside the box."""
        if self.box is None:
            return 1.0
        return float(np.prod([s.stop - s.start for s in self.box]) / np.prod(self.grid_shape))

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The part of a model-grid array (k, j, i) the network runs on."""
        return array if self.box is None else np.ascontiguousarray(array[self.box])

    def paste(self, maps: torch.Tensor, background: int = 0) -> torch.Tensor:
        """Whole-grid maps (C, k, j, i) from the box's: outside, channel ``background`` is 1, others 0.

        Examples
        --------
        >>> crop = BodyCrop((slice(1, 2), slice(0, 2), slice(0, 1)), (3, 2, 2), "test")
        >>> full = crop.paste(torch.full((2, 1, 2, 1), 0.5))
        >>> full.shape, float(full[0].sum()), float(full[1].sum())
        (torch.Size([2, 3, 2, 2]), 11.0, 1.0)
        """
        if self.box is None:
            return maps
        full = torch.zeros((maps.shape[0], *self.grid_shape), dtype=maps.dtype, device=maps.device)
        full[background] = 1.0
        full[(slice(None), *self.box)] = maps
        return full

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record: settings, box (``[start, stop]`` per k, j, i) and the fraction of the grid."""
        return {
            "threshold_hu": self.threshold_hu,
            "margin_mm": self.margin_mm,
            "grid_kji": list(self.grid_shape),
            "box_kji": None if self.box is None else [[s.start, s.stop] for s in self.box],
            "fraction_of_grid": round(self.fraction, 4),
            "note": self.reason,
        }


def _grow_to(lo: int, hi: int, size: int, n: int) -> tuple[int, int]:
    """Widen [lo, hi) about its centre to at least ``size`` (at most ``n``), inside [0, n)."""
    size = min(size, n)
    if hi - lo >= size:
        return lo, hi
    start = max(0, min(n - size, (lo + hi - size) // 2))
    return start, start + size


def find_body_crop(
    array_hu: np.ndarray,
    spacing_kji: Sequence[float],
    patch_kji: Sequence[int],
    *,
    threshold_hu: float = BODY_HU,
    margin_mm: float = BODY_MARGIN_MM,
    axial_axis: int | None = None,
) -> BodyCrop:
    """Box around the body on the model grid, grown by ``margin_mm`` and to at least one window.

    Parameters
    ----------
    array_hu : ndarray (k, j, i)
        The CT on the model grid, in HU (before normalisation).
    spacing_kji : 3 floats
        The model grid's spacing (mm) in array order.
    patch_kji : 3 ints
        The network's window; the box is at least this large where the grid is.
    threshold_hu, margin_mm : float
        Body voxels are above ``threshold_hu``; the box around the largest connected piece of them
        is grown by ``margin_mm`` on every side (clipped to the grid).
    axial_axis : int, optional
        The array axis running head-feet. Along it the box spans every slice with at least
        :data:`BODY_MIN_SLICE_VOXELS` voxels above the threshold, connected to the largest piece or
        not: a scan whose soft tissue fades out at one end (a validation CT shows only the bony spine
        in its last 30 slices, where the spinal cord is contoured) keeps those slices.

    Returns
    -------
    BodyCrop
        ``box`` None when nothing is above the threshold or the box is the whole grid.

    Examples
    --------
    >>> a = np.full((40, 40, 40), -1000.0)
    >>> a[2:8, 30:36, 5:9] = 40.0
    >>> find_body_crop(a, (1.0, 1.0, 1.0), (8, 8, 8), margin_mm=2).box
    (slice(0, 10, None), slice(28, 38, None), slice(3, 11, None))
    """
    shape = tuple(int(n) for n in array_hu.shape)
    assert len(shape) == 3
    grid_shape = (shape[0], shape[1], shape[2])
    mask = array_hu > threshold_hu
    if not mask.any():
        return BodyCrop(None, grid_shape, f"no voxel above {threshold_hu:g} HU: whole grid", threshold_hu, margin_mm)
    slices = None
    if axial_axis is not None:
        per_slice = mask.sum(axis=tuple(a for a in range(3) if a != axial_axis))
        slices = np.nonzero(per_slice >= BODY_MIN_SLICE_VOXELS)[0]
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(np.argmax(sizes))
    del components
    box = []
    for axis in range(3):
        hits = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        if axis == axial_axis and slices is not None and slices.size:
            hits = np.union1d(hits, slices)
        grow = int(math.ceil(float(margin_mm) / float(spacing_kji[axis]) - 1e-9)) if margin_mm > 0 else 0
        lo, hi = max(0, int(hits[0]) - grow), min(shape[axis], int(hits[-1]) + 1 + grow)
        box.append(slice(*_grow_to(lo, hi, int(patch_kji[axis]), shape[axis])))
    if all(s.start == 0 and s.stop == n for s, n in zip_strict(box, shape)):
        return BodyCrop(None, grid_shape, "the body's box is the whole grid", threshold_hu, margin_mm)
    reason = "largest connected piece above the threshold"
    if axial_axis is not None:
        reason += f"; head-feet: every slice with >= {BODY_MIN_SLICE_VOXELS} voxels above it"
    return BodyCrop((box[0], box[1], box[2]), grid_shape, reason, threshold_hu, margin_mm)


def region_on_ct(
    box: Sequence[slice], back: Sequence[tuple[int, float, float]], ct_shape_kji: Sequence[int], grid_shape_kji: Sequence[int]
) -> tuple[slice, slice, slice] | None:
    """The CT voxels whose linear interpolation from the model grid reads inside ``box``.

    Every other CT voxel interpolates, along at least one axis, only model voxels outside the box,
    where the pasted maps are constant (certain background): it is background with entropy 0
    without interpolating anything.

    Parameters
    ----------
    box : 3 slices
        The network's box on the model array (k, j, i).
    back : 3 (model axis, a, b)
        Per CT axis i, j, k: the model axis it runs along and the index map ``model = a * ct + b``
        (:func:`~SegDeepLogic.segment.axis_maps` from the model grid to the CT's).
    ct_shape_kji, grid_shape_kji : 3 ints
        Array shapes of the CT and the model grid.

    Returns
    -------
    tuple of 3 slices (k, j, i) or None when the region is the whole CT or empty.

    Examples
    --------
    >>> region_on_ct((slice(0, 4), slice(2, 4), slice(0, 8)), [(0, 0.5, 0.0), (1, 0.5, 0.0), (2, 0.5, 0.0)], (16, 16, 16), (8, 8, 8))
    (slice(0, 8, None), slice(2, 8, None), slice(0, 16, None))
    """
    region = []
    for t in range(3):  # CT axis i, j, k
        c, a, b = back[t]
        n, m = int(ct_shape_kji[2 - t]), int(grid_shape_kji[2 - c])
        pos = np.clip(a * np.arange(n) + b, 0.0, m - 1)
        lower = np.minimum(np.floor(pos).astype(np.int64), m - 1)
        upper = np.minimum(lower + 1, m - 1)
        s = box[2 - c]
        reads = ((lower >= s.start) & (lower < s.stop)) | ((upper >= s.start) & (upper < s.stop))
        hits = np.nonzero(reads)[0]
        if hits.size == 0:
            return None
        region.append(slice(int(hits[0]), int(hits[-1]) + 1))
    out = (region[2], region[1], region[0])
    if all(r.start == 0 and r.stop == n for r, n in zip_strict(out, ct_shape_kji)):
        return None
    return out
