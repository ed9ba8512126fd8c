"""Evaluate a model package on labelled cases, with global-threshold baselines for bone.

:func:`evaluate_model` segments every case of a data folder (OpenKBP layout:
``<root>/<case>/ct.nii.gz`` + ``<structure>.nii.gz``; a missing file = not contoured) through
the real inference pipeline (:func:`SegDeepLogic.segment.segment_volume`), so the numbers are
what users get, and scores each contoured structure with Dice, HD95 and ASSD
(:func:`SegDeepLogic.metrics.compare_masks`, identical to MONAI).

For the bone structure (``mandible``) it also scores:

* ``model+refine`` -- the network mask refined at the CT's resolution (:mod:`SegDeepLogic.refine`);
* ``threshold`` / ``threshold+largest`` -- one global HU threshold over the whole volume,
  without / with keeping the largest connected component;
* ``threshold-roi`` / ``threshold-roi+largest`` -- the same inside a region of interest: the
  reference mask grown by ``roi_mm`` (10 mm). This *uses the reference* to place the ROI: it
  is the best a threshold can do when a user has cropped the volume around the bone by hand,
  an optimistic baseline.

The HU threshold is never chosen on an evaluated case: :func:`choose_threshold` picks the
value that maximises the mean Dice inside the ROI over the **training** cases; it is computed
once, stored (in the summary, and passed back in with ``threshold_hu``).

Outputs (:func:`write_evaluation`): ``per_case.csv`` (one row per case, structure and method),
``summary.json`` (median, quartiles, IQR, mean and count per structure and method) and
``dice_boxplot.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._compat import zip_strict
from .atomic import atomic_path, write_text
from .compare import DEFAULT_ROI_MARGIN_MM, compare_with_threshold
from .errors import SegDeepError
from .io import read_volume
from .metrics import MaskComparison, compare_masks
from .options import SegmentOptions, options_from
from .plausibility import quantiles as _quantiles
from .plausibility import reference_statistics
from .progress import CancelToken, ProgressCallback, report
from .refine import refine_mask
from .threshold import grow_mask, keep_largest_component
from .training.data import find_cases, read_case_mask
from .volume import Volume

__all__ = [
    "BASELINE_METHODS",
    "record_in_card",
    "EvaluationResult",
    "choose_threshold",
    "evaluate_model",
    "roi_around",
    "summarise",
    "training_reference",
    "write_evaluation",
]

BASELINE_METHODS = ("threshold", "threshold+largest", "threshold-roi", "threshold-roi+largest")
CSV_COLUMNS = ("case", "structure", "method", "dice", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml")
METRICS = ("dice", "hd95_mm", "assd_mm")


@dataclasses.dataclass
class EvaluationResult:
    """Rows of per-case scores and their summary.

    Attributes
    ----------
    rows : list of dict
        One per (case, structure, method) with the :data:`CSV_COLUMNS`.
    summary : dict
        ``{"structures": {name: {method: {metric: stats}}}, "threshold": ..., "model": ..., ...}``.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def roi_around(mask: np.ndarray, spacing_kji: Sequence[float], margin_mm: float) -> np.ndarray:
    """The mask grown by ``margin_mm`` (Euclidean distance in mm, computed in a crop).

    Examples
    --------
    >>> m = np.zeros((1, 1, 9), bool); m[0, 0, 4] = True
    >>> roi_around(m, (1.0, 1.0, 2.0), 4.0).astype(int).tolist()
    [[[0, 0, 1, 1, 1, 1, 1, 0, 0]]]
    """
    return grow_mask(np.asarray(mask, bool), margin_mm, spacing_mm=spacing_kji)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.count_nonzero(a & b)) / s


