"""Hounsfield-unit threshold segmentation of CT, with clean-up in physical units.

The classical way to get a printable bone model from CT: keep the voxels whose intensity lies
in a Hounsfield-unit (HU) range, then clean the mask (drop small islands, keep the largest
piece, fill enclosed cavities). Functions take and return numpy arrays or
:class:`~SegDeepLogic.volume.Volume` objects (arrays indexed ``[k, j, i]``); sizes are given in
physical units (mm³), never in voxels, so the same parameters mean the same thing at any
resolution.

* :data:`PRESETS` -- named HU ranges (bone, compact bone, enamel) with their sources.
* :func:`threshold_hu` -- the bare ``lower <= HU <= upper`` test, as fast as plain numpy.
* :func:`auto_threshold_hu` -- Otsu, Li, Yen, triangle or isodata threshold computed from the CT.
* :func:`remove_small_islands`, :func:`keep_largest_component`, :func:`fill_enclosed_holes`.
* :func:`threshold_segment` -- everything above in one call, returning a :class:`ThresholdResult`.

Connectivity
------------
Foreground components are **26-connected** by default (voxels touching by a face, an edge or
a corner belong together). Thin cortical bone (orbital walls, nasal conchae, the thin plates
of the skull base) is one or two voxels thick at clinical CT resolution, and its voxels are
often joined only along an edge or a corner; with 6-connectivity such bone falls apart into
fragments that "keep largest" and "remove islands" would delete. 26 is also scikit-image's
``label`` default. The background is then treated as **6-connected** when looking for enclosed
holes: that is the topologically consistent partner of a 26-connected foreground (a
26-connected closed shell encloses a 6-connected cavity; background could otherwise leak
through the diagonal gaps of the shell). Pass ``connectivity=6`` for the opposite convention
(6-connected objects, 26-connected background).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import numpy as np
from scipy import ndimage as ndi
from skimage import filters

from ._compat import zip_strict
from .errors import SegDeepError, VolumeError
from .presets import PRESETS, ThresholdPreset
from .progress import CancelToken, ProgressCallback, report
from .volume import Volume

__all__ = [
    "AUTO_METHODS",
    "PRESETS",
    "ThresholdError",
    "ThresholdPreset",
    "ThresholdResult",
    "auto_threshold_hu",
    "fill_enclosed_holes",
    "keep_largest_component",
    "remove_small_islands",
    "threshold_hu",
    "threshold_segment",
]

ArrayOrVolume = TypeVar("ArrayOrVolume", np.ndarray, Volume)
Connectivity = Literal[6, 18, 26]
HistogramRegion = Literal["tissue", "body", "volume"]


class ThresholdError(SegDeepError, ValueError):
    """Invalid or contradictory threshold segmentation parameters."""


# --------------------------------------------------------------------------------------------
# Plain threshold
# --------------------------------------------------------------------------------------------
_SLAB_BYTES = 1 << 20  # work on ~1 MB slabs of slices so the temporaries stay in cache


def threshold_hu(ct: ArrayOrVolume, lower_hu: float | None, upper_hu: float | None) -> ArrayOrVolume:
    """Boolean mask of the voxels with ``lower_hu <= value <= upper_hu`` (both bounds inclusive).

    Equivalent to ``(ct >= lower_hu) & (ct <= upper_hu)`` but without float conversion of
    integer CT data and with the comparisons done slab by slab (no full-size temporaries), so
    it is at least as fast as the plain numpy expression. For integer arrays the bounds are
    rounded inwards (``ceil(lower)``, ``floor(upper)``), which selects exactly the same voxels.

    Parameters
    ----------
    ct : ndarray or Volume
        CT intensities in HU, any real dtype.
    lower_hu, upper_hu : float or None
        Inclusive bounds; None leaves that side open.

    Returns
    -------
    ndarray of bool or Volume
        Same type as ``ct``; a Volume keeps the geometry.

    Examples
    --------
    >>> import numpy as np
    >>> ct = np.array([[[-1000, 40, 226, 1000, 3071, 3072]]], dtype=np.int16)
    >>> threshold_hu(ct, 226, 3071).astype(int).tolist()
    [[[0, 0, 1, 1, 1, 0]]]
    >>> threshold_hu(ct, 225.5, None).astype(int).tolist()
    [[[0, 0, 1, 1, 1, 1]]]
    """
    array = _array_of(ct)
    _check_real_array(array, "ct")
    lower = _optional_finite(lower_hu, "lower_hu")
    upper = _optional_finite(upper_hu, "upper_hu")
    if lower is not None and upper is not None and lower > upper:
        raise ThresholdError(f"lower_hu ({lower:g}) is greater than upper_hu ({upper:g})")
    return _rewrap(ct, _in_range(array, lower, upper))


def _in_range(a: np.ndarray, lower: float | None, upper: float | None) -> np.ndarray:
    lo, hi = _bounds_in_dtype(a.dtype, lower, upper)
    if lo is _EMPTY:
        return np.zeros(a.shape, dtype=bool)
    if lo is None and hi is None:
        return np.ones(a.shape, dtype=bool)
    out = np.empty(a.shape, dtype=bool)
    if a.ndim == 0 or a.size == 0:
        out[...] = (lo is None or a >= lo) & (hi is None or a <= hi)
        return out
    plane = max(1, a[0].size * a.itemsize)
    step = max(1, _SLAB_BYTES // plane)
    tmp = np.empty((min(step, a.shape[0]),) + a.shape[1:], dtype=bool) if lo is not None and hi is not None else None
    for start in range(0, a.shape[0], step):
        stop = min(start + step, a.shape[0])
        src, dst = a[start:stop], out[start:stop]
        if lo is None:
            np.less_equal(src, hi, out=dst)
        elif hi is None:
            np.greater_equal(src, lo, out=dst)
        else:
            t = tmp[: stop - start]
            np.greater_equal(src, lo, out=dst)
            np.less_equal(src, hi, out=t)
            np.logical_and(dst, t, out=dst)
    return out


_EMPTY = object()


def _bounds_in_dtype(dtype: np.dtype, lower: float | None, upper: float | None) -> tuple[Any, Any]:
    """Bounds as scalars of ``dtype`` that select exactly ``lower <= x <= upper``.

    Returns ``(None, None)`` for "everything", ``(_EMPTY, _EMPTY)`` for "nothing", and None for
    an open (or dtype-covering) side. Comparing against a scalar of the array's own dtype keeps
    numpy on the fast same-type loop instead of promoting to float64.
    """
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo = None if lower is None else math.ceil(lower)
        hi = None if upper is None else math.floor(upper)
        if (
            (lo is not None and lo > info.max)
            or (hi is not None and hi < info.min)
            or (lo is not None and hi is not None and lo > hi)
        ):
            return _EMPTY, _EMPTY
        lo = None if lo is None or lo <= info.min else dtype.type(lo)
        hi = None if hi is None or hi >= info.max else dtype.type(hi)
        return lo, hi
    ftype = dtype.type
    lo = hi = None
    if lower is not None:
        lo = ftype(lower)
        # compare in float64: if the cast rounded the bound down, the next representable value is the true bound
        if float(lo) < lower:
            lo = np.nextafter(lo, ftype(np.inf))
    if upper is not None:
        hi = ftype(upper)
        if float(hi) > upper:
            hi = np.nextafter(hi, ftype(-np.inf))
    return lo, hi


# --------------------------------------------------------------------------------------------
# Automatic thresholds
# --------------------------------------------------------------------------------------------
AUTO_METHODS: Mapping[str, Callable[..., float]] = MappingProxyType(
    {
        "otsu": filters.threshold_otsu,
        "li": filters.threshold_li,
        "yen": filters.threshold_yen,
        "triangle": filters.threshold_triangle,
        "isodata": filters.threshold_isodata,
    }
)
"""scikit-image threshold functions available to :func:`auto_threshold_hu`, by name."""

_BODY_AIR_HU = -500.0


def auto_threshold_hu(
    ct: np.ndarray | Volume,
    method: str = "otsu",
    *,
    region: HistogramRegion = "tissue",
    min_hu: float = -200.0,
) -> float:
    """Compute a bone / soft-tissue threshold from the CT's histogram (scikit-image methods).

    Parameters
    ----------
    ct : ndarray or Volume
        CT in HU.
    method : {'otsu', 'li', 'yen', 'triangle', 'isodata'}
        The scikit-image ``threshold_<method>`` function to apply (see :data:`AUTO_METHODS`).
    region : {'tissue', 'body', 'volume'}
        Which voxels form the histogram:

        * ``'tissue'`` (default): voxels at or above ``min_hu`` (-200 HU). This drops the
          padding outside the scan circle (-1024 or -3024 HU), the air around the patient and
          in the airways, and the lungs -- together usually well over half of a CT, and a peak
          that dominates any histogram of the whole volume -- and keeps fat (about -100 HU),
          soft tissue and bone. The two classes a bimodal method then separates are soft
          tissue and bone, which is what a bone segmentation needs. -200 HU lies between lung
          (about -850 HU) and fat, so the rule needs no body detection and does not depend on
          the field of view. On the head-and-neck sample CT Otsu gives 509 HU here.
        * ``'body'``: voxels inside the patient (the largest 26-connected region above
          -500 HU, enclosed cavities filled). Padding and outside air are excluded, but air
          cavities that are enclosed (sinuses) and the partial-volume rim of the skin stay in.
          Slower (it labels the volume); on the sample CT Otsu gives 466 HU.
        * ``'volume'``: every voxel. The padding and air peak dominates and Otsu lands between
          air and soft tissue (-493 HU on the sample CT): a body outline, not bone.
    min_hu : float
        Lower HU limit of the ``'tissue'`` region (ignored otherwise).

    Returns
    -------
    float
        The threshold in HU. Voxels **above** it form the bright class (bone).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ct = np.concatenate([np.full(5000, -1024), rng.normal(40, 20, 5000), rng.normal(1000, 100, 2000)])
    >>> ct = ct.reshape(12, 10, 100)
    >>> 100 < auto_threshold_hu(ct, "otsu") < 900
    True
    >>> auto_threshold_hu(ct, "otsu", region="volume") < 40
    True
    """
    method_fn = _resolve_method(method)
    array = _array_of(ct)
    _check_real_array(array, "ct")
    if region == "tissue":
        min_hu = _finite(min_hu, "min_hu")
        values = array[_in_range(array, min_hu, None)]
        where = f"voxels at or above {min_hu:g} HU"
    elif region == "body":
        values = array[_body_mask(array)]
        where = "the body"
    elif region == "volume":
        values = array.ravel()
        where = "the volume"
    else:
        raise ThresholdError(f"region must be 'tissue', 'body' or 'volume', got {region!r}")
    if values.size == 0:
        raise ThresholdError(f"cannot compute an automatic threshold: no voxels in {where}")
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise VolumeError("ct contains non-finite values (NaN or infinity); cannot compute a histogram threshold")
    vmin, vmax = values.min(), values.max()
    if vmin == vmax:
        raise ThresholdError(
            f"cannot compute an automatic threshold: all {values.size} voxels in {where} equal {float(vmin):g} HU"
        )
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    # Integer CT gets one histogram bin per HU (scikit-image's rule for integer images);
    # float CT gets scikit-image's default 256 bins.
    return float(method_fn(values))


def _body_mask(array: np.ndarray) -> np.ndarray:
    """The patient: largest 26-connected region above -500 HU, with enclosed cavities filled."""
    above = _in_range(array, _BODY_AIR_HU, None)
    if not above.any():
        return above
    return _fill_holes(_keep_largest(above, 26), 26)


def _resolve_method(method: str) -> Callable[..., float]:
    if not isinstance(method, str) or method.lower() not in AUTO_METHODS:
        raise ThresholdError(f"unknown automatic threshold method {method!r}; choose one of {', '.join(AUTO_METHODS)}")
    return AUTO_METHODS[method.lower()]


# --------------------------------------------------------------------------------------------
# Clean-up
# --------------------------------------------------------------------------------------------
def remove_small_islands(
    mask: ArrayOrVolume,
    min_volume_mm3: float,
    *,
    voxel_volume_mm3: float | None = None,
    connectivity: Connectivity = 26,
) -> ArrayOrVolume:
    """Remove connected components whose volume is below ``min_volume_mm3``.

    A component of ``n`` voxels has volume ``n * voxel_volume_mm3``; it is kept when that is
    at least ``min_volume_mm3``.

    Parameters
    ----------
    mask : ndarray or Volume
        Binary mask (non-zero = foreground).
    min_volume_mm3 : float
        Smallest component volume kept, in mm³ (0 keeps everything).
    voxel_volume_mm3 : float, optional
        Volume of one voxel in mm³. Taken from the spacing of a Volume; required for a bare
        array.
    connectivity : {26, 18, 6}
        Neighbourhood defining a component (see the module notes; default 26).

    Returns
    -------
    ndarray of bool or Volume
        Same type as ``mask``.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((5, 5, 10), bool)
    >>> m[1:3, 1:3, 1:3] = True   # 8 voxels
    >>> m[1, 1, 7] = True         # 1 voxel
    >>> remove_small_islands(m, 2.0, voxel_volume_mm3=0.5).sum()   # 0.5 mm³ island removed
    np.int64(8)
    """
    array = _mask_array(mask)
    vv = _voxel_volume(mask, voxel_volume_mm3)
    min_volume_mm3 = _finite(min_volume_mm3, "min_volume_mm3")
    if min_volume_mm3 < 0:
        raise ThresholdError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3:g}")
    return _rewrap(mask, _remove_small(array, min_volume_mm3 / vv, _check_connectivity(connectivity)))


def keep_largest_component(mask: ArrayOrVolume, *, connectivity: Connectivity = 26) -> ArrayOrVolume:
    """Keep only the largest connected component (the first one in scan order on a tie).

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((3, 3, 9), bool)
    >>> m[1, 1, 0:3] = True; m[1, 1, 5:9] = True
    >>> keep_largest_component(m)[1, 1].astype(int).tolist()
    [0, 0, 0, 0, 0, 1, 1, 1, 1]
    """
    return _rewrap(mask, _keep_largest(_mask_array(mask), _check_connectivity(connectivity)))


def fill_enclosed_holes(mask: ArrayOrVolume, *, connectivity: Connectivity = 26) -> ArrayOrVolume:
    """Fill cavities: background components (in 3D) that do not touch the volume's border.

    With the default 26-connected foreground the background is taken as 6-connected (and vice
    versa), so a closed shell whose voxels touch only diagonally still encloses its cavity.
    Background regions open to the border -- the outside, and for example the airway or the
    spinal canal where they leave the scanned volume -- are not touched.

    Examples
    --------
    >>> import numpy as np
    >>> shell = np.zeros((7, 7, 7), bool)
    >>> shell[1:6, 1:6, 1:6] = True
    >>> shell[2:5, 2:5, 2:5] = False        # 27-voxel cavity
    >>> int(fill_enclosed_holes(shell).sum() - shell.sum())
    27
    """
    return _rewrap(mask, _fill_holes(_mask_array(mask), _check_connectivity(connectivity)))


def _structure(connectivity: int) -> np.ndarray:
    return ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def _check_connectivity(connectivity: Any) -> int:
    if isinstance(connectivity, bool) or connectivity not in (6, 18, 26):
        raise ThresholdError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return int(connectivity)


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels (None if there are none), from one pass."""
    objects = ndi.find_objects(mask.view(np.uint8))
    return objects[0] if objects else None


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]] | None:
    """Label the mask inside its bounding box; returns (labels, voxel counts per label, box)."""
    box = _bbox(mask)
    if box is None:
        return None
    sub = mask[box]
    labels, n = ndi.label(sub, structure=_structure(connectivity))
    # Count over the foreground voxels only: far fewer than the box, and bincount would
    # otherwise convert every label of the box to int64 first.
    counts = np.bincount(labels[sub], minlength=n + 1)
    counts[0] = 0
    return labels, counts, box


