"""Compare a structure with a Hounsfield threshold of its CT: the one engine function for it.

The Slicer panel (``SegDeepExtension/SegDeepLib/logic.py``), the report (:mod:`.report.facts`),
``segdeep compare --threshold`` and the ``threshold-roi`` baselines of :mod:`.evaluate` all call
:func:`compare_with_threshold`, so the same CT and mask give the same numbers everywhere.

Why a region of interest
------------------------
A Hounsfield threshold selects every voxel in its HU range, whatever the anatomy: the bone
preset selects every bone in the scan. Compared with one structure (the mandible) over the whole
CT, its Dice mostly measures how much *other* bone the scan contains. So by default the
threshold mask is restricted to a region around the structure: the structure grown by
:data:`DEFAULT_ROI_MARGIN_MM` (10 mm, Euclidean, honouring anisotropic spacing). 10 mm is the
margin the report and the evaluation baselines have always used: about two to three voxels of a
typical head-and-neck CT (≈4 mm in-plane, 2.5 mm slices) beyond any under-segmentation, and
well inside the gap to the neighbouring bones. ``roi_margin_mm=None`` compares with the
threshold of the whole CT (the panel's behaviour before the ROI existed).

Order of the steps
------------------
1. The CT is cropped to the region's bounding box (plus one voxel), so a 512×512×300 CT costs
   little more than a small one; the automatic thresholds (``method``) see this crop's histogram.
2. The HU range is applied and the mask restricted to the region.
3. The clean-up (remove islands, keep the largest component, fill enclosed holes, in that order,
   as :func:`~SegDeepLogic.threshold.threshold_segment`) runs on the restricted mask.
4. :func:`~SegDeepLogic.metrics.compare_masks` with the structure as A (test) and the threshold
   as B (reference). Every metric is the same on the crop as on the full grid (the crop leaves
   at least one empty voxel around both masks).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._compat import zip_strict
from .errors import SegDeepError
from .metrics import MaskComparison, compare_masks
from .progress import CancelToken, ProgressCallback, report
from .threshold import (
    ThresholdPreset,
    fill_enclosed_holes,
    grow_mask,
    keep_largest_component,
    remove_small_islands,
    threshold_segment,
)
from .volume import Volume

__all__ = ["DEFAULT_ROI_MARGIN_MM", "ThresholdComparison", "compare_with_threshold"]

DEFAULT_ROI_MARGIN_MM = 10.0
"""Default margin (mm) of the region around the structure in which the threshold is compared."""


@dataclasses.dataclass(frozen=True)
class ThresholdComparison:
    """Result of :func:`compare_with_threshold`.

    Attributes
    ----------
    comparison : MaskComparison
        The structure (A, test) against the threshold mask (B, reference).
    threshold_mask : Volume
        The threshold mask on the structure's full grid, restricted to the region and cleaned up.
    roi : Volume or None
        The region (bool, full grid); None when the whole CT was thresholded.
    roi_margin_mm : float or None
        The margin used (None: whole CT).
    lower_hu, upper_hu : float
        The HU range applied (``-inf`` / ``inf`` for an open side).
    parameters : dict
        JSON-ready threshold parameters (as :attr:`ThresholdResult.parameters`) plus ``roi_margin_mm``.
    """

    comparison: MaskComparison
    threshold_mask: Volume
    roi: Volume | None
    roi_margin_mm: float | None
    lower_hu: float
    upper_hu: float
    parameters: dict[str, Any]

    @property
    def roi_volume_ml(self) -> float | None:
        """Volume of the region in mL (None: whole CT)."""
        if self.roi is None:
            return None
        return float(np.count_nonzero(self.roi.array)) * self.roi.voxel_volume_mm3 / 1000.0

    def to_dict(self, *, definitions: bool = True) -> dict[str, Any]:
        """JSON-ready values: the comparison's keys, ``lower_hu``/``upper_hu`` (None when open),
        ``roi_margin_mm``, ``roi_volume_ml`` and ``threshold`` (the parameters).

        ``definitions=False`` leaves out the comparison's ``definitions`` and ``roles`` texts.
        """
        out = self.comparison.to_dict()
        if not definitions:
            out.pop("definitions", None)
            out.pop("roles", None)
        out["lower_hu"] = self.lower_hu if math.isfinite(self.lower_hu) else None
        out["upper_hu"] = self.upper_hu if math.isfinite(self.upper_hu) else None
        out["roi_margin_mm"] = self.roi_margin_mm
        out["roi_volume_ml"] = self.roi_volume_ml
        out["threshold"] = dict(self.parameters)
        return out


def compare_with_threshold(
    ct: Volume,
    structure: Volume,
    *,
    preset: str | ThresholdPreset | None = None,
    lower_hu: float | None = None,
    upper_hu: float | None = None,
    method: str | None = None,
    keep_largest: bool = False,
    min_island_mm3: float = 0.0,
    fill_holes: bool = False,
    roi_margin_mm: float | None = DEFAULT_ROI_MARGIN_MM,
    tolerance_mm: float = 1.0,
    percentile: float = 95.0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ThresholdComparison:
    """Compare a structure with a Hounsfield threshold of its CT, inside a region around it.

    Parameters
    ----------
    ct : Volume
        The CT in Hounsfield units.
    structure : Volume
        The structure's mask (non-zero = inside) on the CT's grid; mask A (test) of the comparison.
    preset, lower_hu, upper_hu, method
        The HU range, exactly as :func:`~SegDeepLogic.threshold.threshold_segment` takes it
        (one way only). With none of them the ``"bone"`` preset is used.
    keep_largest, min_island_mm3, fill_holes
        Clean-up of the threshold mask, applied after the restriction to the region.
    roi_margin_mm : float or None
        The threshold is compared inside the structure grown by this distance (mm); default
        :data:`DEFAULT_ROI_MARGIN_MM`. None: the whole CT (no region).
    tolerance_mm, percentile
        Of the surface Dice and the robust Hausdorff distance (:func:`~SegDeepLogic.metrics.compare_masks`).
    progress, cancel : optional
        ``progress(fraction, stage)`` and a cancel token.

    Returns
    -------
    ThresholdComparison

    Raises
    ------
    SegDeepError
        The structure is not on the CT's grid, or a negative margin.
    ThresholdError
        Invalid threshold parameters.

    Examples
    --------
    >>> ct = Volume(np.full((6, 8, 8), -100.0), (1.0, 1.0, 1.0))
    >>> ct.array[2:4, 2:5, 2:5] = 1000.0
    >>> bone = ct.with_array(ct.array > 500)
    >>> r = compare_with_threshold(ct, bone)
    >>> r.comparison.dice, r.roi_margin_mm, r.lower_hu
    (1.0, 10.0, 226.0)
    """
    ct.require_same_grid(structure, "the CT and the structure")
    if roi_margin_mm is not None:
        roi_margin_mm = float(roi_margin_mm)
        if not math.isfinite(roi_margin_mm) or roi_margin_mm < 0:
            raise SegDeepError(f"roi_margin_mm must be a finite number >= 0 (or None for the whole CT), got {roi_margin_mm}")
    if preset is None and lower_hu is None and upper_hu is None and method is None:
        preset = "bone"
    mask = np.asarray(structure.array) != 0
    report(progress, 0.0, "threshold", cancel)
    range_kwargs: dict[str, Any] = {"preset": preset, "lower_hu": lower_hu, "upper_hu": upper_hu, "method": method}
    if roi_margin_mm is None:
        thr = threshold_segment(
            ct, **range_kwargs, keep_largest=keep_largest, min_island_mm3=min_island_mm3, fill_holes=fill_holes
        )
        crop_box = tuple(slice(0, n) for n in mask.shape)
        a_crop = ct.with_array(mask)
        b_crop = thr.mask
        roi_crop = None
        parameters = dict(thr.parameters)
    else:
        if mask.any():
            margin = [int(math.ceil(roi_margin_mm / s)) + 1 for s in ct.spacing_kji]
            idx = np.nonzero(mask)
            crop_box = tuple(
                slice(max(0, int(i.min()) - m), min(n, int(i.max()) + 1 + m)) for i, m, n in zip_strict(idx, margin, mask.shape)
            )
        else:  # an empty structure: an empty region (the CT's first voxel keeps the maths defined)
            crop_box = (slice(0, 1),) * 3
        ct_crop = ct.crop(crop_box)
        a_crop = ct_crop.with_array(mask[crop_box])
        roi_crop = grow_mask(a_crop, roi_margin_mm)
        thr = threshold_segment(ct_crop, **range_kwargs)  # validates every range parameter
        restricted = thr.mask.array & roi_crop.array
        parameters = dict(thr.parameters)
        parameters.update(
            {"keep_largest": bool(keep_largest), "min_island_mm3": float(min_island_mm3), "fill_holes": bool(fill_holes)}
        )
        if min_island_mm3 < 0 or not math.isfinite(float(min_island_mm3)):
            raise SegDeepError(f"min_island_mm3 must be a finite number >= 0, got {min_island_mm3}")
        b_crop = ct_crop.with_array(restricted)
        if min_island_mm3 > 0:
            b_crop = remove_small_islands(b_crop, float(min_island_mm3))
        if keep_largest:
            b_crop = keep_largest_component(b_crop)
        if fill_holes:
            b_crop = fill_enclosed_holes(b_crop)
    parameters["roi_margin_mm"] = roi_margin_mm

    def sub(fraction: float, stage: str) -> None:
        report(progress, 0.3 + 0.7 * fraction, stage, cancel)

    report(progress, 0.3, "compare", cancel)
    comparison = compare_masks(a_crop, b_crop, tolerance_mm=tolerance_mm, percentile=percentile, progress=sub, cancel=cancel)
    full = np.zeros(mask.shape, bool)
    full[crop_box] = b_crop.array
    roi_full = None
    if roi_crop is not None:
        roi_array = np.zeros(mask.shape, bool)
        roi_array[crop_box] = roi_crop.array
        roi_full = ct.with_array(roi_array)
    report(progress, 1.0, "done", cancel)
    return ThresholdComparison(
        comparison=comparison,
        threshold_mask=ct.with_array(full),
        roi=roi_full,
        roi_margin_mm=roi_margin_mm,
        lower_hu=thr.lower_hu,
        upper_hu=thr.upper_hu,
        parameters=parameters,
    )
