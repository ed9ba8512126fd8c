"""Native-resolution refinement of a network mask with a Hounsfield threshold (for bone).

The network runs on a coarse grid (e.g. 2-4 mm), so its bone masks are blocky and miss thin
cortical detail once brought back to a 0.5-1 mm CT. Bone, unlike soft tissue, has a sharp,
well-defined edge in HU. :func:`refine_mask` keeps the network's *anatomical* decision (which
bone, roughly where) and takes the *boundary* from the CT:

1. ``grown`` -- the network mask dilated by ``grow_mm`` millimetres (a Euclidean distance in
   physical units, so it means the same at any voxel size), to reach bone surface the coarse
   mask cut off;
2. ``refined = grown & (lower_hu <= CT <= upper_hu)`` -- only voxels that look like bone;
3. clean-up in physical units: fill enclosed holes (marrow below the threshold, for a solid
   printable part), drop islands smaller than ``min_island_mm3``, keep the largest piece.

``grow_mm`` should be about the network's voxel size: large enough to recover the surface the
coarse grid lost, small enough not to reach a neighbouring bone (where bones touch, e.g. teeth
in occlusion or a joint, nothing but the network mask separates them; the clean-up then keeps
the network's piece and ``allowed`` can forbid other structures' voxels).

Parameters are in mm, mm³ and HU (226 HU is the usual bone threshold, see
:data:`SegDeepLogic.threshold.PRESETS`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ._compat import zip_strict
from .errors import GeometryMismatchError, SegDeepError
from .threshold import PRESETS, fill_enclosed_holes, keep_largest_component, remove_small_islands, threshold_hu
from .volume import Volume

__all__ = ["RefineOptions", "refine_mask"]


@dataclasses.dataclass(frozen=True)
class RefineOptions:
    """Settings of :func:`refine_mask`, in physical units.

    Attributes
    ----------
    lower_hu, upper_hu : float or None
        HU range that counts as bone (default 226 HU and no upper bound).
    grow_mm : float
        How far the network mask may grow into thresholded bone, in mm (default 3 mm).
    shrink : bool
        Also drop mask voxels below ``lower_hu`` (True: the CT decides the boundary on both
        sides). With False the refinement only adds bone to the network mask.
    fill_holes : bool
        Fill cavities fully enclosed by the refined mask (marrow, canals).
    keep_largest : bool
        Keep only the largest connected piece.
    min_island_mm3 : float
        Remove pieces smaller than this, in mm³ (applied before ``keep_largest``).
    """

    lower_hu: float | None = PRESETS["bone"].lower_hu
    upper_hu: float | None = None
    grow_mm: float = 3.0
    shrink: bool = True
    fill_holes: bool = True
    keep_largest: bool = True
    min_island_mm3: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.grow_mm) and self.grow_mm >= 0):
            raise SegDeepError(f"grow_mm must be a finite distance >= 0 mm, got {self.grow_mm}")
        if self.lower_hu is None and self.upper_hu is None:
            raise SegDeepError("refinement needs at least one HU bound (lower_hu or upper_hu)")
        if self.lower_hu is not None and self.upper_hu is not None and self.lower_hu > self.upper_hu:
            raise SegDeepError(f"lower_hu {self.lower_hu} is above upper_hu {self.upper_hu}")
        if not (math.isfinite(self.min_island_mm3) and self.min_island_mm3 >= 0):
            raise SegDeepError(f"min_island_mm3 must be >= 0 mm³, got {self.min_island_mm3}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _crop_box(mask: np.ndarray, margin: tuple[int, int, int]) -> tuple[slice, ...] | None:
    hits = [np.nonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    if hits[0].size == 0:
        return None
    return tuple(slice(max(0, int(h[0]) - m), min(n, int(h[-1]) + 1 + m)) for h, m, n in zip_strict(hits, margin, mask.shape))


def refine_mask(
    ct: Volume,
    mask: Volume,
    options: RefineOptions | None = None,
    *,
    allowed: np.ndarray | None = None,
    **overrides: Any,
) -> Volume:
    """Refine a coarse (network) mask at the CT's resolution with a HU threshold.

    Parameters
    ----------
    ct : Volume
        The CT in Hounsfield units.
    mask : Volume
        The network's binary mask on the CT's grid (for example the argmax of the probability
        map resampled to the CT).
    options : RefineOptions, optional
        Thresholds and clean-up (defaults: bone >= 226 HU, grow 3 mm, fill holes, keep largest).
    allowed : ndarray of bool, optional
        Voxels the refined mask may occupy (e.g. background or this structure, so that the
        refinement never takes another structure's voxels).
    **overrides
        Fields of :class:`RefineOptions` to change, e.g. ``grow_mm=2``.

    Returns
    -------
    Volume of bool on the CT's grid. Empty when ``mask`` is empty.

    Examples
    --------
    A bone sphere (1000 HU, radius 6 mm) and a blocky 4 mm mask around it:

    >>> import numpy as np
    >>> z, y, x = np.mgrid[:24, :24, :24] - 11.5
    >>> sphere = x**2 + y**2 + z**2 <= 36
    >>> ct = Volume(np.where(sphere, 1000, -1000).astype(np.int16), spacing=(1, 1, 1))
    >>> blocky = np.kron(sphere[2::4, 2::4, 2::4], np.ones((4, 4, 4), bool))
    >>> refined = refine_mask(ct, ct.with_array(blocky), grow_mm=4)
    >>> bool(np.array_equal(refined.array, sphere))
    True
    """
    opts = dataclasses.replace(options or RefineOptions(), **overrides) if overrides else (options or RefineOptions())
    ct.require_same_grid(mask, "the CT and the mask to refine")
    if allowed is not None and allowed.shape != ct.array.shape:
        raise GeometryMismatchError(f"allowed has shape {allowed.shape}, the CT {ct.array.shape}")
    m = np.asarray(mask.array) != 0
    spacing = ct.spacing_kji
    margin = tuple(int(math.ceil(opts.grow_mm / s)) + 1 for s in spacing)
    box = _crop_box(m, margin)  # type: ignore[arg-type]
    out = np.zeros(m.shape, dtype=bool)
    if box is None:
        return ct.with_array(out)
    m_box = m[box]
    # Euclidean distance (mm) from every voxel to the network mask, computed in the crop only.
    grown = ndi.distance_transform_edt(~m_box, sampling=spacing) <= opts.grow_mm + 1e-6 if opts.grow_mm > 0 else m_box
    bone = threshold_hu(ct.array[box], opts.lower_hu, opts.upper_hu)
    refined = grown & bone
    if not opts.shrink:
        refined |= m_box
    if allowed is not None:
        refined &= allowed[box]
    vv = ct.voxel_volume_mm3
    if opts.fill_holes and refined.any():
        refined = fill_enclosed_holes(refined)
        if allowed is not None:
            refined &= allowed[box]
    if opts.min_island_mm3 > 0:
        refined = remove_small_islands(refined, opts.min_island_mm3, voxel_volume_mm3=vv)
    if opts.keep_largest and refined.any():
        refined = keep_largest_component(refined)
    out[box] = refined
    return ct.with_array(out)