def _remove_small(mask: np.ndarray, min_voxels: float, connectivity: int) -> np.ndarray:
    out = mask.copy()
    if min_voxels <= 1:  # every component has at least one voxel
        return out
    labelled = _label(mask, connectivity)
    if labelled is None:
        return out
    labels, counts, box = labelled
    small = np.flatnonzero(counts[1:] < min_voxels * (1 - 1e-12)) + 1  # tolerate round-off in mm³ / voxel mm³
    if small.size == 0:
        return out
    # Clear each small component inside its own bounding box: islands are small, so this
    # touches few voxels, unlike a lookup over the whole box.
    objects = ndi.find_objects(labels)
    sub = out[box]
    for label in small:
        where = objects[label - 1]
        sub[where][labels[where] == label] = False
    return out


def _keep_largest(mask: np.ndarray, connectivity: int, min_voxels: float = 0.0) -> np.ndarray:
    """Largest component; nothing if even that one is smaller than ``min_voxels``."""
    labelled = _label(mask, connectivity)
    out = np.zeros(mask.shape, dtype=bool)
    if labelled is None:
        return out
    labels, counts, box = labelled
    largest = int(np.argmax(counts))
    if counts[largest] >= min_voxels * (1 - 1e-12):
        out[box] = labels == largest
    return out


