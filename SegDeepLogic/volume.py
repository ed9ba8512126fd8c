"""A 3D image that carries its geometry: the :class:`Volume` value type.

Conventions (the same as SimpleITK, ITK and Slicer's ``arrayFromVolume``):

* ``array`` is indexed ``[k, j, i]`` (slice, row, column). Voxel index ``(i, j, k)`` is the
  ITK index order; ``array[k, j, i]`` is its value.
* ``spacing`` is ``(sx, sy, sz)`` in millimetres for the ``i, j, k`` axes (ITK order). Use
  :attr:`Volume.spacing_kji` for the array order that scipy/scikit-image functions expect.
* ``origin`` is the physical position, in **LPS millimetres**, of the centre of voxel (0, 0, 0).
* ``direction`` is a 3x3 matrix whose **columns** are the unit vectors of the i, j, k axes
  in LPS (ITK's direction cosines).

So the physical LPS point of index ``(i, j, k)`` is ``origin + direction @ (spacing * ijk)``.
RAS is LPS with the first two coordinates negated (Slicer works in RAS; files and ITK in LPS).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._compat import zip_strict
from .errors import GeometryMismatchError, VolumeError

Space = Literal["LPS", "RAS"]
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar image with its physical geometry.

    Parameters
    ----------
    array : ndarray, shape (nk, nj, ni)
        Voxel values indexed ``[k, j, i]``.
    spacing : sequence of 3 floats
        Voxel size in mm along i, j, k.
    origin : sequence of 3 floats, optional
        LPS position (mm) of the centre of voxel (0, 0, 0). Default (0, 0, 0).
    direction : (3, 3) array, optional
        Columns are the LPS unit vectors of the i, j, k axes. Default identity.

    Examples
    --------
    >>> import numpy as np
    >>> vol = Volume(np.zeros((4, 5, 6)), spacing=(0.5, 0.5, 2.0))
    >>> vol.shape_ijk
    (6, 5, 4)
    >>> vol.index_to_physical([1, 0, 2]).tolist()
    [0.5, 0.0, 4.0]
    >>> vol.index_to_physical([1, 0, 2], space="RAS").tolist()
    [-0.5, -0.0, 4.0]
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise VolumeError(f"expected a 3D volume, got an array with {array.ndim} dimension(s) {array.shape}")
        spacing = tuple(float(s) for s in np.ravel(self.spacing))
        origin = tuple(float(o) for o in np.ravel(self.origin))
        direction = np.array(self.direction, dtype=float).reshape(3, 3) if np.size(self.direction) == 9 else None
        if len(spacing) != 3:
            raise VolumeError(f"spacing must have 3 values (i, j, k), got {len(spacing)}")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise VolumeError(f"spacing must be finite and positive in every axis, got {spacing} mm")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise VolumeError(f"origin must be 3 finite values, got {origin}")
        if direction is None or not np.all(np.isfinite(direction)):
            raise VolumeError("direction must be a finite 3x3 matrix")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise VolumeError(f"direction must be orthonormal (a rotation or reflection), got {direction.tolist()}")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # --- shape and spacing in both orders -------------------------------------------------
    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (ITK ``GetSize()`` order)."""
        return tuple(int(n) for n in self.array.shape[::-1])  # type: ignore[return-value]

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Spacing in array order ``(sz, sy, sx)``, as scipy's ``sampling`` expects."""
        return self.spacing[::-1]  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    # --- affine matrices -----------------------------------------------------------------
    def affine(self, space: Space = "LPS") -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(i, j, k, 1)`` to physical mm in ``space``."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        if _check_space(space) == "RAS":
            m[:3, :] = _LPS_TO_RAS @ m[:3, :]
        return m

    def index_to_physical(self, ijk: npt.ArrayLike, space: Space = "LPS") -> np.ndarray:
        """Physical mm coordinates of (possibly fractional) voxel indices ``(i, j, k)``.

        Accepts one index of shape (3,) or many of shape (n, 3).
        """
        ijk = np.asarray(ijk, dtype=float)
        m = self.affine(space)
        return ijk @ m[:3, :3].T + m[:3, 3]

    def physical_to_index(self, points: npt.ArrayLike, space: Space = "LPS") -> np.ndarray:
        """Continuous voxel indices ``(i, j, k)`` of physical points given in ``space`` (mm)."""
        points = np.asarray(points, dtype=float)
        m = np.linalg.inv(self.affine(space))
        return points @ m[:3, :3].T + m[:3, 3]

    def bounds(self, space: Space = "LPS") -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned physical bounds (min, max) of the voxel **centres**, in mm."""
        n = np.array(self.shape_ijk) - 1
        corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], dtype=float)
        pts = self.index_to_physical(corners, space)
        return pts.min(axis=0), pts.max(axis=0)

    # --- derived volumes -----------------------------------------------------------------
    def with_array(self, array: np.ndarray) -> Volume:
        """A volume on the same grid holding ``array`` (same shape required)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise GeometryMismatchError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def crop(self, box: tuple[slice, ...]) -> Volume:
        """The part of the volume inside ``box`` (array-order (k, j, i) slices with steps of 1),
        with its own origin: the same physical positions, a smaller grid.

        Examples
        --------
        >>> v = Volume(np.zeros((4, 5, 6)), (1.0, 2.0, 3.0), (10.0, 0.0, 0.0), np.eye(3))
        >>> c = v.crop((slice(1, 3), slice(0, 5), slice(2, 6)))
        >>> c.array.shape, c.origin
        ((2, 5, 4), (12.0, 0.0, 3.0))
        """
        box = tuple(box)
        if len(box) != 3 or any(s.step not in (None, 1) for s in box):
            raise GeometryMismatchError(f"a crop box is 3 slices with step 1, got {box}")
        starts = [s.indices(n)[0] for s, n in zip_strict(box, self.array.shape)]
        return Volume(self.array[box], self.spacing, self.index_to_physical(starts[::-1]), self.direction)

    def same_grid(self, other: Volume, *, atol_mm: float = 1e-3) -> bool:
        """True if ``other`` has the same size, spacing, origin and direction."""
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=atol_mm)
            and np.allclose(self.origin, other.origin, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-5)
        )

    def require_same_grid(self, other: Volume, what: str = "the two images") -> None:
        """Raise :class:`GeometryMismatchError` with the differing property if the grids differ."""
        if self.array.shape != other.array.shape:
            raise GeometryMismatchError(f"{what} differ in size: {self.shape_ijk} vs {other.shape_ijk} voxels (i, j, k)")
        if not np.allclose(self.spacing, other.spacing, atol=1e-3):
            raise GeometryMismatchError(f"{what} differ in spacing: {self.spacing} vs {other.spacing} mm")
        if not np.allclose(self.origin, other.origin, atol=1e-3):
            raise GeometryMismatchError(f"{what} differ in origin: {self.origin} vs {other.origin} mm (LPS)")
        if not np.allclose(self.direction, other.direction, atol=1e-5):
            raise GeometryMismatchError(f"{what} differ in direction: {self.direction.tolist()} vs {other.direction.tolist()}")

    def geometry_dict(self) -> dict:
        """JSON-ready description of the grid (ITK order, LPS, millimetres)."""
        return {
            "size_ijk": list(self.shape_ijk),
            "spacing_mm": list(self.spacing),
            "origin_lps_mm": list(self.origin),
            "direction_lps": self.direction.round(6).tolist(),
            "coordinate_system": "LPS",
        }

    def __repr__(self) -> str:
        return (
            f"Volume(shape_ijk={self.shape_ijk}, dtype={self.array.dtype}, spacing={tuple(round(s, 4) for s in self.spacing)} mm, "
            f"origin={tuple(round(o, 3) for o in self.origin)} mm LPS)"
        )


def _check_space(space: str) -> str:
    if space not in ("LPS", "RAS"):
        raise ValueError(f"space must be 'LPS' or 'RAS', got {space!r}")
    return space


def lps_to_ras(points: npt.ArrayLike) -> np.ndarray:
    """Convert points between LPS and RAS (the map is its own inverse)."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])
