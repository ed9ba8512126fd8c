"""Comparing two binary masks on the same voxel grid: overlap, volumes and surface distances.

The typical use is a U-Net segmentation (mask **A**, the *test* or *prediction*) checked against
a reference segmentation (mask **B**, the *reference* or *ground truth*), for example a
Hounsfield threshold or a clinician's contour. In MONAI's vocabulary A is ``y_pred`` and B is
``y``; in DeepMind's ``surface_distance`` A is ``mask_pred`` and B is ``mask_gt``.

Everything honours anisotropic voxels: distances are in millimetres and volumes in millilitres.

Definitions
-----------
With ``|X|`` the number of voxels of X and ``v`` the volume of one voxel in mm³:

* **Dice** ``2|A∩B| / (|A| + |B|)``; **Jaccard** ``|A∩B| / |A∪B|``;
  **sensitivity** (recall) ``|A∩B| / |B|``; **precision** ``|A∩B| / |A|``.
* **Volumes** ``|A|·v / 1000`` mL and ``|B|·v / 1000`` mL; the **volume difference** is
  ``volume_a − volume_b`` (positive when A is larger).
* **Surface** ``S(X)``: the voxels of X with at least one of their 2·ndim face neighbours
  (6 in 3D) outside X, i.e. X minus its binary erosion by the cross-shaped (6-connected)
  structuring element. The image border counts as outside: a mask voxel on the outermost
  slice of the image is a surface voxel. This is exactly MONAI's ``get_mask_edges`` with
  ``use_subvoxels=False`` (``scipy.ndimage.binary_erosion(X) ^ X``, whose ``border_value`` is 0).
* **Directed distances** ``d(p, S)``: for every surface voxel centre ``p`` of one mask, the exact
  Euclidean distance in mm (voxel indices scaled by the spacing) to the nearest surface voxel
  centre of the other mask. ``D_AB`` holds one value per voxel of ``S(A)``, ``D_BA`` one per
  voxel of ``S(B)``. As in MONAI they are stored as float32.
* **Hausdorff distance** ``HD = max(max D_AB, max D_BA)``.
* **HD95** ``max(P95(D_AB), P95(D_BA))``: the larger of the two *directed* 95th percentiles
  (MONAI's definition, not the percentile of the pooled distances). The percentile is the
  linear-interpolation quantile of ``torch.quantile`` (numpy's default ``"linear"`` method),
  evaluated in float32 as torch does.
* **ASSD** (average symmetric surface distance): the mean of the pooled distances
  ``D_AB ∪ D_BA``, i.e. ``(ΣD_AB + ΣD_BA) / (|S(A)| + |S(B)|)``.
* **Surface Dice** (normalised surface distance, NSD) at tolerance τ:
  ``(#{d ∈ D_AB : d ≤ τ} + #{d ∈ D_BA : d ≤ τ}) / (|S(A)| + |S(B)|)``; the comparison is
  done in float32, as in MONAI.

These are the definitions of MONAI 1.6.1 (``compute_dice``, ``compute_hausdorff_distance``,
``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` with their
default ``use_subvoxels=False``), and the values agree with MONAI's to float32 rounding (the
maxima and percentiles bit for bit). MONAI binarises with ``mask == 1``; here every non-zero
voxel is foreground, so pass 0/1 masks to compare the two.

DeepMind's ``surface_distance`` package measures between *surfels* on the voxel-corner grid and
weights every distance by its surfel area, so its percentiles, means and surface Dice differ
from these voxel-counted ones by up to about one voxel diagonal (its Hausdorff distance by at
most one voxel diagonal: each surface point of one definition lies within half a diagonal of
the other's).

Empty masks (MONAI returns NaN or infinity here; these functions never return NaN):

* both empty: Dice, Jaccard, sensitivity, precision and surface Dice are 1 (the masks agree
  perfectly) and the distances 0;
* exactly one empty: Dice, Jaccard, sensitivity, precision and surface Dice are 0 and the
  distances ``math.inf`` (there is no surface to measure to);
* in general a ratio whose denominator is empty (sensitivity with an empty B, precision with an
  empty A) is 1 when both masks are empty and 0 otherwise.

:attr:`MaskComparison.notes` says which of these cases occurred.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Union

import numpy as np
from scipy.spatial import KDTree

from ._compat import zip_strict
from .errors import GeometryMismatchError, VolumeError
from .progress import CancelToken, ProgressCallback, report
from .volume import Volume

MaskLike = Union[Volume, np.ndarray]

ROLES: dict[str, str] = {
    "a": "test / prediction (MONAI y_pred, DeepMind mask_pred)",
    "b": "reference / ground truth (MONAI y, DeepMind mask_gt)",
}

DEFINITIONS: dict[str, str] = {
    "dice": "2|A∩B| / (|A| + |B|), voxel counts",
    "jaccard": "|A∩B| / |A∪B|",
    "sensitivity": "|A∩B| / |B| (fraction of the reference B found by A)",
    "precision": "|A∩B| / |A| (fraction of A inside the reference B)",
    "volume_ml": "voxel count × voxel volume (mm³) / 1000; volume_difference_ml = volume_a_ml − volume_b_ml",
    "only_ml": "volume of A∖B (only_a_ml) and of B∖A (only_b_ml)",
    "surface": "mask voxels with at least one face neighbour (6-connectivity) outside the mask; "
    "the image border counts as outside (MONAI get_mask_edges, use_subvoxels=False)",
    "distance": "exact Euclidean distance in mm between surface voxel centres, from each surface voxel of one mask "
    "to the nearest surface voxel of the other (directed sets D_AB and D_BA), stored as float32",
    "hd_mm": "max(max D_AB, max D_BA)",
    "hd95_mm": "max(Pp(D_AB), Pp(D_BA)) with Pp the `percentile`-th linear-interpolation percentile of each "
    "directed set (MONAI compute_hausdorff_distance(percentile=p))",
    "assd_mm": "mean of the pooled distances D_AB ∪ D_BA (MONAI compute_average_surface_distance(symmetric=True))",
    "surface_dice": "(#{D_AB ≤ τ} + #{D_BA ≤ τ}) / (|S(A)| + |S(B)|), τ = tolerance_mm (MONAI compute_surface_dice)",
    "empty_masks": "both empty: overlap scores and surface Dice 1, distances 0; one empty: overlap scores and "
    "surface Dice 0, distances infinite (null in to_dict); a ratio with an empty denominator is 1 if both masks "
    "are empty, else 0",
}


@dataclasses.dataclass(frozen=True)
class MaskComparison:
    """Result of :func:`compare_masks`: overlap, volumes and surface distances of A vs B.

    A is the test / prediction mask, B the reference. Lengths are in mm, volumes in mL.
    See the module documentation (and :data:`DEFINITIONS`) for the exact definitions.

    Attributes
    ----------
    dice, jaccard, sensitivity, precision : float
        Overlap scores in [0, 1].
    volume_a_ml, volume_b_ml, volume_difference_ml : float
        Volumes of A and B, and ``volume_a_ml - volume_b_ml``.
    only_a_ml, only_b_ml : float
        Volumes of the disagreement regions A∖B and B∖A.
    hd_mm, hd95_mm, assd_mm : float
        Hausdorff distance, percentile Hausdorff distance (at :attr:`percentile`, 95 by
        default; the name stays ``hd95_mm`` so that result files have stable keys) and average
        symmetric surface distance. ``math.inf`` when exactly one mask is empty.
    surface_dice : float
        Normalised surface Dice at :attr:`tolerance_mm`.
    tolerance_mm, percentile : float
        The parameters used.
    voxels_a, voxels_b, voxels_both : int
        ``|A|``, ``|B|`` and ``|A∩B|``.
    surface_voxels_a, surface_voxels_b : int
        ``|S(A)|`` and ``|S(B)|``.
    spacing_array_order_mm : tuple of float
        The voxel spacing used, in array axis order (``(sz, sy, sx)`` for a 3D volume).
    notes : tuple of str
        Why a value is a convention rather than a measurement (empty masks), if it is.
    """

    dice: float
    jaccard: float
    sensitivity: float
    precision: float
    volume_a_ml: float
    volume_b_ml: float
    volume_difference_ml: float
    only_a_ml: float
    only_b_ml: float
    hd_mm: float
    hd95_mm: float
    assd_mm: float
    surface_dice: float
    tolerance_mm: float
    percentile: float
    voxels_a: int
    voxels_b: int
    voxels_both: int
    surface_voxels_a: int
    surface_voxels_b: int
    spacing_array_order_mm: tuple[float, ...]
    notes: tuple[str, ...] = ()

    definitions: ClassVar[dict[str, str]] = DEFINITIONS
    roles: ClassVar[dict[str, str]] = ROLES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: the values (units in the key names), roles, definitions and notes.

        Infinite distances (one mask empty) become ``None`` (JSON ``null``); the notes say why.

        Examples
        --------
        >>> a = np.zeros((5, 5, 5), bool)
        >>> a[1:4, 1:4, 1:4] = True
        >>> d = compare_masks(a, a).to_dict()
        >>> d["dice"], d["hd95_mm"], d["roles"]["b"]
        (1.0, 0.0, 'reference / ground truth (MONAI y, DeepMind mask_gt)')
        """
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        out["roles"] = dict(ROLES)
        out["definitions"] = dict(DEFINITIONS)
        return out