def _fill_holes(mask: np.ndarray, connectivity: int) -> np.ndarray:
    out = mask.copy()
    box = _bbox(mask)
    if box is None:
        return out
    # Holes lie inside the foreground's bounding box, and every background voxel on the faces
    # of that box is connected to the volume border (everything outside the box is
    # background), so labelling the box is exact and much cheaper than the whole volume.
    sub = mask[box]
    background_conn = 6 if connectivity in (18, 26) else 26
    labels, n = ndi.label(~sub, structure=_structure(background_conn))
    if n == 0:
        return out
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(sub.ndim):
        for index in (0, -1):
            outside[np.unique(np.take(labels, index, axis=axis))] = True
    hole = ~outside
    hole[0] = False
    out[box] |= hole[labels]
    return out


# --------------------------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ThresholdResult:
    """Result of :func:`threshold_segment`.

    Attributes
    ----------
    mask : Volume
        Boolean mask on the CT's grid.
    lower_hu, upper_hu : float
        The HU range actually applied (resolved from the preset, the bounds or the automatic
        method); ``-inf`` / ``inf`` for an open side.
    parameters : dict
        JSON-ready record of every parameter, for provenance (open bounds as None).
    """

    mask: Volume
    lower_hu: float
    upper_hu: float
    parameters: dict[str, Any]

    @property
    def volume_mm3(self) -> float:
        """Volume of the mask in mm³."""
        return float(np.count_nonzero(self.mask.array)) * self.mask.voxel_volume_mm3


