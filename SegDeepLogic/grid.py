"""Voxel grids and orientation: the torch-free geometry of putting a CT on a model's grid.

A :class:`Grid` is a voxel grid without voxels (size, spacing, LPS origin and direction).
:func:`orientation_code` names where a direction matrix's axes point (DICOM letters, e.g.
``"LPS"``); :func:`reorient_grid` / :func:`reorient_volume` permute and flip axes exactly (no
interpolation) to a given code; :func:`model_grid` is the grid a network sees (the card's
orientation and spacing, same extent, centred on the CT); :func:`axis_maps` says when two grids'
axes are parallel, so resampling between them is separable.

Used by the segmentation pipeline, training data preparation and the report alike; imports
neither torch nor SimpleITK.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._compat import zip_strict
from .errors import VolumeError
from .volume import Volume

__all__ = [
    "AxisMap",
    "Grid",
    "axis_maps",
    "model_grid",
    "orientation_code",
    "reorient_grid",
    "reorient_volume",
]


# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Grid:
    """A voxel grid without voxels: size, spacing (i, j, k), LPS origin and direction."""

    size_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(volume.shape_ijk, volume.spacing, volume.origin, volume.direction)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(self.size_ijk[::-1])  # type: ignore[return-value]

    def index_to_physical(self, ijk: Sequence[float]) -> np.ndarray:
        return np.asarray(self.origin) + self.direction @ (np.asarray(self.spacing) * np.asarray(ijk, dtype=float))

    def volume(self, array: np.ndarray) -> Volume:
        return Volume(array, self.spacing, self.origin, self.direction)

    def as_dict(self) -> dict[str, Any]:
        return {
            "size_ijk": list(self.size_ijk),
            "spacing_mm": [round(s, 6) for s in self.spacing],
            "origin_lps_mm": [round(o, 6) for o in self.origin],
            "direction_lps": np.round(self.direction, 6).tolist(),
        }


_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def _parse_orientation(code: str) -> list[tuple[int, int]]:
    code = str(code).strip().upper()
    axes = [_LETTERS.get(c) for c in code]
    if len(code) != 3 or None in axes or sorted(a for a, _ in axes) != [0, 1, 2]:  # type: ignore[misc]
        raise VolumeError(
            f"orientation must be 3 letters naming each of L/R, P/A, S/I once (DICOM convention, e.g. 'LPS'), got {code!r}"
        )
    return axes  # type: ignore[return-value]


def orientation_code(direction: np.ndarray) -> str:
    """DICOM orientation code of a direction matrix: the LPS direction each axis points to.

    Examples
    --------
    >>> orientation_code(np.diag([1.0, 1.0, -1.0]))
    'LPI'
    >>> orientation_code(np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]]))
    'ASL'
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    names = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}
    perm = _best_permutation(d, [0, 1, 2])
    return "".join(names[(perm.index(n), int(np.sign(d[perm.index(n), n]) or 1))] for n in range(3))


def _best_permutation(d: np.ndarray, world_axes: list[int]) -> tuple[int, ...]:
    # perm[t] = the CT axis that best matches world axis world_axes[t] (max total |cosine|).
    return max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[world_axes[t], p[t]]) for t in range(3)))


