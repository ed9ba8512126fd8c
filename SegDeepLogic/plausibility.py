"""Is this CT, and is this result, like what the model was trained on? (out-of-distribution check)

A network applied to the wrong body region still returns *something*: on an abdomen CT the
head-and-neck model paints a millilitre of "spinal cord", with no warning from the voxel
entropy alone. This module compares each run against reference statistics recorded from the
model's own training data (and, for the entropy, its validation run), in three checks:

* **image** -- :func:`image_features`: size and tissue composition of the body on the model
  grid (median axial cross-section in cm², fractions of bone, fat, soft tissue and air inside
  the body). A value more than 10 % outside the range seen in the training CTs is a *caution*;
  three or more such values at once are a **mismatch** (the intensities are not those of a CT in
  Hounsfield units: an MR image, or raw values without the rescale).
* **volumes** -- each structure's volume against the training contours' range; a structure
  larger than any training contour, or smaller (a partial field of view also does this), is a
  *caution*.
* **anatomy** -- the *core* structures (contoured in at least 90 % of the training cases: they
  are in every head-and-neck CT) must include at least one of plausible size (at least half the
  smallest training contour) that the network is sure of (mean entropy inside at most 1.5 times
  the largest seen on the validation CTs). None found: verdict **mismatch** -- this is not the
  anatomy the model knows, and none of its output should be trusted.
* **uncertainty** -- the mean normalised entropy inside a structure above the largest seen on
  the validation cases is a *caution*.

:func:`reference_statistics` builds the reference from prepared training cases (on the model
grid); :func:`check_plausibility` returns ``{"verdict": "ok" | "caution" | "mismatch" |
"unchecked", "findings": [...], "features": {...}}``.

Examples
--------
>>> import numpy as np
>>> hu = np.full((20, 40, 40), -1000, np.int16)
>>> hu[:, 10:30, 10:30] = 40          # a soft-tissue block: 20 x 20 voxels per slice
>>> hu[:, 18:22, 18:22] = 700         # with a bone rod
>>> f = image_features(hu, (2.5, 4.0, 4.0))
>>> f["body_area_cm2"], f["bone_fraction"]
(64.0, 0.04)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "FEATURE_NAMES",
    "check_plausibility",
    "image_features",
    "quantiles",
    "reference_statistics",
    "structure_volumes_ml",
]

#: Image features, in the order they are reported.
FEATURE_NAMES = ("body_area_cm2", "bone_fraction", "fat_fraction", "soft_tissue_fraction", "air_fraction")
_FEATURE_TEXT = {
    "body_area_cm2": "median axial body cross-section (cm²)",
    "bone_fraction": "bone fraction of the body (>= 300 HU)",
    "fat_fraction": "fat fraction of the body (-190 to -30 HU)",
    "soft_tissue_fraction": "soft-tissue fraction of the body (-30 to 150 HU)",
    "air_fraction": "air fraction inside the body outline (< -400 HU)",
}
BODY_HU = -500.0
#: Slices whose body cross-section is below this are ignored (the top of the head, a hand).
MIN_SLICE_AREA_CM2 = 10.0
#: Relative slack on the training range of an image feature: training cases are resampled by a
#: slightly different path than inference, which moves the features by a few per cent.
FEATURE_TOLERANCE = 0.1
#: A core structure counts as found only if its mean entropy is at most this times the largest
#: seen on the validation CTs (a mismatch verdict needs stronger evidence than a caution).
ANATOMY_ENTROPY_FACTOR = 1.5
#: A structure contoured in at least this fraction of the training cases is a core structure.
CORE_FRACTION = 0.9
#: This many image features outside the training range at once is a mismatch, not a caution:
#: MR-like intensities and raw detector values (no rescale to HU) put 4 of the 5 outside, while
#: no OpenKBP training or validation CT has more than one and the other body regions tried had one
#: (docs/training.md, "The out-of-distribution rule on inputs it was not designed on").
IMAGE_MISMATCH_FEATURES = 3


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def image_features(hu_kji: np.ndarray, spacing_kji: Sequence[float], *, axial_axis: int = 0) -> dict[str, float] | None:
    """Size and tissue composition of the body in a CT (HU), for the out-of-distribution check.

    Parameters
    ----------
    hu_kji : ndarray
        CT in Hounsfield units.
    spacing_kji : sequence of 3 float
        Voxel size along the array axes, in mm.
    axial_axis : int
        The array axis that runs inferior-superior (0 on the models' ``LPI``/``LPS`` grids).

    Returns
    -------
    dict or None
        ``body_area_cm2`` (median over axial slices with at least 10 cm² of body),
        ``bone_fraction``, ``fat_fraction``, ``soft_tissue_fraction``, ``air_fraction`` (of the
        voxels inside the body outline: the largest connected region above -500 HU with each
        axial slice's holes filled, so the table and the air around the patient do not count).
        None when there is no body (nothing above -500 HU).
    """
    hu = np.asarray(hu_kji)
    body = _largest_component(hu > BODY_HU)
    if not body.any():
        return None
    body = np.moveaxis(body, axial_axis, 0)
    filled = np.stack([ndi.binary_fill_holes(s) for s in body])
    spacing = [float(s) for s in spacing_kji]
    in_plane = [spacing[a] for a in range(3) if a != axial_axis]
    area = filled.sum(axis=(1, 2)) * (in_plane[0] * in_plane[1] / 100.0)
    area = area[area >= MIN_SLICE_AREA_CM2]
    values = np.moveaxis(hu, axial_axis, 0)[filled].astype(np.float32)
    n = float(values.size)
    return {
        "body_area_cm2": round(
            float(np.median(area)) if area.size else float(filled.sum(axis=(1, 2)).max() * in_plane[0] * in_plane[1] / 100.0), 3
        ),
        "bone_fraction": round(float(np.count_nonzero(values >= 300)) / n, 4),
        "fat_fraction": round(float(np.count_nonzero((values >= -190) & (values < -30))) / n, 4),
        "soft_tissue_fraction": round(float(np.count_nonzero((values >= -30) & (values < 150))) / n, 4),
        "air_fraction": round(float(np.count_nonzero(values < -400)) / n, 4),
    }


def structure_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float, n_labels: int) -> list[float]:
    """Volume (mL) of label values ``1 .. n_labels`` in a label map.

    Examples
    --------
    >>> import numpy as np
    >>> structure_volumes_ml(np.array([0, 1, 1, 2]), 500.0, 3)
    [1.0, 0.5, 0.0]
    """
    counts = np.bincount(np.asarray(labels).ravel(), minlength=n_labels + 1)
    return [float(counts[v]) * voxel_volume_mm3 / 1000.0 for v in range(1, n_labels + 1)]


def quantiles(values: Sequence[float]) -> dict[str, float | int]:
    """``n, min, p01, median, p99, max`` of ``values`` (only ``n = 0`` when empty).

    Examples
    --------
    >>> quantiles([1.0, 2.0, 3.0])["median"]
    2.0
    """
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"n": 0}
    q = np.percentile(a, [0, 1, 50, 99, 100])
    return {
        "n": int(a.size),
        "min": float(q[0]),
        "p01": float(q[1]),
        "median": float(q[2]),
        "p99": float(q[3]),
        "max": float(q[4]),
    }


def reference_statistics(
    cases: Iterable[Any],
    structures: Sequence[str],
    spacing_kji: Sequence[float],
    *,
    source: str = "",
) -> dict[str, Any]:
    """Reference statistics for :func:`check_plausibility`, from training cases on the model grid.

    Parameters
    ----------
    cases : iterable
        Objects with ``image`` (HU), ``labels`` (0 = background or unknown, ``c`` = structure
        ``structures[c - 1]``) and ``available`` (bool per class, background first) -- e.g.
        :class:`SegDeepLogic.training.data.PreparedCase`.
    structures : sequence of str
        Structure names in label order.
    spacing_kji : sequence of 3 float
        The model grid's voxel size along the array axes (mm); axis 0 is inferior-superior.
    source : str
        Where the cases came from (recorded).

    Returns
    -------
    dict
        ``{"source", "n_cases", "image": {feature: quantiles}, "volumes_ml": {structure:
        quantiles over the cases where it is contoured}, "contoured_fraction": {structure: f},
        "core_structures": [...]}``; quantiles are ``n, min, p01, median, p99, max``.
    """
    voxel_ml = float(np.prod([float(s) for s in spacing_kji])) / 1000.0
    features: dict[str, list[float]] = {k: [] for k in FEATURE_NAMES}
    volumes: dict[str, list[float]] = {s: [] for s in structures}
    n_cases = 0
    for case in cases:
        n_cases += 1
        f = image_features(case.image, spacing_kji)
        if f is not None:
            for k in FEATURE_NAMES:
                features[k].append(f[k])
        counts = np.bincount(np.asarray(case.labels).ravel(), minlength=len(structures) + 1)
        for c, name in enumerate(structures, start=1):
            if bool(case.available[c]) and counts[c] > 0:
                volumes[name].append(float(counts[c]) * voxel_ml)
    contoured = {s: (len(volumes[s]) / n_cases if n_cases else 0.0) for s in structures}
    return {
        "source": source,
        "n_cases": n_cases,
        "grid_spacing_kji_mm": [float(s) for s in spacing_kji],
        "image": {k: quantiles(v) for k, v in features.items()},
        "volumes_ml": {s: quantiles(v) for s, v in volumes.items()},
        "contoured_fraction": {s: round(f, 4) for s, f in contoured.items()},
        "core_structures": [s for s in structures if contoured[s] >= CORE_FRACTION],
    }


def _finding(check: str, severity: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"check": check, "severity": severity, "message": message, **extra}


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def check_plausibility(
    features: Mapping[str, float] | None,
    volumes_ml: Mapping[str, float],
    reference: Mapping[str, Any] | None,
    *,
    mean_entropy_inside: Mapping[str, float | None] | None = None,
    entropy_reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare one run with the model's reference statistics.

    Parameters
    ----------
    features : dict or None
        :func:`image_features` of the input on the model grid (None: no body found).
    volumes_ml : dict
        Predicted volume (mL) per structure.
    reference : dict or None
        :func:`reference_statistics` from the model card (None: nothing to compare with).
    mean_entropy_inside : dict, optional
        Per structure, the mean normalised entropy inside it (from the uncertainty summary).
    entropy_reference : dict, optional
        Per structure, quantiles of that mean over the validation cases (``max`` is used).

    Returns
    -------
    dict
        ``verdict`` ("ok", "caution", "mismatch", or "unchecked" without a reference),
        ``findings`` (list of ``{"check", "severity", "message", ...}``), ``features``.

    Examples
    --------
    >>> ref = {"n_cases": 3, "image": {}, "core_structures": ["cord"],
    ...        "volumes_ml": {"cord": {"n": 3, "min": 8.0, "p01": 8.0, "median": 12.0, "p99": 20.0, "max": 20.0}}}
    >>> check_plausibility(None, {"cord": 12.0}, ref)["verdict"]
    'caution'
    >>> r = check_plausibility(None, {"cord": 1.3}, ref)
    >>> r["verdict"], r["findings"][-1]["check"]
    ('mismatch', 'anatomy')
    """
    findings: list[dict[str, Any]] = []
    if not reference:
        return {
            "verdict": "unchecked",
            "findings": [
                _finding("reference", "info", "the model card has no reference statistics: no out-of-distribution check")
            ],
            "features": dict(features) if features else None,
        }
    n_ref = reference.get("n_cases", 0)
    if features is None:
        findings.append(_finding("image", "caution", "no body found in the image (nothing above -500 HU)"))
    else:
        outside = []
        for name in FEATURE_NAMES:
            q = reference.get("image", {}).get(name)
            value = features.get(name)
            if not q or not q.get("n") or value is None:
                continue
            if value < (1 - FEATURE_TOLERANCE) * q["min"] or value > (1 + FEATURE_TOLERANCE) * q["max"]:
                side = "below" if value < q["min"] else "above"
                outside.append(name)
                findings.append(
                    _finding(
                        "image",
                        "caution",
                        f"{_FEATURE_TEXT[name]} is {_fmt(value)}, {side} every training CT ({_fmt(q['min'])} to {_fmt(q['max'])})",
                        feature=name,
                        value=value,
                        expected=[q["min"], q["max"]],
                    )
                )
        if len(outside) >= IMAGE_MISMATCH_FEATURES:
            findings.append(
                _finding(
                    "image",
                    "mismatch",
                    f"{len(outside)} of the {len(FEATURE_NAMES)} image features are outside every training CT at once: the "
                    "intensities do not look like a CT in Hounsfield units (an MR image, or raw values without the rescale "
                    "to HU?); do not use the output",
                    features=outside,
                )
            )
    volumes_ref = reference.get("volumes_ml", {})
    for name, volume in volumes_ml.items():
        q = volumes_ref.get(name)
        if not q or not q.get("n") or volume <= 0:
            continue
        if volume > 1.5 * q["max"]:
            msg = f"{name} is {_fmt(volume)} mL, larger than any training contour ({_fmt(q['min'])} to {_fmt(q['max'])} mL)"
        elif volume < q["min"]:
            msg = (
                f"{name} is {_fmt(volume)} mL, smaller than any training contour ({_fmt(q['min'])} to {_fmt(q['max'])} mL): "
                "a partial field of view, or a false detection"
            )
        else:
            continue
        findings.append(_finding("volume", "caution", msg, structure=name, value=volume, expected=[q["min"], q["max"]]))
    core = list(reference.get("core_structures", []))

    def confident(name: str) -> bool:
        h = (mean_entropy_inside or {}).get(name)
        q = (entropy_reference or {}).get(name)
        return h is None or not q or not q.get("n") or h <= ANATOMY_ENTROPY_FACTOR * q["max"]

    plausible = [
        s
        for s in core
        if volumes_ml.get(s, 0.0) > 0 and volumes_ml.get(s, 0.0) >= 0.5 * volumes_ref.get(s, {}).get("min", 0.0) and confident(s)
    ]
    if core and not plausible:
        findings.append(
            _finding(
                "anatomy",
                "mismatch",
                f"none of {', '.join(core)} (contoured in at least {CORE_FRACTION:.0%} of the {n_ref} training CTs) was found "
                "at a plausible size with the network as sure of it as on the validation CTs: this does not look like the "
                "anatomy the model was trained on; do not use its output",
                core_structures=core,
            )
        )
    if mean_entropy_inside and entropy_reference:
        for name, h in mean_entropy_inside.items():
            q = entropy_reference.get(name)
            if h is None or not q or not q.get("n"):
                continue
            if h > q["max"]:
                findings.append(
                    _finding(
                        "uncertainty",
                        "caution",
                        f"the network is unusually unsure inside {name} (mean entropy {h:.3f}; at most {q['max']:.3f} on the validation CTs)",
                        structure=name,
                        value=h,
                        expected=[q.get("min", 0.0), q["max"]],
                    )
                )
    severities = {f["severity"] for f in findings}
    verdict = "mismatch" if "mismatch" in severities else "caution" if "caution" in severities else "ok"
    return {"verdict": verdict, "findings": findings, "features": dict(features) if features else None}


def mismatch_message(check: Mapping[str, Any] | None, withheld: Sequence[Mapping[str, Any]] = (), what: str = "the CT") -> str:
    """Why the check said "mismatch", and what was withheld, in one or two sentences.

    Examples
    --------
    >>> check = {"verdict": "mismatch", "findings": [{"severity": "mismatch", "message": "no brainstem"}]}
    >>> mismatch_message(check, [{"name": "larynx", "volume_ml": 1.08}])
    "the CT does not look like the model's training data (no brainstem). Withheld: larynx 1.08 mL."
    """
    findings = (check or {}).get("findings") or []
    reasons = "; ".join(str(f["message"]) for f in findings if f.get("severity") == "mismatch")
    text = f"{what} does not look like the model's training data ({reasons or 'verdict mismatch'})."
    if withheld:
        text += " Withheld: " + ", ".join(f"{w['name']} {w['volume_ml']:.3g} mL" for w in withheld) + "."
    return text