# --- input handling ------------------------------------------------------------------------
def _as_bool_mask(mask: MaskLike, name: str) -> tuple[np.ndarray, Volume | None]:
    grid = mask if isinstance(mask, Volume) else None
    array = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    if array.dtype == bool:
        pass
    elif np.issubdtype(array.dtype, np.integer):
        array = array != 0
    else:
        raise VolumeError(
            f"{name} must be a bool or integer mask (non-zero = inside), got dtype {array.dtype}; "
            "threshold it first, for example mask > 0.5"
        )
    if array.ndim not in (2, 3):
        raise VolumeError(f"{name} must be a 2D or 3D mask, got {array.ndim} dimension(s) {array.shape}")
    return array, grid


def _spacing(spacing_mm: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing_mm is None:
        return (1.0,) * ndim
    values = np.ravel(np.asarray(spacing_mm, dtype=float))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise VolumeError(
            f"spacing_mm must be one positive number or {ndim} positive numbers in array axis order, got {spacing_mm!r}"
        )
    return tuple(float(v) for v in values)


def _prepare(
    mask_a: MaskLike, mask_b: MaskLike, spacing_mm: float | Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], Volume | None]:
    a, grid_a = _as_bool_mask(mask_a, "mask_a")
    b, grid_b = _as_bool_mask(mask_b, "mask_b")
    if a.shape != b.shape:
        raise GeometryMismatchError(f"mask_a and mask_b differ in shape: {a.shape} vs {b.shape} (array axis order)")
    if grid_a is not None and grid_b is not None:
        grid_a.require_same_grid(grid_b, "mask_a and mask_b")
    grid = grid_a if grid_a is not None else grid_b
    if grid is not None:
        if spacing_mm is not None:
            raise ValueError("spacing_mm must not be given with a Volume: the spacing comes from the Volume")
        spacing = tuple(float(s) for s in grid.spacing_kji)
    else:
        spacing = _spacing(spacing_mm, a.ndim)
    return a, b, spacing, grid