def _axis_map(direction: np.ndarray, code: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    target = _parse_orientation(code)
    d = np.asarray(direction, dtype=float)
    perm = _best_permutation(d, [axis for axis, _ in target])
    flips = tuple(bool(np.sign(d[target[t][0], perm[t]]) != target[t][1]) for t in range(3))
    return perm, flips


def reorient_grid(grid: Grid | Volume, code: str) -> tuple[Grid, tuple[int, ...], tuple[bool, ...]]:
    """The grid of ``grid`` with its axes permuted/flipped to point as ``code`` says.

    An exact relabelling of the same voxel centres (no interpolation), like SimpleITK's
    ``DICOMOrient``. For an oblique CT the closest axes are chosen.

    Returns
    -------
    grid : Grid
    perm : tuple
        ``perm[t]`` is the input axis (i=0, j=1, k=2) that becomes axis ``t``.
    flips : tuple of bool
        Whether axis ``t`` runs opposite to that input axis.
    """
    if isinstance(grid, Volume):
        grid = Grid.of(grid)
    perm, flips = _axis_map(grid.direction, code)
    size = tuple(grid.size_ijk[p] for p in perm)
    spacing = tuple(grid.spacing[p] for p in perm)
    direction = np.stack([grid.direction[:, p] * (-1.0 if f else 1.0) for p, f in zip_strict(perm, flips)], axis=1)
    first = [0, 0, 0]
    for p, f in zip_strict(perm, flips):
        first[p] = grid.size_ijk[p] - 1 if f else 0
    origin = tuple(float(x) for x in grid.index_to_physical(first))
    return Grid(size, spacing, origin, direction), perm, flips  # type: ignore[arg-type]


def reorient_volume(volume: Volume, code: str) -> Volume:
    """``volume`` with its array axes permuted/flipped to the orientation ``code`` (exact).

    Examples
    --------
    >>> vol = Volume(np.arange(24).reshape(2, 3, 4), spacing=(1, 2, 3), direction=np.diag([1, 1, -1]))
    >>> lps = reorient_volume(vol, "LPS")
    >>> lps.direction.diagonal().tolist(), lps.array[:, 0, 0].tolist(), lps.origin
    ([1.0, 1.0, 1.0], [12, 0], (0.0, 0.0, -3.0))
    """
    grid, perm, flips = reorient_grid(volume, code)
    array = volume.array.transpose([2 - perm[2], 2 - perm[1], 2 - perm[0]])
    flip_axes = tuple(2 - t for t in range(3) if flips[t])
    if flip_axes:
        array = np.flip(array, axis=flip_axes)
    return grid.volume(np.ascontiguousarray(array))


def model_grid(grid: Grid | Volume, code: str, spacing_ijk: Sequence[float]) -> Grid:
    """The grid the network sees: ``code`` orientation, ``spacing_ijk`` voxels, same extent and centre.

    Examples
    --------
    >>> vol = Volume(np.zeros((30, 100, 100)), spacing=(1.0, 1.0, 2.0))
    >>> g = model_grid(vol, "LPS", (2.0, 2.0, 3.0))
    >>> g.size_ijk, g.origin
    ((50, 50, 20), (0.5, 0.5, 0.5))
    """
    oriented, _perm, _flips = reorient_grid(grid, code)
    spacing = np.asarray([float(s) for s in spacing_ijk])
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise VolumeError(f"model spacing must be 3 positive values in mm, got {spacing_ijk}")
    n = np.asarray(oriented.size_ijk, dtype=float)
    size = np.maximum(1, np.round(n * np.asarray(oriented.spacing) / spacing)).astype(int)
    centre = oriented.index_to_physical((n - 1) / 2)
    origin = centre - oriented.direction @ ((size - 1) / 2 * spacing)
    return Grid(
        tuple(int(s) for s in size), tuple(float(s) for s in spacing), tuple(float(o) for o in origin), oriented.direction
    )  # type: ignore[arg-type]


AxisMap = tuple[int, float, float]  # (source axis, a, b): source index = a * target index + b


def axis_maps(source: Grid, target: Grid, *, tol: float = 1e-5) -> list[AxisMap] | None:
    """Per target axis ``t``: the source axis it runs along and the affine index map.

    Returns None when the grids' axes are not parallel (then a general resampler is needed):
    when an index step along a target axis moves more than ``tol`` (relative) along another
    source axis -- 0.005 voxel over 512 voxels at the default.

    Examples
    --------
    >>> ct = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.diag([1.0, 1.0, -1.0]))
    >>> axis_maps(ct, reorient_grid(ct, "LPS")[0])
    [(0, 1.0, 0.0), (1, 1.0, 0.0), (2, -1.0, 3.0)]
    """
    m = np.diag(1.0 / np.asarray(source.spacing)) @ source.direction.T @ target.direction @ np.diag(target.spacing)
    offset = np.diag(1.0 / np.asarray(source.spacing)) @ source.direction.T @ (np.asarray(target.origin) - source.origin)
    maps = []
    for t in range(3):
        c = int(np.argmax(np.abs(m[:, t])))
        others = np.delete(m[:, t], c)
        if np.any(np.abs(others) > tol * abs(m[c, t])):
            return None
        maps.append((c, float(m[c, t]), float(offset[c])))
    return maps if sorted(c for c, _, _ in maps) == [0, 1, 2] else None
