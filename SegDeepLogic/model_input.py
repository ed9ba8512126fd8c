"""Put a CT on a model's grid: the one preparation shared by training and inference (torch-free).

A network sees a CT reoriented to its card's ``orientation``, resampled to its ``spacing_ijk_mm``
and normalised with its ``intensity``; training must prepare its cases exactly as inference does,
or the network learns one input and meets another. Everything here is the single definition of
that preparation, used by :func:`SegDeepLogic.segment.segment_volume` and
:func:`SegDeepLogic.training.data.prepare_case`:

* :func:`SegDeepLogic.grid.model_grid` -- the grid: the card's orientation (an exact permutation and
  flip of the CT's axes) at the card's spacing, the same extent, centred on the CT;
* :func:`antialias_sigma_mm` -- Gaussian smoothing before downsampling, per CT axis half the spacing
  increase (none when every increase is small), so thin bone is averaged rather than aliased;
* :func:`resample_to_model_grid` -- linear interpolation onto that grid (edge values continue past
  the CT's outermost voxel centres), as one separable matrix product per axis;
* :class:`IntensityNormalization` -- ``(clip(HU, lo, hi) - subtract) / divide`` and the value of air
  outside the CT.

The grid and the normalisation are those the bundled model was used with at inference since it
shipped; training data preparation used a grid anchored at the CT's first voxel (up to half a
model voxel away) before, and now uses this one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._compat import zip_strict
from .errors import SegDeepError
from .grid import Grid, axis_maps, model_grid, orientation_code, reorient_grid
from .volume import Volume

__all__ = [
    "AIR_HU",
    "IntensityNormalization",
    "antialias_sigma_mm",
    "interpolation_weights",
    "prepare_ct",
    "resample_to_model_grid",
]

AIR_HU = -1024.0
"""Hounsfield units of air: the value of the model grid outside the CT."""


@dataclasses.dataclass(frozen=True)
class IntensityNormalization:
    """The network input of a CT: ``(clip(HU, clip_lo, clip_hi) - subtract) / divide``.

    Examples
    --------
    >>> norm = IntensityNormalization(-1000.0, 2000.0, 0.0, 1000.0)
    >>> norm.apply(np.array([-2000.0, 0.0, 500.0, 3000.0])).tolist(), norm.fill_value
    ([-1.0, 0.0, 0.5, 2.0], -1.0)
    """

    clip_lo: float
    clip_hi: float
    subtract: float = 0.0
    divide: float = 1.0

    def __post_init__(self) -> None:
        values = (self.clip_lo, self.clip_hi, self.subtract, self.divide)
        if not all(math.isfinite(float(v)) for v in values) or float(self.divide) == 0 or self.clip_lo >= self.clip_hi:
            raise SegDeepError(
                f"invalid intensity normalisation (clip {self.clip_lo}..{self.clip_hi}, subtract {self.subtract}, divide "
                f"{self.divide}): the clip range must be increasing and every value finite, divide not 0"
            )

    @classmethod
    def from_card(cls, card: Any) -> IntensityNormalization:
        """From a model card (:class:`~SegDeepLogic.model_card.ModelCard` or its dict) or its ``intensity`` mapping."""
        if isinstance(card, Mapping):
            intensity = card.get("intensity", card) if "clip_hu" not in card else card
        else:
            intensity = getattr(card, "intensity", None) or {}
        lo, hi = (float(v) for v in intensity.get("clip_hu", (-1024.0, 3071.0)))
        return cls(lo, hi, float(intensity.get("subtract", 0.0)), float(intensity.get("divide", 1.0)))

    @property
    def fill_value(self) -> float:
        """The network input of air (:data:`AIR_HU`, clipped): what lies outside the CT."""
        return (max(AIR_HU, self.clip_lo) - self.subtract) / self.divide

    def apply(self, hu: Any, *, out: np.ndarray | None = None) -> Any:
        """Normalised float32 of a NumPy array (``out``: a float32 array to fill, may be ``hu`` itself) or a torch tensor."""
        if type(hu).__module__.startswith("torch"):
            return (hu.float().clamp(self.clip_lo, self.clip_hi) - self.subtract) / self.divide
        if out is None:
            out = np.empty(np.shape(hu), np.float32)
        np.clip(hu, self.clip_lo, self.clip_hi, out=out)
        out -= np.float32(self.subtract)
        out /= np.float32(self.divide)
        return out


def antialias_sigma_mm(ct: Grid | Volume, grid: Grid, *, antialias: bool = True) -> list[float]:
    """Gaussian sigma (mm) per CT axis before resampling onto ``grid``: half of each spacing increase.

    Zero everywhere when ``antialias`` is False or no axis's sigma exceeds a quarter of the CT's
    finest spacing (smoothing would change nothing that matters).

    Examples
    --------
    >>> ct = Grid((512, 512, 100), (0.5, 0.5, 3.0), (0.0, 0.0, 0.0), np.eye(3))
    >>> antialias_sigma_mm(ct, model_grid(ct, "LPS", (2.0, 2.0, 3.0)))
    [0.75, 0.75, 0.0]
    """
    ct_grid = ct if isinstance(ct, Grid) else Grid.of(ct)
    _oriented, perm, _flips = reorient_grid(ct_grid, orientation_code(grid.direction))
    sigma = [0.0, 0.0, 0.0]
    for t in range(3):
        sigma[perm[t]] = max(0.0, (grid.spacing[t] - ct_grid.spacing[perm[t]]) / 2.0)
    if not (antialias and max(sigma) > 0.25 * min(ct_grid.spacing)):
        return [0.0, 0.0, 0.0]
    return sigma


def interpolation_weights(n: int, positions: np.ndarray, sigma_voxels: float = 0.0) -> np.ndarray:
    """Matrix ``W`` (n, len(positions)), float32, such that ``signal @ W`` samples a 1D signal of length ``n``.

    Linear interpolation at the fractional ``positions`` (clamped to the ends: the edge value
    continues outside), after an optional Gaussian smoothing of ``sigma_voxels`` (truncated at
    4 sigma, edge values repeated). Applying one such matrix per axis is trilinear resampling
    (with anti-aliasing) between parallel grids; as a matrix product it runs at BLAS speed.

    Examples
    --------
    >>> w = interpolation_weights(3, np.array([0.0, 0.5, 2.0, 7.0]))
    >>> (np.array([10.0, 20.0, 40.0], np.float32) @ w).tolist()
    [10.0, 15.0, 40.0, 40.0]
    """
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, n - 1)
    lower = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    upper = np.minimum(lower + 1, n - 1)
    frac = pos - lower
    columns = np.arange(pos.size)
    w = np.zeros((n, pos.size), dtype=np.float64)
    np.add.at(w, (lower, columns), 1.0 - frac)
    np.add.at(w, (upper, columns), frac)
    radius = int(math.ceil(4.0 * sigma_voxels)) if sigma_voxels > 0 else 0
    if radius:
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_voxels) ** 2)
        taps /= taps.sum()
        smooth = np.zeros((n, n))  # smooth[q, p]: weight of input q in the smoothed value at p
        for offset, tap in zip_strict(range(-radius, radius + 1), taps):
            np.add.at(smooth, (np.clip(np.arange(n) + offset, 0, n - 1), np.arange(n)), tap)
        w = smooth @ w
    return w.astype(np.float32)


def _along(x: np.ndarray, axis: int, w: np.ndarray) -> np.ndarray:
    """Apply a 1D resampling matrix along ``axis`` of a 3D array, as BLAS matrix products without copies."""
    n, m = w.shape
    if axis == 2:
        return (x.reshape(-1, n) @ w).reshape(x.shape[0], x.shape[1], m)
    if axis == 0:
        return (w.T @ x.reshape(n, -1)).reshape(m, x.shape[1], x.shape[2])
    wt = np.ascontiguousarray(w.T)
    out = np.empty((x.shape[0], m, x.shape[2]), np.float32)
    for k in range(x.shape[0]):  # axis 1: one BLAS product per slice
        np.matmul(wt, x[k], out=out[k])
    return out


def resample_to_model_grid(
    volume: Volume, grid: Grid, sigma_mm: Sequence[float] = (0.0, 0.0, 0.0), *, chunk: int = 16
) -> np.ndarray:
    """``volume`` (smoothed by ``sigma_mm`` per CT axis first) linearly interpolated onto ``grid``; float32 ``[k, j, i]``.

    ``grid`` must have axes parallel to the volume's (as :func:`~SegDeepLogic.grid.model_grid`
    makes them); outside the volume the edge value continues.

    Raises
    ------
    SegDeepError
        The grids' axes are not parallel (an oblique direction matrix that is not orthonormal).
    """
    maps = axis_maps(Grid.of(volume), grid)
    if maps is None:
        raise SegDeepError("the model grid's axes are not parallel to the volume's (is its direction matrix orthonormal?)")
    weights = {}
    for t, (c, a, b) in enumerate(maps):
        positions = a * np.arange(grid.size_ijk[t]) + b
        weights[c] = interpolation_weights(volume.shape_ijk[c], positions, float(sigma_mm[c]) / volume.spacing[c])
    order = [2 - maps[2 - p][0] for p in range(3)]  # model array axis p is model axis 2 - p
    torch = sys.modules.get("torch")  # the same products, several times faster, once torch is loaded
    if torch is not None:
        return _resample_torch(torch, volume.array, weights, order, chunk)
    # In-plane axes slab by slab (no full-size float copy of the volume), then along the slices.
    slabs = []
    for k0 in range(0, volume.array.shape[0], chunk):
        x = np.ascontiguousarray(volume.array[k0 : k0 + chunk], dtype=np.float32)
        slabs.append(_along(_along(x, 2, weights[0]), 1, weights[1]))
    out = _along(np.concatenate(slabs, axis=0), 0, weights[2])
    return np.ascontiguousarray(out.transpose(order))


def _resample_torch(torch: Any, array: np.ndarray, weights: dict[int, np.ndarray], order: list[int], chunk: int) -> np.ndarray:
    w = {c: torch.from_numpy(v) for c, v in weights.items()}

    def along(x: Any, dim: int, m: Any) -> Any:
        return x @ m if dim == 2 else (x.movedim(dim, -1) @ m).movedim(-1, dim)

    with torch.inference_mode():
        slabs = []
        for k0 in range(0, array.shape[0], chunk):
            x = torch.from_numpy(np.ascontiguousarray(array[k0 : k0 + chunk], dtype=np.float32))
            slabs.append(along(along(x, 2, w[0]), 1, w[1]))
        out = along(torch.cat(slabs, dim=0), 0, w[2])
        return np.ascontiguousarray(out.permute(order).numpy())


def prepare_ct(
    ct: Volume, orientation: str, spacing_ijk_mm: Sequence[float], *, antialias: bool = True
) -> tuple[Grid, np.ndarray]:
    """The model grid of ``ct`` and the CT on it, in HU (float32 ``[k, j, i]``), before normalisation.

    The preparation of :func:`SegDeepLogic.segment.segment_volume` and of training cases alike.
    """
    grid = model_grid(ct, orientation, spacing_ijk_mm)
    return grid, resample_to_model_grid(ct, grid, antialias_sigma_mm(ct, grid, antialias=antialias))
