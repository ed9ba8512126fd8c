"""Where is the network unsure? Voxel uncertainty maps and per-structure summaries.

* :func:`normalized_entropy` -- entropy of the class probabilities divided by ``log(C)``: 0 where
  the network is certain, 1 where all C classes are equally likely.
* :func:`summarize_uncertainty` -- per predicted structure: its volume, the mean entropy inside
  it and in a band around its boundary, the fraction and volume of uncertain voxels and where
  they lie (LPS), so a reviewer knows which structure to check and where to look.

Uncertainty concentrates on boundaries (a voxel half in the bone is legitimately 50/50); a
high mean entropy *inside* a structure, or a large uncertain volume, is the warning sign.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from .volume import Volume

__all__ = ["normalized_entropy", "summarize_uncertainty"]

_EPS = 1e-12


def normalized_entropy(probabilities: torch.Tensor | np.ndarray, *, axis: int = 0) -> torch.Tensor | np.ndarray:
    """Shannon entropy of class probabilities along ``axis``, scaled to [0, 1] by ``log(C)``.

    Parameters
    ----------
    probabilities : Tensor or ndarray
        Probabilities summing to 1 along ``axis`` (C >= 2 classes, background included).
    axis : int
        The class axis.

    Returns
    -------
    Tensor or ndarray (same kind as the input), float32, the class axis removed.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[1.0, 0.5, 0.9], [0.0, 0.5, 0.1]])
    >>> normalized_entropy(p).round(3).tolist()
    [0.0, 1.0, 0.469]
    >>> import torch
    >>> normalized_entropy(torch.tensor(p)).round(decimals=3).tolist()
    [0.0, 1.0, 0.469]
    """
    n_classes = probabilities.shape[axis]
    if n_classes < 2:
        raise ValueError(f"entropy needs at least 2 classes along axis {axis}, got {n_classes}")
    scale = 1.0 / math.log(n_classes)
    if isinstance(probabilities, torch.Tensor):
        p = probabilities.float()
        return (p * torch.log(p.clamp_min(_EPS))).sum(dim=axis).mul_(-scale).clamp_(0.0, 1.0)
    p = np.asarray(probabilities, dtype=np.float32)
    return np.clip(-(p * np.log(np.maximum(p, _EPS))).sum(axis=axis) * scale, 0.0, 1.0).astype(np.float32)


def _bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    index = np.nonzero(np.any(mask, axis=(1, 2)))[0]
    if index.size == 0:
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.nonzero(np.any(mask, axis=other))[0]
        box.append(slice(max(0, int(hits[0]) - margin[axis]), min(mask.shape[axis], int(hits[-1]) + 1 + margin[axis])))
    return tuple(box)


def boundary_band(mask: np.ndarray, band_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    """Voxels within ``band_mm`` of the boundary of ``mask``, on both sides, measured along the axes.

    A voxel ``n`` steps from the boundary along an axis has its centre ``(n - 1/2) * spacing``
    from it; the band takes ``n <= band_mm / spacing + 1/2`` steps per axis (a box
    neighbourhood: separable minimum/maximum filters, linear in the number of voxels, so it
    stays fast and small on 500³ CTs where a Euclidean distance map would not).

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 1, 9), bool); m[0, 0, 3:6] = True
    >>> boundary_band(m, 1.0, (1.0, 1.0, 1.0))[0, 0].astype(int).tolist()
    [0, 0, 1, 1, 0, 1, 1, 0, 0]
    """
    m = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    grown = shrunk = m
    for axis, spacing in enumerate(spacing_kji):
        steps = int(math.floor(band_mm / spacing + 0.5))
        if steps > 0:
            grown = ndi.maximum_filter1d(grown, 2 * steps + 1, axis=axis, mode="constant", cval=0)
            shrunk = ndi.minimum_filter1d(shrunk, 2 * steps + 1, axis=axis, mode="nearest")
    return grown != shrunk


def summarize_uncertainty(
    labels: Volume,
    uncertainty: Volume,
    segments: Sequence[Any],
    *,
    band_mm: float = 2.0,
    threshold: float = 0.5,
    variance: Volume | None = None,
) -> list[dict[str, Any]]:
    """Per-structure uncertainty report.

    Parameters
    ----------
    labels : Volume
        Label map (0 = background).
    uncertainty : Volume
        Normalised entropy in [0, 1] on the same grid.
    segments : sequence
        Objects (or dicts) with ``name`` and ``value`` -- one entry per structure.
    band_mm : float
        Half-width of the band around the structure's boundary, in mm.
    threshold : float
        Entropy above which a voxel counts as uncertain.
    variance : Volume, optional
        Test-time-augmentation variance on the same grid.

    Returns
    -------
    list of dict
        One dict per segment: ``name``, ``value``, ``voxels``, ``volume_mm3``,
        ``mean_entropy_inside``, ``mean_entropy_boundary``, ``uncertain_fraction`` (of the
        structure and its band), ``uncertain_volume_mm3``, ``uncertain_centroid_lps`` (mm, or
        None), and ``mean_tta_variance_inside`` when ``variance`` is given. A structure the
        network did not find has zero volume and None for the means.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((6, 6, 6), np.uint8); lab[2:4, 2:4, 2:4] = 1
    >>> unc = np.where(lab > 0, 0.1, 0.0).astype(np.float32)
    >>> s = summarize_uncertainty(Volume(lab, (1, 1, 1)), Volume(unc, (1, 1, 1)), [{"name": "Bone", "value": 1}])
    >>> s[0]["volume_mm3"], s[0]["mean_entropy_inside"], s[0]["uncertain_fraction"]
    (8.0, 0.1, 0.0)
    """
    labels.require_same_grid(uncertainty, "the label map and the uncertainty map")
    if variance is not None:
        labels.require_same_grid(variance, "the label map and the variance map")
    lab = labels.array
    unc = uncertainty.array
    spacing_kji = labels.spacing_kji
    voxel_mm3 = labels.voxel_volume_mm3
    margin = [int(math.ceil(band_mm / s)) + 1 for s in spacing_kji]
    rows = []
    for segment in segments:
        name = segment["name"] if isinstance(segment, dict) else segment.name
        value = int(segment["value"] if isinstance(segment, dict) else segment.value)
        row: dict[str, Any] = {
            "name": name,
            "value": value,
            "voxels": 0,
            "volume_mm3": 0.0,
            "mean_entropy_inside": None,
            "mean_entropy_boundary": None,
            "uncertain_fraction": None,
            "uncertain_volume_mm3": 0.0,
            "uncertain_centroid_lps": None,
        }
        if variance is not None:
            row["mean_tta_variance_inside"] = None
        box = _bbox(lab == value, margin)
        if box is None:
            rows.append(row)
            continue
        mask = lab[box] == value
        u = unc[box]
        band = boundary_band(mask, band_mm, spacing_kji)
        region = mask | band
        uncertain = region & (u > threshold)
        n = int(mask.sum())
        row.update(
            voxels=n,
            volume_mm3=round(n * voxel_mm3, 3),
            mean_entropy_inside=round(float(u[mask].mean()), 4),
            mean_entropy_boundary=round(float(u[band].mean()), 4) if band.any() else None,
            uncertain_fraction=round(float(uncertain.sum() / region.sum()), 4),
            uncertain_volume_mm3=round(float(uncertain.sum()) * voxel_mm3, 3),
        )
        if uncertain.any():
            centroid_kji = np.array(ndi.center_of_mass(uncertain)) + [s.start for s in box]
            row["uncertain_centroid_lps"] = [round(float(c), 2) for c in labels.index_to_physical(centroid_kji[::-1])]
        if variance is not None:
            row["mean_tta_variance_inside"] = round(float(variance.array[box][mask].mean()), 5)
        rows.append(row)
    return rows
