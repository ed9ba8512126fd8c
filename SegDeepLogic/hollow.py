"""Hollowing a segment for printing: a wall of given thickness in mm, optional drain holes.

The hollowing is done on a voxel grid *before* meshing, so the result is watertight and
manifold by construction (the same flying-edges surface as every other mask):

1. the mask is brought onto an isotropic grid of ``voxel_mm`` (by default a quarter of the wall,
   at most the mask's finest spacing) by trilinear interpolation of its signed distance field,
   which keeps the shape smooth instead of repeating the CT's staircase;
2. the exact Euclidean distance (mm) of every inside voxel to the outside is computed; voxels
   deeper than the wall (distance > ``wall_mm`` + half a voxel, the surface lying half a voxel
   outside the boundary voxels' centres) form the cavity;
3. drain holes are cylinders of the given diameter drilled from the cavity's lowest point (along
   ``down``, inferior by default) or from given points, straight through the wall;
4. the wall (solid minus cavity minus holes) is the new mask.

The wall thickness is then *measured* on the meshed result (:func:`SegDeepLogic.mesh_report.wall_thickness_mm`)
and the saved volume reported (:func:`SegDeepLogic.print_prep.prepare_segment`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .errors import MeshError
from .mesh import DEFAULT_SMOOTHING_FACTOR, Mesh, mask_to_mesh
from .mesh_report import surface_deviation_mm
from .progress import CancelToken, ProgressCallback, report
from .volume import Volume

__all__ = ["DrainHole", "HollowResult", "hollow_mask", "refine_mask"]

MAX_VOXELS = 80_000_000  # about 1 GB of working arrays; the grid is coarsened (with a warning) above this


@dataclasses.dataclass(frozen=True)
class DrainHole:
    """A drilled drain hole: where it enters the cavity, its direction out, its diameter (LPS mm)."""

    cavity_point_mm: tuple[float, float, float]
    direction: tuple[float, float, float]
    diameter_mm: float

    def to_dict(self) -> dict:
        return {
            "cavity_point_mm": list(self.cavity_point_mm),
            "direction": list(self.direction),
            "diameter_mm": self.diameter_mm,
            "space": "LPS",
        }


@dataclasses.dataclass(frozen=True)
class HollowResult:
    """The hollowed mask and what was done. Masks are on the same isotropic grid."""

    wall: Volume  # the printed material: solid minus cavity minus drain holes
    solid: Volume  # the unhollowed part on the same grid (for the saved volume)
    cavity: Volume  # the removed inside (before drilling)
    solid_surface: Mesh  # the smoothed outer surface the wall is measured from (LPS)
    wall_mm: float
    voxel_mm: float
    cavity_voxel_count: int
    drain_holes: tuple[DrainHole, ...]


def refine_mask(mask: Volume, voxel_mm: float) -> Volume:
    """``mask`` on an isotropic grid of ``voxel_mm`` covering its bounding box (plus a margin).

    The signed distance field of the mask (mm, negative inside, zero half-way between inside
    and outside voxel centres) is interpolated trilinearly onto the finer grid and thresholded
    at zero, so a coarse CT mask becomes a smooth fine one. A mask already isotropic at
    ``voxel_mm`` is only cropped (same voxels).

    Examples
    --------
    >>> array = np.zeros((8, 8, 8), bool)
    >>> array[2:6, 2:6, 2:6] = True
    >>> fine = refine_mask(Volume(array, spacing=(2, 2, 2)), 1.0)
    >>> fine.spacing, int(fine.array.sum())  # the 8 mm cube in 1 mm voxels, its 8 corner voxels rounded off
    ((1.0, 1.0, 1.0), 504)
    """
    array = mask.array != 0
    if not array.any():
        raise MeshError("the mask is empty: there is nothing to hollow")
    h = float(voxel_mm)
    if not np.isfinite(h) or h <= 0:
        raise MeshError(f"the voxel size must be > 0 mm, got {voxel_mm}")
    k, j, i = (np.flatnonzero(array.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    lo = np.array([i[0], j[0], k[0]]) - 2  # ijk, with a two-voxel margin
    hi = np.array([i[-1], j[-1], k[-1]]) + 2
    spacing = np.asarray(mask.spacing, dtype=np.float64)
    if np.allclose(spacing, h, rtol=1e-6):
        pad = [(max(0, -lo[a]), max(0, hi[a] - (array.shape[2 - a] - 1))) for a in (2, 1, 0)]
        padded = np.pad(array, pad)
        lo_p = lo + np.array([pad[2][0], pad[1][0], pad[0][0]])
        hi_p = hi + np.array([pad[2][0], pad[1][0], pad[0][0]])
        crop = padded[lo_p[2] : hi_p[2] + 1, lo_p[1] : hi_p[1] + 1, lo_p[0] : hi_p[0] + 1]
        origin = mask.index_to_physical(lo)
        return Volume(np.ascontiguousarray(crop), spacing=tuple(spacing), origin=tuple(origin), direction=mask.direction)
    # signed distance (mm) on the original grid, on a padded crop
    sub = np.pad(array[max(lo[2], 0) : hi[2] + 1, max(lo[1], 0) : hi[1] + 1, max(lo[0], 0) : hi[0] + 1], 2)
    sub_lo = np.maximum(lo, 0) - 2  # ijk index of sub[0, 0, 0] in the original grid
    sp_kji = spacing[::-1]
    inside = ndimage.distance_transform_edt(sub, sampling=sp_kji)
    outside = ndimage.distance_transform_edt(~sub, sampling=sp_kji)
    sdf = np.where(sub, -(inside - 0.5 * np.min(spacing)), outside - 0.5 * np.min(spacing)).astype(np.float32)
    # fine voxels tile the coarse ones: the first fine centre is half a fine voxel inside the
    # first coarse voxel's face, so a coarse voxel of 2h holds exactly 2 x 2 x 2 fine voxels
    first = (h / spacing - 1.0) / 2.0  # index coordinate of the first fine centre along i, j, k
    extent = np.array(sub.shape[::-1]) * spacing  # mm along i, j, k of the original grid
    n = np.maximum(np.floor(extent / h + 1e-9).astype(int), 1)
    if int(np.prod(n)) > MAX_VOXELS:
        raise MeshError(
            f"a {h:g} mm grid over this part would need {int(np.prod(n)):,} voxels; choose a larger voxel size "
            f"(at least {h * (np.prod(n) / MAX_VOXELS) ** (1 / 3):.2f} mm)"
        )
    # fine sample positions in original (continuous) index coordinates of `sub`
    coords = [first[a] + np.arange(n[a]) * (h / spacing[a]) for a in range(3)]  # i, j, k
    kk, jj, ii = np.meshgrid(coords[2], coords[1], coords[0], indexing="ij")
    fine = ndimage.map_coordinates(sdf, [kk, jj, ii], order=1, mode="nearest") < 0
    origin = mask.index_to_physical(sub_lo.astype(np.float64) + first)
    # the fine grid's axes follow the original direction; its spacing is h along each
    return Volume(fine, spacing=(h, h, h), origin=tuple(origin), direction=mask.direction)


def _drill(wall: np.ndarray, solid: np.ndarray, start_kji: np.ndarray, direction_kji: np.ndarray, radius_vox: float) -> int:
    """Remove the voxels within ``radius_vox`` of the ray from ``start`` along ``direction``; count removed."""
    shape = np.array(wall.shape)
    d = direction_kji / np.linalg.norm(direction_kji)
    # drill until the axis leaves the solid for good (a few voxels of air), not into another part
    length, air = 0.0, 0
    while air < 3:
        length += 0.5
        q = np.round(start_kji + d * length).astype(int)
        if np.any(q < 0) or np.any(q >= shape):
            break
        air = air + 1 if not solid[tuple(q)] else 0
    end = start_kji + d * length
    lo = np.maximum(np.floor(np.minimum(start_kji, end) - radius_vox - 1).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(start_kji, end) + radius_vox + 1).astype(int), shape - 1)
    k, j, i = np.meshgrid(*(np.arange(lo[a], hi[a] + 1) for a in range(3)), indexing="ij")
    p = np.stack([k, j, i], axis=-1).astype(np.float64) - start_kji
    t = p @ d
    dist2 = np.einsum("...i,...i->...", p, p) - t * t
    hit = (t >= -radius_vox) & (t <= length) & (dist2 <= radius_vox * radius_vox)
    box = wall[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    removed = int(np.count_nonzero(box & hit))
    box[hit] = False
    return removed


def hollow_mask(
    mask: Volume,
    wall_mm: float,
    *,
    voxel_mm: float | None = None,
    drain_holes: int = 0,
    drain_diameter_mm: float = 3.0,
    drain_points: Sequence[npt.ArrayLike] | None = None,
    down: npt.ArrayLike = (0.0, 0.0, -1.0),
    smoothing_factor: float = DEFAULT_SMOOTHING_FACTOR,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> HollowResult:
    """Hollow a mask, leaving a wall of ``wall_mm`` everywhere, optionally with drain holes.

    Parameters
    ----------
    mask : Volume
        The part (non-zero voxels), any spacing and direction.
    wall_mm : float
        Wall thickness in mm (> 0).
    voxel_mm : float, optional
        Isotropic voxel size of the hollowing grid. Default: ``min(finest spacing, wall_mm / 4)``
        (at least 0.1 mm); the measured wall is within half a voxel of ``wall_mm``.
    drain_holes : int, optional
        Number of drain holes drilled at the cavity's lowest points (one per cavity piece, the
        largest pieces first). Default 0.
    drain_diameter_mm : float, optional
        Diameter of the drain holes (default 3 mm).
    drain_points : sequence of (3,) LPS mm points, optional
        Drill a hole here instead: from the cavity voxel nearest each point, towards the point and
        on through the wall.
    down : (3,) LPS vector, optional
        Which way is down for "lowest" (default (0, 0, -1): inferior).
    smoothing_factor : float, optional
        Smoothing of the outer surface the wall is measured from (as the export's, default 0.5).
    progress, cancel : optional
        Progress callback and cancel token.

    Returns
    -------
    HollowResult

    Raises
    ------
    MeshError
        If the wall is not positive, or the part is nowhere thicker than twice the wall (no cavity).

    Examples
    --------
    >>> zz, yy, xx = np.mgrid[:40, :40, :40]
    >>> ball = Volume((xx - 19.5) ** 2 + (yy - 19.5) ** 2 + (zz - 19.5) ** 2 < 15**2, spacing=(1, 1, 1))
    >>> result = hollow_mask(ball, 3.0, voxel_mm=1.0)
    >>> result.cavity_voxel_count > 0, int(result.wall.array.sum()) < int(result.solid.array.sum())
    (True, True)
    """
    wall_mm = float(wall_mm)
    if not np.isfinite(wall_mm) or wall_mm <= 0:
        raise MeshError(f"the wall thickness must be > 0 mm, got {wall_mm}")
    if drain_holes < 0:
        raise MeshError(f"the number of drain holes must be >= 0, got {drain_holes}")
    if (drain_holes or drain_points) and not (np.isfinite(drain_diameter_mm) and drain_diameter_mm > 0):
        raise MeshError(f"the drain hole diameter must be > 0 mm, got {drain_diameter_mm}")
    h = float(voxel_mm) if voxel_mm is not None else max(0.1, min(min(mask.spacing), wall_mm / 4.0))
    report(progress, 0.0, "resampling for hollowing", cancel)
    solid = refine_mask(mask, h)
    report(progress, 0.3, "distance field", cancel)
    depth = ndimage.distance_transform_edt(solid.array, sampling=solid.spacing_kji) - 0.5 * h
    max_depth = float(depth.max())
    # the voxel distance is only accurate to about a voxel: near the wall's inner side, the depth
    # is the exact distance to the smoothed outer surface that will be printed
    surface = mask_to_mesh(solid, smoothing_factor=smoothing_factor, compute_normals=False, cancel=cancel)
    cavity = depth > wall_mm + 2.0 * h
    band = np.argwhere((depth > wall_mm - 2.0 * h) & ~cavity & solid.array)
    if len(band):
        centres = solid.index_to_physical(band[:, ::-1].astype(np.float64))
        exact = -surface_deviation_mm(Mesh(centres, np.zeros((0, 3), np.int64)), surface)
        cavity[tuple(band.T)] = exact > wall_mm
        max_depth = max(max_depth, float(exact.max()))
    if not cavity.any():
        raise MeshError(
            f"a wall of {wall_mm:g} mm leaves no cavity: the part is at most about {2 * max_depth:.1f} mm thick "
            f"(deepest point {max_depth:.1f} mm from the surface); choose a wall thinner than {max_depth:.1f} mm"
        )
    wall = solid.array & ~cavity
    report(progress, 0.6, "drain holes", cancel)
    holes: list[DrainHole] = []
    radius_vox = 0.5 * float(drain_diameter_mm) / h
    affine = solid.affine("LPS")
    to_index = np.linalg.inv(affine[:3, :3])
    labels, n_cavities = ndimage.label(cavity)
    if drain_points:
        cav_idx = np.argwhere(cavity)  # kji
        cav_mm = (cav_idx[:, ::-1] @ affine[:3, :3].T) + affine[:3, 3]
        from scipy.spatial import cKDTree

        tree = cKDTree(cav_mm)
        for point in drain_points:
            p = np.asarray(point, dtype=np.float64).reshape(3)
            _, nearest = tree.query(p)
            start = cav_idx[nearest].astype(np.float64)
            direction_ijk = to_index @ (p - cav_mm[nearest])
            if np.linalg.norm(direction_ijk) < 1e-9:
                raise MeshError(f"drain point {p.tolist()} mm is inside the cavity; give a point on or outside the surface")
            _drill(wall, solid.array, start, direction_ijk[::-1], radius_vox)
            d_mm = p - cav_mm[nearest]
            holes.append(DrainHole(tuple(cav_mm[nearest]), tuple(d_mm / np.linalg.norm(d_mm)), float(drain_diameter_mm)))
    elif drain_holes:
        down_mm = np.asarray(down, dtype=np.float64).reshape(3)
        down_mm = down_mm / np.linalg.norm(down_mm)
        sizes = ndimage.sum_labels(cavity, labels, index=np.arange(1, n_cavities + 1))
        order = np.argsort(-sizes)[: int(drain_holes)]
        if drain_holes > n_cavities:
            warnings.warn(f"{drain_holes} drain holes asked for, but the cavity has {n_cavities} piece(s)", stacklevel=2)
        direction_ijk = to_index @ down_mm
        for label in order:
            idx = np.argwhere(labels == label + 1)
            mm = idx[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
            lowest = int(np.argmax(mm @ down_mm))
            _drill(wall, solid.array, idx[lowest].astype(np.float64), direction_ijk[::-1], radius_vox)
            holes.append(DrainHole(tuple(mm[lowest]), tuple(down_mm), float(drain_diameter_mm)))
    report(progress, 1.0, "hollowed", cancel)
    return HollowResult(
        solid.with_array(wall), solid, solid.with_array(cavity), surface, wall_mm, h, int(cavity.sum()), tuple(holes)
    )