def _check_parameters(tolerance_mm: float, percentile: float) -> None:
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    if not (math.isfinite(percentile) and 0 <= percentile <= 100):
        raise ValueError(f"percentile must be between 0 and 100, got {percentile}")


# --- building blocks -----------------------------------------------------------------------
def _extent(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Per-axis [start, stop) of the bounding box of ``mask``, or None if it is empty."""
    rows = mask.reshape(mask.shape[0], -1).any(axis=1)
    nz = np.flatnonzero(rows)
    if nz.size == 0:
        return None
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    if mask.ndim == 1:
        return [(lo, hi)]
    rest = _extent(mask[lo:hi].any(axis=0))
    assert rest is not None
    return [(lo, hi), *rest]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a bool ``mask``: ``mask`` minus its erosion by the face-neighbour cross.

    Outside the array counts as background (scipy's ``binary_erosion`` with ``border_value=0``).
    """
    centre = (slice(1, -1),) * mask.ndim
    padded = np.zeros(tuple(n + 2 for n in mask.shape), dtype=bool)
    padded[centre] = mask
    eroded = padded[centre].copy()
    for axis in range(mask.ndim):
        for offset in (0, 2):
            index = list(centre)
            index[axis] = slice(offset, offset + mask.shape[axis])
            eroded &= padded[tuple(index)]
    np.logical_xor(padded[centre], eroded, out=eroded)
    return eroded


def _points(surface: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Physical coordinates (mm) of the surface voxels, with their indices.

    The indices are shifted by one (the crop starts one voxel before the bounding box, as in
    MONAI) so that the coordinates, and hence the distances, are bit-identical to MONAI's.
    """
    index = np.nonzero(surface)
    points = np.empty((index[0].size, surface.ndim), dtype=np.float64)
    for axis, (idx, step) in enumerate(zip_strict(index, spacing)):
        np.multiply(idx + 1, step, out=points[:, axis])
    return points, index


def _directed_distances(
    points: np.ndarray, index: tuple[np.ndarray, ...], other_surface: np.ndarray, other_tree: KDTree, workers: int
) -> np.ndarray:
    """float32 distances from each point to the nearest point of ``other_tree`` (0 where shared)."""
    distances = np.zeros(points.shape[0], dtype=np.float32)
    todo = ~other_surface[index]  # surface voxels shared by both surfaces are at distance 0
    if todo.any():
        distances[todo] = other_tree.query(points[todo], k=1, workers=workers)[0]
    return distances


def _quantile_like_torch(values: np.ndarray, percentile: float) -> np.float32:
    """``torch.quantile(values, percentile / 100)`` for a float32 vector, bit for bit.

    Linear interpolation between the order statistics at ``floor`` and ``ceil`` of
    ``q·(n−1)``, with the rank and weight in float32 and torch's fused lerp.
    """
    n = values.size
    rank = np.float32(np.float32(percentile / 100.0) * np.float32(n - 1))
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    part = np.partition(values, (lo, hi) if hi != lo else lo)
    low, high = part[lo], part[hi]
    weight = np.float32(rank - np.float32(lo))
    diff = np.float64(np.float32(high - low))
    if abs(weight) < 0.5:
        return np.float32(np.float64(low) + np.float64(weight) * diff)
    return np.float32(np.float64(high) - diff * np.float64(np.float32(np.float32(1) - weight)))


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


# --- public API -----------------------------------------------------------------------------
def compare_masks(
    mask_a: MaskLike,
    mask_b: MaskLike,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    tolerance_mm: float = 1.0,
    percentile: float = 95.0,
    workers: int = -1,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> MaskComparison:
    """Compare a test mask A with a reference mask B: overlap, volumes and surface distances.

    Parameters
    ----------
    mask_a : Volume or ndarray of bool or int, 2D or 3D
        The test / prediction mask (MONAI's ``y_pred``). Non-zero voxels are inside.
    mask_b : Volume or ndarray of bool or int
        The reference / ground truth mask (MONAI's ``y``), on the same grid as ``mask_a``.
    spacing_mm : float or sequence of float, optional
        Voxel size in mm **in ARRAY AXIS ORDER** (like scipy's ``sampling``): for an array indexed
        ``[k, j, i]`` that is ``(sz, sy, sx)``, the reverse of ITK's spacing. Only for plain
        arrays; default 1 mm in every axis. With a :class:`~SegDeepLogic.volume.Volume` the
        spacing comes from the Volume (passing ``spacing_mm`` too is an error).
    tolerance_mm : float, default 1.0
        Tolerance τ of the surface Dice, in mm.
    percentile : float, default 95.0
        Percentile of the robust Hausdorff distance reported as ``hd95_mm``.
    workers : int, default -1
        Threads for the nearest-neighbour queries (-1: all CPUs), as scipy's ``KDTree.query``.
    progress, cancel : optional
        Progress callback and cancellation token (see :mod:`SegDeepLogic.progress`).

    Returns
    -------
    MaskComparison
        All the numbers; :meth:`MaskComparison.to_dict` gives a JSON-ready dictionary.

    Raises
    ------
    GeometryMismatchError
        If the masks differ in shape, or (two Volumes) in spacing, origin or direction.
    VolumeError
        If a mask is not a bool or integer 2D/3D array, or ``spacing_mm`` is invalid.
    ValueError
        If ``tolerance_mm`` or ``percentile`` is out of range, or ``spacing_mm`` is given with a Volume.

    Notes
    -----
    The definitions (surface = mask voxels with a face neighbour outside the mask, the image
    border counting as outside; distances between surface voxel centres; HD95 = max of the two
    directed percentiles; ASSD = mean of the pooled distances; surface Dice counted in voxels)
    are those of MONAI 1.6.1 and are spelled out in the module documentation. Empty masks give
    explicit values, never NaN: both empty → overlap scores 1 and distances 0; one empty →
    overlap scores 0 and distances ``math.inf``, explained in ``notes``.

    The work is cropped to the bounding box of A ∪ B; each mask's surface is extracted once,
    and the two directed distance sets are computed once (k-d tree over the surface voxel
    centres) and shared by all distance metrics.

    Examples
    --------
    A 4×4×4 box and the same box shifted by one slice, with 2 mm slices:

    >>> a = np.zeros((10, 10, 10), dtype=bool)
    >>> a[2:6, 2:6, 2:6] = True
    >>> b = np.roll(a, 1, axis=0)
    >>> r = compare_masks(a, b, spacing_mm=(2.0, 1.0, 1.0))
    >>> r.dice, r.hd_mm, r.hd95_mm
    (0.75, 2.0, 2.0)
    >>> r.volume_a_ml, r.volume_difference_ml
    (0.128, 0.0)
    >>> r.surface_dice  # 40 of each box's 56 surface voxels are within 1 mm of the other surface
    0.714
    >>> compare_masks(a, np.zeros_like(a)).hd_mm
    inf
    """
    _check_parameters(float(tolerance_mm), float(percentile))
    report(progress, 0.0, "checking masks", cancel)
    a, b, spacing, _ = _prepare(mask_a, mask_b, spacing_mm)
    voxel_mm3 = float(np.prod(spacing))
    extent_a, extent_b = _extent(a), _extent(b)
    notes: list[str] = []

    if extent_a is None or extent_b is None:
        n_a = 0 if extent_a is None else int(np.count_nonzero(a))
        n_b = 0 if extent_b is None else int(np.count_nonzero(b))
        both_empty = n_a == n_b == 0
        if both_empty:
            notes.append("both masks are empty: overlap scores and surface Dice set to 1 and distances to 0 by convention")
        else:
            empty = "A (test)" if n_a == 0 else "B (reference)"
            notes.append(
                f"mask {empty} is empty: overlap scores and surface Dice are 0 and the surface distances are "
                "infinite, as there is no surface to measure to"
            )
        distance = 0.0 if both_empty else math.inf
        score = 1.0 if both_empty else 0.0
        report(progress, 1.0, "done", cancel)
        return MaskComparison(
            dice=score,
            jaccard=score,
            sensitivity=score,
            precision=score,
            volume_a_ml=n_a * voxel_mm3 / 1000.0,
            volume_b_ml=n_b * voxel_mm3 / 1000.0,
            volume_difference_ml=(n_a - n_b) * voxel_mm3 / 1000.0,
            only_a_ml=n_a * voxel_mm3 / 1000.0,
            only_b_ml=n_b * voxel_mm3 / 1000.0,
            hd_mm=distance,
            hd95_mm=distance,
            assd_mm=distance,
            surface_dice=score,
            tolerance_mm=float(tolerance_mm),
            percentile=float(percentile),
            voxels_a=n_a,
            voxels_b=n_b,
            voxels_both=0,
            surface_voxels_a=int(_surface(a).sum()) if n_a else 0,
            surface_voxels_b=int(_surface(b).sum()) if n_b else 0,
            spacing_array_order_mm=spacing,
            notes=tuple(notes),
        )

    # Crop to the bounding box of A ∪ B: outside it both masks are empty.
    crop = tuple(slice(min(ea[0], eb[0]), max(ea[1], eb[1])) for ea, eb in zip_strict(extent_a, extent_b))
    ca, cb = a[crop], b[crop]
    report(progress, 0.05, "overlap", cancel)
    n_a, n_b = int(np.count_nonzero(ca)), int(np.count_nonzero(cb))
    n_ab = int(np.count_nonzero(np.logical_and(ca, cb)))

    report(progress, 0.15, "surfaces", cancel)
    surface_a, surface_b = _surface(ca), _surface(cb)
    points_a, index_a = _points(surface_a, spacing)
    points_b, index_b = _points(surface_b, spacing)

    report(progress, 0.35, "distances A→B", cancel)
    d_ab = _directed_distances(points_a, index_a, surface_b, KDTree(points_b, leafsize=32), workers)
    report(progress, 0.65, "distances B→A", cancel)
    d_ba = _directed_distances(points_b, index_b, surface_a, KDTree(points_a, leafsize=32), workers)

    report(progress, 0.95, "statistics", cancel)
    tolerance32 = np.float32(tolerance_mm)
    hd = max(d_ab.max(), d_ba.max())
    hd_p = max(_quantile_like_torch(d_ab, percentile), _quantile_like_torch(d_ba, percentile))
    assd = (np.sum(d_ab, dtype=np.float64) + np.sum(d_ba, dtype=np.float64)) / (d_ab.size + d_ba.size)
    within = np.count_nonzero(d_ab <= tolerance32) + np.count_nonzero(d_ba <= tolerance32)
    report(progress, 1.0, "done", cancel)
    return MaskComparison(
        dice=2.0 * n_ab / (n_a + n_b),
        jaccard=n_ab / (n_a + n_b - n_ab),
        sensitivity=n_ab / n_b,
        precision=n_ab / n_a,
        volume_a_ml=n_a * voxel_mm3 / 1000.0,
        volume_b_ml=n_b * voxel_mm3 / 1000.0,
        volume_difference_ml=(n_a - n_b) * voxel_mm3 / 1000.0,
        only_a_ml=(n_a - n_ab) * voxel_mm3 / 1000.0,
        only_b_ml=(n_b - n_ab) * voxel_mm3 / 1000.0,
        hd_mm=float(hd),
        hd95_mm=float(hd_p),
        assd_mm=float(assd),
        surface_dice=float(within) / (d_ab.size + d_ba.size),
        tolerance_mm=float(tolerance_mm),
        percentile=float(percentile),
        voxels_a=n_a,
        voxels_b=n_b,
        voxels_both=n_ab,
        surface_voxels_a=int(d_ab.size),
        surface_voxels_b=int(d_ba.size),
        spacing_array_order_mm=spacing,
        notes=(),
    )


def disagreement_masks(mask_a: MaskLike, mask_b: MaskLike) -> tuple[MaskLike, MaskLike]:
    """The voxels only in A (``A ∧ ¬B``) and only in B (``B ∧ ¬A``), as bool masks on the same grid.

    Parameters
    ----------
    mask_a, mask_b : Volume or ndarray of bool or int
        Test and reference masks (non-zero = inside), same shape; two Volumes must share a grid.

    Returns
    -------
    only_a, only_b : Volume or ndarray of bool
        Volumes on the input grid if either input is a Volume, else arrays.

    Examples
    --------
    >>> a = np.array([[1, 1, 0]])
    >>> b = np.array([[0, 1, 1]])
    >>> only_a, only_b = disagreement_masks(a, b)
    >>> only_a.astype(int).tolist(), only_b.astype(int).tolist()
    ([[1, 0, 0]], [[0, 0, 1]])
    """
    a, b, _, grid = _prepare(mask_a, mask_b, None)
    only_a = a & ~b
    only_b = b & ~a
    if grid is not None:
        return grid.with_array(only_a), grid.with_array(only_b)
    return only_a, only_b


def surface_voxels(mask: MaskLike) -> MaskLike:
    """The surface voxels used by the distance metrics, as a bool mask of the same shape.

    A voxel is on the surface if it is inside the mask and at least one of its face neighbours
    (4 in 2D, 6 in 3D) is outside, the outside of the image counting as outside.

    Examples
    --------
    >>> m = np.zeros((1, 5), bool)
    >>> m[0, 1:5] = True
    >>> surface_voxels(m).astype(int).tolist()  # a 2D strip: every voxel touches the outside
    [[0, 1, 1, 1, 1]]
    >>> m = np.ones((3, 3, 3), bool)
    >>> int(surface_voxels(m).sum())  # all but the centre
    26
    """
    array, grid = _as_bool_mask(mask, "mask")
    surface = _surface(array)
    return grid.with_array(surface) if grid is not None else surface


def dice(mask_a: MaskLike, mask_b: MaskLike) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)``; 1 if both masks are empty.

    Examples
    --------
    >>> dice(np.array([1, 1, 0, 0])[None], np.array([0, 1, 1, 0])[None])
    0.5
    """
    a, b, _, _ = _prepare(mask_a, mask_b, None)
    n_a, n_b, n_ab = int(np.count_nonzero(a)), int(np.count_nonzero(b)), int(np.count_nonzero(a & b))
    return _ratio(2 * n_ab, n_a + n_b, n_a + n_b == 0)


def jaccard(mask_a: MaskLike, mask_b: MaskLike) -> float:
    """Jaccard index (intersection over union) ``|A∩B| / |A∪B|``; 1 if both masks are empty.

    Examples
    --------
    >>> jaccard(np.array([1, 1, 0, 0])[None], np.array([0, 1, 1, 0])[None])
    0.3333333333333333
    """
    a, b, _, _ = _prepare(mask_a, mask_b, None)
    n_ab, n_union = int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))
    return _ratio(n_ab, n_union, n_union == 0)


def hausdorff_distance(
    mask_a: MaskLike,
    mask_b: MaskLike,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    percentile: float | None = None,
) -> float:
    """Symmetric Hausdorff distance in mm between the mask surfaces (see :func:`compare_masks`).

    ``percentile=None`` gives the maximum; ``percentile=95`` gives HD95, the larger of the two
    directed 95th percentiles (MONAI's definition). ``spacing_mm`` is in array axis order.
    0 if both masks are empty, ``math.inf`` if exactly one is.

    Examples
    --------
    >>> a = np.zeros((8, 8), bool)
    >>> a[2:5, 2:5] = True
    >>> hausdorff_distance(a, np.roll(a, 2, axis=1), spacing_mm=(1.0, 0.5))
    1.0
    """
    result = compare_masks(mask_a, mask_b, spacing_mm=spacing_mm, percentile=100.0 if percentile is None else percentile)
    return result.hd_mm if percentile is None else result.hd95_mm


def average_symmetric_surface_distance(
    mask_a: MaskLike, mask_b: MaskLike, *, spacing_mm: float | Sequence[float] | None = None
) -> float:
    """Average symmetric surface distance (ASSD) in mm: the mean of both directed distance sets pooled.

    ``spacing_mm`` is in array axis order. 0 if both masks are empty, ``math.inf`` if exactly one is.

    Examples
    --------
    >>> a = np.zeros((8, 8), bool)
    >>> a[2:5, 2:5] = True
    >>> average_symmetric_surface_distance(a, a)
    0.0
    """
    return compare_masks(mask_a, mask_b, spacing_mm=spacing_mm).assd_mm


def surface_dice(
    mask_a: MaskLike, mask_b: MaskLike, *, tolerance_mm: float, spacing_mm: float | Sequence[float] | None = None
) -> float:
    """Normalised surface Dice (NSD): fraction of surface voxels of both masks within ``tolerance_mm`` of the other.

    ``spacing_mm`` is in array axis order. 1 if both masks are empty, 0 if exactly one is.

    Examples
    --------
    >>> a = np.zeros((8, 8), bool)
    >>> a[2:5, 2:5] = True
    >>> surface_dice(a, np.roll(a, 1, axis=0), tolerance_mm=1.0)
    1.0
    """
    return compare_masks(mask_a, mask_b, spacing_mm=spacing_mm, tolerance_mm=tolerance_mm).surface_dice