def choose_threshold(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    structure: str = "mandible",
    *,
    candidates_hu: Sequence[float] = tuple(range(100, 801, 25)),
    roi_mm: float = DEFAULT_ROI_MARGIN_MM,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """The global HU threshold maximising the mean Dice of ``structure`` inside its ROI.

    Run it on the **training** cases only; the result is then fixed for every evaluation.

    Returns
    -------
    dict with ``threshold_hu``, ``mean_dice`` (training, in the ROI), ``n_cases``,
    ``roi_mm``, ``structure``, ``data`` and ``curve`` (mean Dice per candidate).
    """
    cases = [c for c in find_cases(data, [structure]) if structure in c.masks]
    if not cases:
        raise SegDeepError(f"no training case contours {structure!r}")
    cand = np.asarray(candidates_hu, float)
    totals = np.zeros(len(cand))
    for n, case in enumerate(cases):
        report(progress, n / len(cases), f"threshold on {case.case_id}", cancel)
        ct = read_volume(case.ct)
        ref = read_case_mask(case, structure).array > 0
        roi = roi_around(ref, ct.spacing_kji, roi_mm)
        hu, r = ct.array[roi], ref[roi]
        for t, value in enumerate(cand):
            totals[t] += _dice(hu >= value, r)
    report(progress, 1.0, "threshold chosen", cancel)
    curve = totals / len(cases)
    best = int(np.argmax(curve))
    return {
        "structure": structure,
        "threshold_hu": float(cand[best]),
        "mean_dice": round(float(curve[best]), 4),
        "n_cases": len(cases),
        "roi_mm": roi_mm,
        "data": [str(d) for d in ([data] if isinstance(data, (str, os.PathLike)) else data)],
        "curve": {f"{v:g}": round(float(d), 4) for v, d in zip_strict(cand, curve)},
    }


def _score(pred: np.ndarray, ref: np.ndarray, grid: Volume, case: str, structure: str, method: str) -> dict[str, Any]:
    return _row(compare_masks(grid.with_array(pred), grid.with_array(ref)), case, structure, method)


def _row(cmp: MaskComparison, case: str, structure: str, method: str, *, swapped: bool = False) -> dict[str, Any]:
    """One per-case row; ``swapped``: ``cmp`` has the reference as A and the prediction as B."""
    pred_ml, ref_ml = (cmp.volume_b_ml, cmp.volume_a_ml) if swapped else (cmp.volume_a_ml, cmp.volume_b_ml)
    return {
        "case": case,
        "structure": structure,
        "method": method,
        "dice": round(cmp.dice, 5),
        "hd95_mm": round(cmp.hd95_mm, 4) if math.isfinite(cmp.hd95_mm) else math.inf,
        "assd_mm": round(cmp.assd_mm, 4) if math.isfinite(cmp.assd_mm) else math.inf,
        "volume_pred_ml": round(pred_ml, 3),
        "volume_ref_ml": round(ref_ml, 3),
    }


def evaluate_model(
    model: Any,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    threshold: dict[str, Any] | float | None = None,
    bone_structure: str = "mandible",
    roi_mm: float = DEFAULT_ROI_MARGIN_MM,
    refine: bool = True,
    overlap: float = 0.5,
    cases: Sequence[str] | None = None,
    segment_options: SegmentOptions | Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> EvaluationResult:
    """Score a model package (and the bone baselines) on every labelled case of ``data``.

    Parameters
    ----------
    model : ModelPackage or path
        Loaded package or its folder.
    data : path or list of paths
        Data folder(s) in the OpenKBP layout, or CSV/JSON case lists.
    threshold : dict or float, optional
        The baseline HU threshold chosen on training data (:func:`choose_threshold`'s dict or a
        number). None: no threshold baselines.
    bone_structure : str
        The structure that gets the refinement and threshold baselines.
    roi_mm : float
        Margin of the ROI around the reference bone for the ``threshold-roi`` baselines.
    refine : bool
        Also score the native-resolution refinement (``model+refine``).
    overlap : float
        Sliding-window overlap of the inference.
    cases : sequence of str, optional
        Only these case ids.
    segment_options : SegmentOptions or dict, optional
        The options of :func:`~SegDeepLogic.segment.segment_volume` (``overlap`` and
        ``uncertainty=True`` are set here). ``allow_mismatch`` is True unless a dict sets it: the
        network is scored on every case, whatever the out-of-distribution verdict (which the
        summary records per case).

    Returns
    -------
    EvaluationResult
    """
    from .segment import load_model, segment_volume

    package = load_model(model)
    card = package.card
    labels = [(s.name, s.value) for s in card.segments]
    names = [n for n, _ in labels]
    found = [c for c in find_cases(data, names) if c.masks and (cases is None or c.case_id in cases)]
    if not found:
        raise SegDeepError(f"no case in {data} has a label file for any of {', '.join(names)}")
    t_hu = None if threshold is None else float(threshold["threshold_hu"] if isinstance(threshold, dict) else threshold)
    rows: list[dict[str, Any]] = []
    verdicts: dict[str, dict[str, Any]] = {}
    entropy: dict[str, list[float]] = {n: [] for n in names}
    # Score what the network predicts, even where the out-of-distribution check would withhold it.
    if isinstance(segment_options, Mapping):
        segment_options = {"allow_mismatch": True, **segment_options}
    elif segment_options is not None:
        segment_options = segment_options.replace(allow_mismatch=True)
    options = options_from(segment_options if segment_options is not None else {"allow_mismatch": True}).replace(
        overlap=overlap, uncertainty=True
    )
    for n, case in enumerate(found):
        report(progress, n / len(found), f"{case.case_id}", cancel)
        ct = read_volume(case.ct)

        def sub(fraction: float, stage: str, n: int = n, case_id: str = case.case_id) -> None:
            report(progress, (n + 0.8 * fraction) / len(found), f"{case_id}: {stage}", cancel)

        result = segment_volume(ct, package, options, progress=sub, cancel=cancel)
        pred = result.labels.array
        check = result.plausibility or {}
        verdicts[case.case_id] = {"verdict": check.get("verdict"), "findings": [f["message"] for f in check.get("findings", [])]}
        for row in result.uncertainty_summary:
            if row["mean_entropy_inside"] is not None and row["name"] in entropy:
                entropy[row["name"]].append(float(row["mean_entropy_inside"]))
        for name, value in labels:
            if name not in case.masks:
                continue
            ref_vol = read_case_mask(case, name)
            ct.require_same_grid(ref_vol, f"{case.ct.name} and {case.masks[name].name}")
            ref = ref_vol.array > 0
            mask = pred == value
            rows.append(_score(mask, ref, ct, case.case_id, name, "model"))
            if name != bone_structure:
                continue
            if refine:
                refined = refine_mask(ct, ct.with_array(mask), allowed=(pred == 0) | mask).array
                rows.append(_score(refined, ref, ct, case.case_id, name, "model+refine"))
            if t_hu is not None:
                thr = ct.array >= t_hu
                rows.append(_score(thr, ref, ct, case.case_id, name, "threshold"))
                rows.append(_score(keep_largest_component(thr), ref, ct, case.case_id, name, "threshold+largest"))
                # the threshold inside the reference grown by roi_mm: the engine's one threshold comparison
                # (reference as the structure; the metrics are symmetric, so the rows keep pred = threshold)
                for method, largest in (("threshold-roi", False), ("threshold-roi+largest", True)):
                    compared = compare_with_threshold(ct, ref_vol, lower_hu=t_hu, keep_largest=largest, roi_margin_mm=roi_mm)
                    rows.append(_row(compared.comparison, case.case_id, name, method, swapped=True))
    report(progress, 1.0, "done", cancel)
    summary = summarise(rows)
    summary.update(
        {
            "model": {"name": card.name, "version": card.version, "path": str(getattr(package, "path", model))},
            "data": [str(d) for d in ([data] if isinstance(data, (str, os.PathLike)) else data)],
            "cases": len(found),
            "threshold": threshold if isinstance(threshold, dict) else ({"threshold_hu": t_hu} if t_hu is not None else None),
            "roi_mm": roi_mm,
            "overlap": overlap,
            "segment_options": options.to_dict(),
            "postprocessing": ((card.extra or {}).get("postprocessing") or False) if options.model_postprocessing else False,
            "metrics": "Dice, HD95 (95th percentile symmetric surface distance, mm) and ASSD (mm) on the CT's own grid, "
            "as MONAI computes them; an empty prediction of a contoured structure has infinite HD95/ASSD.",
            "plausibility": {
                "verdicts": {
                    v: sum(c["verdict"] == v for c in verdicts.values())
                    for v in sorted({c["verdict"] for c in verdicts.values()}, key=str)
                },
                "cases": verdicts,
                "entropy_inside": {n: _quantiles(v) for n, v in entropy.items()},
                "note": "out-of-distribution check of every evaluated case against the card's reference statistics "
                "(SegDeepLogic.plausibility); entropy_inside: mean normalised entropy inside each predicted structure",
            },
        }
    )
    return EvaluationResult(rows, summary)


def training_reference(
    model: Any, data: str | os.PathLike | Sequence[str | os.PathLike], *, cache_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """:func:`~SegDeepLogic.plausibility.reference_statistics` of training cases, prepared on the
    model's grid exactly as training prepares them (for a package trained before the card
    recorded them)."""
    from .segment import load_model
    from .training.data import load_cases

    card = load_model(model).card
    names = card.label_names
    spacing = [float(s) for s in card.spacing_ijk_mm]
    cases = load_cases(find_cases(data, names), names, spacing, card.orientation, cache_dir=cache_dir)
    sources = [data] if isinstance(data, (str, os.PathLike)) else data
    return reference_statistics(cases, names, spacing[::-1], source=", ".join(str(d) for d in sources))


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, float)
    finite = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0}
    big = np.where(np.isinf(v), 1e300, v)  # percentiles of values with infinities, without NaNs
    q1, med, q3 = (float(x) if x < 1e299 else math.inf for x in np.percentile(big, [25, 50, 75]))
    return {
        "n": int(v.size),
        "median": _num(med),
        "q1": _num(q1),
        "q3": _num(q3),
        "iqr": _num(q3 - q1) if math.isfinite(q3) else "inf",
        "mean": _num(float(finite.mean())) if finite.size else None,
        "n_infinite": int(v.size - finite.size),
    }


def _num(x: float) -> float | str:
    return round(x, 4) if math.isfinite(x) else "inf"


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median, quartiles, IQR and mean (over finite values) of each metric per structure and method.

    Also ``mean_dice_over_structures`` of the ``model`` method: the mean over structures of
    each structure's mean and median Dice.
    """
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(row["structure"], {}).setdefault(row["method"], {m: [] for m in METRICS})
        for m in METRICS:
            out[row["structure"]][row["method"]][m].append(row[m])
    structures = {s: {meth: {m: _stats(v) for m, v in d.items()} for meth, d in methods.items()} for s, methods in out.items()}
    model = [d["model"]["dice"] for d in structures.values() if "model" in d]
    return {
        "structures": structures,
        "mean_dice_over_structures": {
            "of_means": round(float(np.mean([d["mean"] for d in model])), 4) if model else None,
            "of_medians": round(float(np.mean([d["median"] for d in model])), 4) if model else None,
        },
    }


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()})
    return buf.getvalue()


def plot_dice(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, bone_structure: str = "mandible", title: str = ""
) -> Path:
    """Box plots of Dice: per structure for the model, and per method for the bone structure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structures = list(dict.fromkeys(r["structure"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["structure"] == bone_structure))
    panels = [
        (
            "model Dice per structure",
            structures,
            lambda s: [r["dice"] for r in rows if r["structure"] == s and r["method"] == "model"],
        )
    ]
    if len(methods) > 1:
        panels.append(
            (
                f"{bone_structure} Dice per method",
                methods,
                lambda m: [r["dice"] for r in rows if r["structure"] == bone_structure and r["method"] == m],
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (name, keys, values) in zip_strict(axes[0], panels):
        data = [values(k) for k in keys]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(
            range(1, len(keys) + 1),
            [f"{k}\n(n={len(d)})" for k, d in zip_strict(keys, data)],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_evaluation(result: EvaluationResult, output_dir: str | os.PathLike, *, overwrite: bool = True) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``dice_boxplot.png`` into ``output_dir``."""
    out = Path(output_dir)
    paths = {"csv": out / "per_case.csv", "summary": out / "summary.json", "plot": out / "dice_boxplot.png"}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise FileExistsError(f"refusing to overwrite existing file: {p}")
    out.mkdir(parents=True, exist_ok=True)
    write_text(paths["csv"], _csv_text(result.rows))
    write_text(paths["summary"], json.dumps(result.summary, indent=2, default=str) + "\n")
    model = result.summary.get("model") or {}
    plot_dice(result.rows, paths["plot"], title=f"{model.get('name', '')} on {', '.join(result.summary.get('data', []))}")
    return paths


def record_in_card(
    model: str | os.PathLike,
    result: EvaluationResult,
    *,
    key: str | None = None,
    reference: dict[str, Any] | None = None,
) -> Path:
    """Store an evaluation summary in a model package's card (``validation_metrics``) and re-save it.

    The weights are unchanged (same SHA-256); the card gets, under ``key`` (default: the data
    folder names joined), the per-structure median/IQR/mean of Dice, HD95 and ASSD per method,
    the mean Dice over structures and the baseline threshold; ``extra["baseline_threshold"]``
    keeps the threshold for later evaluations. The out-of-distribution reference
    (``reference_statistics``) gets the evaluated cases' entropy inside each structure
    (``validation_entropy``, use validation data) and, if given, ``reference`` as the
    training reference (:func:`training_reference`).
    """
    from .model_package import load_model_package, save_model_package

    package = load_model_package(model)
    card = package.card
    summary = result.summary
    key = key or "evaluation_" + "_".join(Path(d).name for d in summary.get("data", []))
    metrics = dict(card.validation_metrics)
    metrics[key] = {
        "cases": summary.get("cases"),
        "data": summary.get("data"),
        "overlap": summary.get("overlap"),
        "postprocessing": summary.get("postprocessing"),
        "structures": summary["structures"],
        "mean_dice_over_structures": summary["mean_dice_over_structures"],
        "threshold": {k: v for k, v in (summary.get("threshold") or {}).items() if k != "curve"} or None,
        "metrics": summary.get("metrics"),
    }
    extra = dict(card.extra)
    if summary.get("threshold"):
        extra["baseline_threshold"] = {k: v for k, v in summary["threshold"].items() if k != "curve"}
    training = reference
    reference = dict(card.reference_statistics)
    if training is not None:
        reference["training"] = training
    plaus = summary.get("plausibility")
    if plaus:
        reference["validation_entropy"] = plaus["entropy_inside"]
        reference["validation_entropy_source"] = f"{key}: {summary.get('cases')} cases"
        metrics[key]["plausibility_verdicts"] = plaus["verdicts"]
    new_card = dataclasses.replace(card, validation_metrics=metrics, extra=extra, reference_statistics=reference)
    return save_model_package(package.network, new_card, package.path, overwrite=True)