def threshold_segment(
    ct: Volume,
    *,
    preset: str | ThresholdPreset | None = None,
    lower_hu: float | None = None,
    upper_hu: float | None = None,
    method: str | None = None,
    keep_largest: bool = False,
    min_island_mm3: float = 0.0,
    fill_holes: bool = False,
    connectivity: Connectivity = 26,
    auto_region: HistogramRegion = "tissue",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ThresholdResult:
    """Segment a CT by a Hounsfield-unit range, then optionally clean the mask up.

    Exactly one way of choosing the range must be used:

    * ``preset`` -- a name from :data:`PRESETS` (or a :class:`ThresholdPreset`);
    * ``lower_hu`` and/or ``upper_hu`` -- explicit inclusive bounds (an omitted one is open);
    * ``method`` -- an automatic lower bound (:func:`auto_threshold_hu` over ``auto_region``),
      optionally with an explicit ``upper_hu``.

    Clean-up runs in this order: remove islands smaller than ``min_island_mm3``, keep the
    largest component, fill enclosed holes.

    Parameters
    ----------
    ct : Volume
        CT in Hounsfield units.
    preset, lower_hu, upper_hu, method
        How to choose the HU range (see above).
    keep_largest : bool
        Keep only the largest connected component.
    min_island_mm3 : float
        Remove components smaller than this volume (mm³; voxel volume from ``ct.spacing``).
    fill_holes : bool
        Fill cavities not connected to the volume border (3D).
    connectivity : {26, 18, 6}
        Foreground connectivity for the clean-up (module notes explain the default 26).
    auto_region : {'tissue', 'body', 'volume'}
        Histogram region for ``method`` (see :func:`auto_threshold_hu`).
    progress : callable, optional
        ``progress(fraction, stage)``; may raise :class:`~SegDeepLogic.errors.CancelledError`.
    cancel : CancelToken, optional
        Checked between steps.

    Returns
    -------
    ThresholdResult
        The mask (bool Volume on the CT grid), the HU range applied and the parameters.

    Raises
    ------
    ThresholdError
        Contradictory or invalid parameters (several range sources, lower > upper, unknown
        preset or method, non-finite numbers, negative island volume).

    Examples
    --------
    >>> import numpy as np
    >>> ct = Volume(np.full((20, 20, 20), 40, np.int16), spacing=(0.5, 0.5, 1.0))
    >>> ct.array[5:15, 5:15, 5:15] = 1000
    >>> result = threshold_segment(ct, preset="bone", fill_holes=True)
    >>> result.lower_hu, result.upper_hu, result.volume_mm3
    (226.0, 3071.0, 250.0)
    >>> threshold_segment(ct, preset="bone", lower_hu=300)
    Traceback (most recent call last):
    ...
    SegDeepLogic.threshold.ThresholdError: give either preset='bone' or lower_hu/upper_hu, not both
    """
    if not isinstance(ct, Volume):
        raise ThresholdError(f"ct must be a Volume, got {type(ct).__name__}; wrap arrays with Volume(array, spacing)")
    _check_real_array(ct.array, "ct")
    lower = _optional_finite(lower_hu, "lower_hu")
    upper = _optional_finite(upper_hu, "upper_hu")
    min_island_mm3 = _finite(min_island_mm3, "min_island_mm3")
    if min_island_mm3 < 0:
        raise ThresholdError(f"min_island_mm3 must be >= 0, got {min_island_mm3:g}")
    connectivity = _check_connectivity(connectivity)
    for flag, name in ((keep_largest, "keep_largest"), (fill_holes, "fill_holes")):
        if not isinstance(flag, (bool, np.bool_)):
            raise ThresholdError(f"{name} must be True or False, got {flag!r}")

    preset_obj = _resolve_preset(preset)
    if preset_obj is not None:
        if lower is not None or upper is not None:
            raise ThresholdError(f"give either preset={preset_obj.name!r} or lower_hu/upper_hu, not both")
        if method is not None:
            raise ThresholdError(f"give either preset={preset_obj.name!r} or method={method!r}, not both")
        lower, upper = preset_obj.lower_hu, preset_obj.upper_hu
    elif method is not None:
        _resolve_method(method)
        if lower is not None:
            raise ThresholdError(f"method={method!r} computes lower_hu; do not give lower_hu={lower:g} as well")
        if auto_region not in ("tissue", "body", "volume"):
            raise ThresholdError(f"auto_region must be 'tissue', 'body' or 'volume', got {auto_region!r}")
    elif lower is None and upper is None:
        raise ThresholdError("no HU range: give a preset (" + ", ".join(PRESETS) + "), lower_hu/upper_hu, or an automatic method")
    if lower is not None and upper is not None and lower > upper:
        raise ThresholdError(f"lower_hu ({lower:g}) is greater than upper_hu ({upper:g})")

    # With keep_largest, removing islands first cannot change which component is largest, so
    # one labelling does both: keep the largest unless it is itself below min_island_mm3.
    remove_islands = min_island_mm3 > 0 and not keep_largest
    steps = 1 + (method is not None) + remove_islands + bool(keep_largest) + bool(fill_holes)
    done = 0

    def step(stage: str) -> None:
        report(progress, done / steps, stage, cancel)

    if method is not None:
        step(f"automatic threshold ({method})")
        lower = auto_threshold_hu(ct, method, region=auto_region)
        if upper is not None and lower > upper:
            raise ThresholdError(f"the {method} threshold {lower:.1f} HU is above upper_hu ({upper:g})")
        done += 1
    step("threshold")
    mask = _in_range(ct.array, lower, upper)
    done += 1
    if remove_islands:
        step("removing small islands")
        mask = _remove_small(mask, min_island_mm3 / ct.voxel_volume_mm3, connectivity)
        done += 1
    if keep_largest:
        step("keeping the largest component")
        mask = _keep_largest(mask, connectivity, min_island_mm3 / ct.voxel_volume_mm3)
        done += 1
    if fill_holes:
        step("filling enclosed holes")
        mask = _fill_holes(mask, connectivity)
        done += 1
    report(progress, 1.0, "done", cancel)

    lower_f = -math.inf if lower is None else float(lower)
    upper_f = math.inf if upper is None else float(upper)
    parameters = {
        "algorithm": "hounsfield_threshold",
        "preset": None if preset_obj is None else preset_obj.name,
        "method": None if method is None else method.lower(),
        "auto_region": auto_region if method is not None else None,
        "lower_hu": None if lower is None else float(lower),
        "upper_hu": None if upper is None else float(upper),
        "keep_largest": bool(keep_largest),
        "min_island_mm3": float(min_island_mm3),
        "fill_holes": bool(fill_holes),
        "connectivity": connectivity,
    }
    return ThresholdResult(ct.with_array(mask), lower_f, upper_f, parameters)


def _resolve_preset(preset: str | ThresholdPreset | None) -> ThresholdPreset | None:
    if preset is None or isinstance(preset, ThresholdPreset):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise ThresholdError(f"unknown threshold preset {preset!r}; choose one of {', '.join(PRESETS)}")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _array_of(data: np.ndarray | Volume) -> np.ndarray:
    return data.array if isinstance(data, Volume) else np.asarray(data)


def _rewrap(original: Any, array: np.ndarray) -> Any:
    return original.with_array(array) if isinstance(original, Volume) else array


def _check_real_array(array: np.ndarray, name: str) -> None:
    if array.dtype.kind not in "iuf":
        raise ThresholdError(f"{name} must hold real numbers (integer or float HU), got dtype {array.dtype}")


def _mask_array(mask: np.ndarray | Volume) -> np.ndarray:
    array = _array_of(mask)
    if array.ndim != 3:
        raise ThresholdError(f"expected a 3D mask, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "iuf":
        raise ThresholdError(f"mask must be boolean or numeric, got dtype {array.dtype}")
    return array != 0


def _voxel_volume(mask: np.ndarray | Volume, voxel_volume_mm3: float | None) -> float:
    if isinstance(mask, Volume):
        own = mask.voxel_volume_mm3
        if voxel_volume_mm3 is not None and not math.isclose(float(voxel_volume_mm3), own, rel_tol=1e-6):
            raise ThresholdError(f"voxel_volume_mm3={voxel_volume_mm3:g} contradicts the Volume's spacing ({own:g} mm³)")
        return own
    if voxel_volume_mm3 is None:
        raise ThresholdError("voxel_volume_mm3 is required for a bare array (or pass a Volume, which has a spacing)")
    vv = _finite(voxel_volume_mm3, "voxel_volume_mm3")
    if vv <= 0:
        raise ThresholdError(f"voxel_volume_mm3 must be > 0, got {vv:g}")
    return vv


def _finite(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ThresholdError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ThresholdError(f"{name} must be finite, got {value}")
    return value


def _optional_finite(value: Any, name: str) -> float | None:
    return None if value is None else _finite(value, name)


def grow_mask(mask: ArrayOrVolume, margin_mm: float, *, spacing_mm: Sequence[float] | None = None) -> ArrayOrVolume:
    """Grow a mask by ``margin_mm``: every voxel within that Euclidean distance (mm) of the mask.

    Used to build a region of interest around a structure (e.g. the mandible grown by 10 mm), in
    which a global threshold can be compared with it. The distance honours anisotropic spacing and
    is computed in a crop around the mask, so it is cheap for small structures in large volumes.

    Parameters
    ----------
    mask : Volume or ndarray
        Boolean (or non-zero) mask.
    margin_mm : float
        Growth distance in mm (0 returns the mask unchanged).
    spacing_mm : sequence of float, optional
        For a plain array only: voxel size in ARRAY axis order (like scipy's ``sampling``);
        a Volume brings its own spacing.

    Examples
    --------
    >>> m = np.zeros((1, 1, 9), bool); m[0, 0, 4] = True
    >>> grow_mask(m, 4.0, spacing_mm=(1.0, 1.0, 2.0)).astype(int).tolist()
    [[[0, 0, 1, 1, 1, 1, 1, 0, 0]]]
    """
    margin_mm = _finite(margin_mm, "margin_mm")
    if margin_mm < 0:
        raise ThresholdError(f"margin_mm must be >= 0, got {margin_mm}")
    array = _mask_array(mask)
    if isinstance(mask, Volume):
        if spacing_mm is not None:
            raise ThresholdError("give spacing_mm only for plain arrays; a Volume has its own spacing")
        spacing = mask.spacing_kji
    else:
        spacing = tuple(float(s) for s in (spacing_mm if spacing_mm is not None else (1.0,) * array.ndim))
    out = array.copy()
    if margin_mm > 0 and array.any():
        margin = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
        idx = np.nonzero(array)
        box = tuple(
            slice(max(0, int(i.min()) - m), min(n, int(i.max()) + 1 + m)) for i, m, n in zip_strict(idx, margin, array.shape)
        )
        out[box] = ndi.distance_transform_edt(~array[box], sampling=spacing) <= margin_mm + 1e-6
    return _rewrap(mask, out)
