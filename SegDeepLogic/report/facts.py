"""Collect the facts of a per-case report: volumes, comparisons, meshes, uncertainty, provenance.

:func:`build_report` runs (or takes) the network segmentation of a CT, compares every
structure with a Hounsfield threshold (bone-like structures only, inside a region around the
structure) and with an optional reference segmentation, builds the printable mesh of every
structure with its print-readiness report, draws the pictures and records where everything
came from. The result, :class:`ReportFacts`, holds a JSON-ready dictionary (``facts.data``),
the PNG pictures and the meshes to export; :func:`SegDeepLogic.report.write_report` writes it.

When the network ran (here, or for a ``SegmentationResult`` given to the report), the facts hold
its out-of-distribution check, ``facts.data["plausibility"]`` (verdict, headline, every finding;
see :mod:`SegDeepLogic.plausibility`); a "mismatch" verdict means the output must not be used.
Without a network result (a segmentation file) it is None: there was nothing to check.

Work is done on crops around each structure (the structure's bounding box grown by the
threshold margin), so a 512×512×300 CT costs little more than a small one.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .. import __version__
from .._compat import zip_strict
from ..compare import compare_with_threshold
from ..grid import orientation_code, reorient_volume
from ..io import read_volume
from ..mesh import Mesh, mask_to_mesh
from ..mesh_io import build_print_mesh, safe_filename
from ..mesh_report import surface_deviation_mm
from ..metrics import DEFINITIONS, ROLES, compare_masks
from ..model_card import file_sha256
from ..options import SegmentOptions, options_from
from ..plausibility import mismatch_message
from ..presets import BONE_KEYWORDS, is_bone_like
from ..progress import CancelToken, ProgressCallback, report
from ..segmentation_io import Segmentation
from ..segmentation_read import read_segmentation
from ..threshold import PRESETS, threshold_segment
from ..verdicts import PLAUSIBILITY_DEFINITION, PLAUSIBILITY_HEADLINES
from ..volume import Volume
from . import figures
from .options import ReportError, ReportOptions

__all__ = [
    "ReportError",
    "ReportFacts",
    "build_report",
    "parse_threshold",
]

THRESHOLD_REASON = (
    "A Hounsfield threshold selects every voxel in its HU range, whatever the anatomy: it is a meaningful "
    "reference only for bone (high HU, sharp contrast), not for soft-tissue organs whose HU overlap their "
    "neighbours'. It also selects every other bone, so each structure is compared with the threshold mask "
    "restricted to a region around it (the structure grown by {margin:g} mm)."
)


@dataclasses.dataclass
class ReportFacts:
    """Everything a report shows.

    Attributes
    ----------
    data : dict
        JSON-ready facts (numbers, parameters, provenance); written as the report's JSON file.
    images : dict of str to bytes
        PNG pictures by id (``data["structures"][n]["images"]`` lists each structure's ids).
    meshes : list of (Path, Mesh)
        Surfaces to write with the report (empty unless ``export_dir`` was given). With the 3MF
        format every structure goes to one file, ``structures.3mf``, as a named, coloured object.
    mesh_parts : list of (str, colour)
        Name and colour of each entry of ``meshes`` (the 3MF objects).
    """

    data: dict[str, Any]
    images: dict[str, bytes] = dataclasses.field(default_factory=dict)
    meshes: list[tuple[Path, Mesh]] = dataclasses.field(default_factory=list)
    mesh_parts: list[tuple[str, Any]] = dataclasses.field(default_factory=list)


# --- small helpers -----------------------------------------------------------------------------
def parse_threshold(spec: str | tuple[float | None, float | None] | None) -> dict[str, Any]:
    """Keyword arguments of :func:`~SegDeepLogic.threshold.threshold_segment` for a threshold spec.

    Parameters
    ----------
    spec : str, (lower, upper) or None
        A preset name (``"bone"``), ``"LOWER:UPPER"`` in HU (either side may be empty), one
        number (lower bound), a tuple, or None for the ``bone`` preset.

    Examples
    --------
    >>> parse_threshold("bone")
    {'preset': 'bone'}
    >>> parse_threshold("300:"), parse_threshold("300:2000"), parse_threshold((None, 500))
    ({'lower_hu': 300.0, 'upper_hu': None}, {'lower_hu': 300.0, 'upper_hu': 2000.0}, {'lower_hu': None, 'upper_hu': 500.0})
    """
    if spec is None:
        return {"preset": "bone"}
    if isinstance(spec, (tuple, list)):
        lower, upper = spec
        return {"lower_hu": None if lower is None else float(lower), "upper_hu": None if upper is None else float(upper)}
    text = str(spec).strip()
    if text in PRESETS:
        return {"preset": text}
    parts = text.split(":") if ":" in text else [text, ""]
    try:
        lower, upper = (float(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ReportError(
            f"threshold must be a preset ({', '.join(PRESETS)}) or LOWER:UPPER in HU (e.g. 300:3071 or 300:), got {spec!r}"
        ) from None
    if lower is None and upper is None:
        raise ReportError("threshold LOWER:UPPER needs at least one bound")
    return {"lower_hu": lower, "upper_hu": upper}


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _file_facts(path: str | os.PathLike | None) -> dict[str, Any] | None:
    if path is None:
        return None
    p = Path(path)
    out: dict[str, Any] = {"path": str(p.resolve())}
    if p.is_file():
        out |= {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
    return out


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"segdeep": __version__, "python": platform.python_version()}
    for dist, key in (("torch", "torch"), ("numpy", "numpy"), ("SimpleITK", "SimpleITK"), ("vtk", "vtk")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    for dist in ("scipy", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["platform"] = platform.platform()
    return out


def _json_ready(value: Any) -> Any:
    """Recursively turn numpy values, tuples and paths into JSON types (non-finite floats -> None)."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _grow_box(box: tuple[slice, ...], margin: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip_strict(box, margin, shape))


def _compare(a: Volume, b: Volume, tolerance_mm: float) -> dict[str, Any]:
    d = compare_masks(a, b, tolerance_mm=tolerance_mm).to_dict()
    d.pop("definitions", None)
    d.pop("roles", None)
    return d


def _plausibility_facts(result: Any) -> dict[str, Any] | None:
    """The out-of-distribution check of a network result for the report (None without a network result)."""
    if result is None:
        return None
    check = getattr(result, "plausibility", None)
    if not check:
        check = {
            "verdict": "unchecked",
            "findings": [
                {
                    "check": "reference",
                    "severity": "info",
                    "message": "the segmentation result carries no out-of-distribution check",
                }
            ],
            "features": None,
        }
    verdict = str(check.get("verdict") or "unchecked")
    return {
        "verdict": verdict,
        "headline": PLAUSIBILITY_HEADLINES.get(verdict, verdict),
        "findings": [dict(f) for f in check.get("findings") or []],
        "features": dict(check["features"]) if check.get("features") else None,
        "definition": PLAUSIBILITY_DEFINITION,
    }


def _load_segmentation(
    seg: Any, ct: Volume, what: str, ct_folder: Path | None = None
) -> tuple[Segmentation, dict[str, Any] | None]:
    """A Segmentation on the CT's grid, from a Segmentation, a SegmentationResult or a file.

    A DICOM RT Structure Set is rasterised onto its CT series: ``ct_folder`` when the CT was
    given as a DICOM folder, else the series it references next to the RTSTRUCT file.
    """
    source = None
    if isinstance(seg, (str, os.PathLike)):
        source = _file_facts(seg)
        seg = read_segmentation(seg, reference=ct, ct_series=ct_folder)
    elif hasattr(seg, "labels") and hasattr(seg, "segments"):  # a SegmentationResult
        seg = Segmentation(seg.labels, seg.segments)
    if not isinstance(seg, Segmentation):
        raise ReportError(f"{what} must be a Segmentation, a SegmentationResult or a file path, got {type(seg).__name__}")
    seg.labelmap.require_same_grid(ct, f"the {what} and the CT")
    return seg, source


# --- the report --------------------------------------------------------------------------------
def build_report(
    ct: Volume | str | os.PathLike,
    segmentation: Any = None,
    options: ReportOptions | None = None,
    *,
    model: Any = None,
    segment_options: SegmentOptions | Mapping[str, Any] | None = None,
    series_uid: str | None = None,
    reference: Any = None,
    reference_labels: Mapping[str, str] | None = None,
    uncertainty: Volume | str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **changes: Any,
) -> ReportFacts:
    """Collect every fact of a CT's report from a segmentation result (running the network first
    when none is given).

    Parameters
    ----------
    ct : Volume or path
        The CT in HU (a path is read with :func:`~SegDeepLogic.io.read_volume` and recorded).
    series_uid : str, optional
        With a DICOM folder: the series to read (default the largest). An RTSTRUCT
        ``reference``/``segmentation`` is rasterised onto that folder's series.
    segmentation : SegmentationResult, Segmentation or path, optional
        The result the report is about (a ``SegmentationResult`` also brings its uncertainty,
        device, timings, parameters, options and out-of-distribution check). None: run the
        network (``model``, ``segment_options``) first.
    options : ReportOptions, optional
        What the report compares and exports (:class:`~SegDeepLogic.report.options.ReportOptions`:
        threshold, structures, region margin, tolerance, mesh export); default its defaults.
    model : ModelPackage, path or None
        Model package for the network (None: the first bundled one). Ignored with ``segmentation``.
    segment_options : SegmentOptions or dict, optional
        How the network runs when no ``segmentation`` is given (device, TTA, refinement, ...;
        :class:`~SegDeepLogic.options.SegmentOptions`, default its defaults).
    reference : Segmentation or path, optional
        A reference segmentation (e.g. clinical contours) on the CT's grid.
    reference_labels : mapping of str to str, optional
        Network structure name -> reference segment name. By default segments are matched by
        name (case and punctuation ignored); a reference with one segment matches a network
        result with one structure.
    uncertainty : Volume or path, optional
        Uncertainty map (entropy 0..1, e.g. from ``segdeep segment --uncertainty``) to show with
        a given ``segmentation``.
    **changes
        Single report options by name (``threshold=``, ``threshold_structures=``,
        ``threshold_margin_mm=``, ``tolerance_mm=``, ``export_dir=``, ``export_format=``,
        ``space=``, ``smoothing=``, ``decimation=``, ``title=``) on top of ``options``.
    progress, cancel : optional
        Progress callback and cancellation token.

    Returns
    -------
    ReportFacts
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    opts = (options or ReportOptions()).replace(**changes) if changes else (options or ReportOptions())
    threshold_kwargs = parse_threshold(opts.threshold)
    threshold_structures, threshold_margin_mm, tolerance_mm = (
        opts.threshold_structures,
        opts.threshold_margin_mm,
        opts.tolerance_mm,
    )
    export_dir, export_format, space = opts.export_dir, opts.export_format, opts.space
    smoothing, decimation, title = opts.smoothing, opts.decimation, opts.title

    # -- inputs -----------------------------------------------------------------------------
    report(progress, 0.0, "reading the CT", cancel)
    t = time.perf_counter()
    ct_path = None
    if not isinstance(ct, Volume):
        ct_path = Path(ct)
        ct = read_volume(ct_path, series_uid=series_uid)
    timings["read"] = time.perf_counter() - t

    result = None
    network_timings: dict[str, float] = {}
    seg_source: dict[str, Any] | None = None
    if segmentation is None:
        from ..segment import load_model, segment_volume  # torch only when the network runs

        package = load_model(model)
        run_options = options_from(segment_options)

        def network_progress(fraction: float, stage: str) -> None:
            report(progress, 0.02 + 0.5 * fraction, f"network: {stage}", cancel)

        t = time.perf_counter()
        result = segment_volume(ct, package, run_options, progress=network_progress, cancel=cancel)
        timings["segmentation_total"] = time.perf_counter() - t
        network_timings = {k: float(v) for k, v in result.timings_s.items()}
        seg = Segmentation(result.labels, result.segments)
        model_facts = {
            "name": package.card.name,
            "version": package.card.version,
            "architecture": package.card.architecture,
            "path": str(Path(package.path).resolve()),
            "weights_sha256": package.weights_sha256,
            "card_weights_sha256": package.card.weights_sha256,
            "labels": package.card.label_names,
            "spacing_ijk_mm": list(package.card.spacing_ijk_mm),
            "orientation": package.card.orientation,
            "patch_size_kji": list(package.card.patch_size_kji),
        }
        seg_facts: dict[str, Any] = {
            "source": "network (run for this report)",
            "model": model_facts,
            "device": result.device,
            "precision": result.precision,
            "fallbacks": list(result.fallbacks),
            "parameters": result.parameters,
        }
    else:
        if hasattr(segmentation, "labels") and hasattr(segmentation, "timings_s"):
            result = segmentation
            network_timings = {k: float(v) for k, v in result.timings_s.items()}
        t = time.perf_counter()
        seg, seg_source = _load_segmentation(
            segmentation, ct, "segmentation", ct_path if ct_path is not None and ct_path.is_dir() else None
        )
        timings["read_segmentation"] = time.perf_counter() - t
        seg_facts = {
            "source": "segmentation result given to the report" if result is not None else "segmentation file (network not run)",
            "file": seg_source,
            "model": (result.parameters.get("model") if result is not None else None),
            "device": result.device if result is not None else None,
            "precision": result.precision if result is not None else None,
            "fallbacks": list(result.fallbacks) if result is not None else [],
            "parameters": result.parameters if result is not None else None,
        }
    uncertainty_map = result.uncertainty if result is not None else None
    uncertainty_rows = list(result.uncertainty_summary) if result is not None else []
    if uncertainty is not None:
        seg_facts["uncertainty_file"] = _file_facts(uncertainty) if not isinstance(uncertainty, Volume) else None
        t = time.perf_counter()
        uncertainty_map = uncertainty if isinstance(uncertainty, Volume) else read_volume(uncertainty)
        timings["read_uncertainty"] = time.perf_counter() - t
        uncertainty_map.require_same_grid(ct, "the uncertainty map and the CT")
        from ..uncertainty import summarize_uncertainty

        uncertainty_rows = summarize_uncertainty(seg.labelmap, uncertainty_map, seg.segments)
        timings["uncertainty_summary"] = time.perf_counter() - t - timings["read_uncertainty"]
    plausibility = _plausibility_facts(result)
    if result is not None and getattr(result, "withheld", None):
        notes.append(
            f"The network's labels were withheld: {mismatch_message(result.plausibility, result.withheld)} "
            "Run with --allow-mismatch (allow_mismatch=True) to see them anyway (not for use)."
        )
    if uncertainty_map is None:
        notes.append(
            "No uncertainty map: the segmentation was given without one (pass the network's uncertainty map to show it)."
        )

    ref_seg = ref_source = None
    t = time.perf_counter()
    if reference is not None:
        ct_folder = ct_path if ct_path is not None and ct_path.is_dir() else None
        ref_seg, ref_source = _load_segmentation(reference, ct, "reference segmentation", ct_folder)
    timings["read_reference"] = time.perf_counter() - t
    matches = _match_reference(seg, ref_seg, reference_labels)

    names = [s.name for s in seg.segments]
    if threshold_structures is None:
        chosen = [n for n in names if is_bone_like(n)]
        how = f"automatic: structures whose name contains one of {', '.join(BONE_KEYWORDS)}"
    else:
        unknown = [n for n in threshold_structures if n not in names]
        if unknown:
            raise ReportError(f"unknown threshold structure(s) {unknown}; the segmentation has {names}")
        chosen = list(threshold_structures)
        how = "chosen by the user"
    if not chosen:
        notes.append("No structure is bone-like, so none is compared with the threshold (choose some with threshold_structures).")

    # -- per structure ----------------------------------------------------------------------
    t = time.perf_counter()
    labels = seg.labelmap.array
    present_boxes = ndi.find_objects(_integer(labels))
    voxel_ml = ct.voxel_volume_mm3 / 1000.0
    margin_vox = [int(math.ceil(threshold_margin_mm / s)) + 1 for s in ct.spacing_kji]
    ref_boxes = None
    if ref_seg is not None:
        ref_boxes = ndi.find_objects(_integer(ref_seg.labelmap.array))
    timings["bounding_boxes"] = time.perf_counter() - t
    structures: list[dict[str, Any]] = []
    images: dict[str, bytes] = {}
    meshes: list[tuple[Path, Mesh]] = []
    mesh_parts: list[tuple[str, Any]] = []
    used_files: set[str] = set()
    stage_time = dict.fromkeys(("threshold", "compare_threshold", "compare_reference", "meshes", "deviation", "figures"), 0.0)
    n = len(seg.segments)
    for index, s in enumerate(seg.segments):
        report(progress, 0.55 + 0.4 * index / max(n, 1), f"structure {s.name}", cancel)
        row: dict[str, Any] = {"name": s.name, "value": s.value, "color": list(s.color) if s.color else None, "images": []}
        structures.append(row)
        box = present_boxes[s.value - 1] if 0 < s.value <= len(present_boxes) else None
        ref_value = None
        if s.name in matches:
            ref_value = ref_seg.segment(matches[s.name]).value  # type: ignore[union-attr]
            row["reference_segment"] = matches[s.name]
        if box is None:
            row |= {"voxels": 0, "volume_ml": 0.0, "empty": True, "threshold_comparison": {"applies": False}}
            ref_box = ref_boxes[ref_value - 1] if ref_value is not None and ref_value <= len(ref_boxes or []) else None
            if ref_box is not None:  # the reference has it: say how much was missed
                ref_crop = ref_seg.labelmap.crop(ref_box)  # type: ignore[union-attr]
                ref_mask = ref_crop.with_array(ref_crop.array == ref_value)
                row["reference_comparison"] = _compare(ref_mask.with_array(np.zeros_like(ref_mask.array)), ref_mask, tolerance_mm)
            notes.append(f"{s.name}: the network found nothing; no threshold comparison, mesh or picture.")
            continue
        thr_applies = s.name in chosen
        grow = margin_vox if thr_applies else [2, 2, 2]
        crop_box = _grow_box(box, grow, labels.shape)
        ref_box = None
        if ref_value is not None and ref_boxes is not None and ref_value <= len(ref_boxes) and ref_boxes[ref_value - 1]:
            ref_box = ref_boxes[ref_value - 1]
            crop_box = tuple(
                slice(min(a.start, b.start), max(a.stop, b.stop))
                for a, b in zip_strict(crop_box, _grow_box(ref_box, [2, 2, 2], labels.shape))
            )
        mask = ct.crop(crop_box).with_array(labels[crop_box] == s.value)
        ct_crop = ct.crop(crop_box)
        voxels = int(np.count_nonzero(mask.array))
        centroid_kji = np.array(ndi.center_of_mass(mask.array))
        row |= {
            "voxels": voxels,
            "volume_ml": voxels * voxel_ml,
            "centroid_lps_mm": [float(c) for c in mask.index_to_physical(centroid_kji[::-1])],
            "empty": False,
        }

        # threshold comparison
        thr_mask = roi = None
        if thr_applies:
            t = time.perf_counter()
            started: dict[str, float] = {}  # when compare_with_threshold moved from thresholding to comparing

            def mark(_fraction: float, stage: str, started: dict[str, float] = started) -> None:
                started.setdefault(stage, time.perf_counter())

            compared = compare_with_threshold(
                ct_crop,
                mask,
                **threshold_kwargs,
                roi_margin_mm=threshold_margin_mm,
                tolerance_mm=tolerance_mm,
                progress=mark,
                cancel=cancel,
            )
            thr_mask = compared.threshold_mask
            roi = compared.roi.array  # type: ignore[union-attr]
            end = time.perf_counter()
            stage_time["threshold"] += started.get("compare", end) - t
            stage_time["compare_threshold"] += end - started.get("compare", end)
            cmp = compared.comparison.to_dict()
            cmp.pop("definitions", None)
            cmp.pop("roles", None)
            row["threshold_comparison"] = {
                "applies": True,
                "region": f"structure grown by {threshold_margin_mm:g} mm",
                "roi_volume_ml": compared.roi_volume_ml,
                **cmp,
            }
        else:
            row["threshold_comparison"] = {"applies": False}
        ref_mask = None
        if ref_value is not None:
            t = time.perf_counter()
            ref_mask = mask.with_array(ref_seg.labelmap.array[crop_box] == ref_value)  # type: ignore[union-attr]
            row["reference_comparison"] = _compare(mask, ref_mask, tolerance_mm)
            stage_time["compare_reference"] += time.perf_counter() - t

        # the print mesh and its report: the one build_print_mesh that export_segments uses too
        t = time.perf_counter()
        part = build_print_mesh(
            mask, s.name, label_value=s.value, space=space, smoothing_factor=smoothing, decimation=decimation, cancel=cancel
        )  # type: ignore[arg-type]
        mesh, mreport = part.mesh, part.report
        row["mesh"] = mreport.to_dict()
        if export_dir is not None:
            stem = safe_filename(s.name)
            base, k = stem, 1
            while stem.lower() in used_files:
                k += 1
                stem = f"{base}_{k}"
            used_files.add(stem.lower())
            target = Path(export_dir) / (f"{stem}.{export_format}" if export_format != "3mf" else "structures.3mf")
            meshes.append((target, mesh))
            mesh_parts.append((s.name, tuple(s.color) if s.color else None))
            row["mesh"]["file"] = str(target.resolve())
        stage_time["meshes"] += time.perf_counter() - t

        # signed distance of the mesh to the reference (or threshold) surface
        t = time.perf_counter()
        target_mask, target_kind = (
            (ref_mask, "reference") if ref_mask is not None and ref_mask.array.any() else (thr_mask, "threshold")
        )
        signed = None
        if target_mask is not None and target_mask.array.any():
            other_mesh = mask_to_mesh(target_mask, space=space, smoothing_factor=smoothing, compute_normals=False)
            signed = surface_deviation_mm(mesh, other_mesh)
            a = np.abs(signed)
            row["surface_distance"] = {
                "to": target_kind,
                "definition": f"signed distance (mm) from each vertex of the exported mesh to the {target_kind} surface "
                "(same smoothing, no decimation); positive outside it, negative inside",
                "mean_mm": float(signed.mean()),
                "mean_abs_mm": float(a.mean()),
                "p95_abs_mm": float(np.percentile(a, 95)),
                "max_abs_mm": float(a.max()),
                "fraction_within_1mm": float(np.mean(a <= 1.0)),
            }
        stage_time["deviation"] += time.perf_counter() - t

        # pictures
        t = time.perf_counter()

        def lps(array: np.ndarray | None, grid: Volume = mask) -> np.ndarray | None:
            return None if array is None else reorient_volume(grid.with_array(array), "LPS").array

        ct_lps = reorient_volume(ct_crop, "LPS")
        net_lps = lps(mask.array)
        centre = _centre(net_lps)  # type: ignore[arg-type]
        other = thr_mask if thr_mask is not None else ref_mask
        unc = uncertainty_map.array[crop_box] if uncertainty_map is not None else None
        key = f"s{index}_slices"
        images[key] = figures.slices_png(
            ct_lps.array,
            ct_lps.spacing,
            centre,
            net_lps,  # type: ignore[arg-type]
            other=lps(other.array if other is not None else None),
            other_kind="threshold" if thr_mask is not None else "reference",
            roi=lps(roi),
            reference=lps(ref_mask.array) if (ref_mask is not None and thr_mask is not None) else None,
            uncertainty=lps(unc),
        )
        row["images"].append(
            {"id": key, "kind": "slices", "centre_lps_mm": [float(c) for c in ct_lps.index_to_physical(centre[::-1])]}
        )
        key = f"s{index}_mesh"
        label = f"signed distance to the {target_kind} surface (mm)"
        images[key] = figures.mesh_png(mesh, signed, label=label, color=s.color or (0.9, 0.85, 0.7))
        row["images"].append({"id": key, "kind": "mesh", "coloured_by": label if signed is not None else None})
        stage_time["figures"] += time.perf_counter() - t

    report(progress, 0.97, "provenance", cancel)
    for name, row in zip_strict(names, structures):
        for u in uncertainty_rows:
            if u.get("name") == name:
                row["uncertainty"] = {k: v for k, v in u.items() if k not in ("name", "value")}
    timings |= {k: v for k, v in stage_time.items()}
    timings["report_total_excluding_network"] = time.perf_counter() - t_start - timings.get("segmentation_total", 0.0)

    geometry = ct.geometry_dict() | {
        "orientation": orientation_code(ct.direction),
        "hu_min": float(ct.array.min()),
        "hu_max": float(ct.array.max()),
        "dtype": str(ct.array.dtype),
    }
    data = {
        "title": title or f"SegDeep report: {ct_path.name if ct_path else 'CT'}",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "units": {"length": "mm", "volume": "mL", "coordinates": "LPS mm (report); mesh files in " + space},
        "input": {
            "ct": _file_facts(ct_path) or {"path": None, "bytes": None, "sha256": None, "source": "in-memory volume"},
            "geometry": geometry,
        },
        "segmentation": seg_facts,
        "plausibility": plausibility,
        "reference": {"file": ref_source, "segments": list(ref_seg.names), "matches": matches} if ref_seg is not None else None,
        "threshold": {
            "parameters": threshold_segment(Volume(ct.array[:2, :2, :2], ct.spacing), **threshold_kwargs).parameters,
            "structures": chosen,
            "selection": how,
            "margin_mm": float(threshold_margin_mm),
            "reason": THRESHOLD_REASON.format(margin=threshold_margin_mm),
        },
        "parameters": {
            "threshold": threshold_kwargs,
            "threshold_margin_mm": float(threshold_margin_mm),
            "surface_dice_tolerance_mm": float(tolerance_mm),
            "hd_percentile": 95.0,
            "mesh": {
                "format": export_format,
                "space": space,
                "smoothing_factor": float(smoothing),
                "decimation": float(decimation),
                "export_dir": str(Path(export_dir).resolve()) if export_dir is not None else None,
                "units": "mm",
            },
            "network": result.options.to_dict() if result is not None and result.options is not None else None,
            "ct_window_hu": list(figures.CT_WINDOW_HU),
        },
        "structures": structures,
        "timings_s": {"network_stages": network_timings, **timings},
        "software": _versions(),
        "metric_definitions": dict(DEFINITIONS),
        "metric_roles": dict(ROLES) | {"a": "the network's structure", "b": "the threshold (in the region) or the reference"},
        "notes": notes,
    }
    report(progress, 1.0, "facts collected", cancel)
    return ReportFacts(_json_ready(data), images, meshes, mesh_parts)


def _integer(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint8) if array.dtype == np.bool_ else array


def _centre(mask: np.ndarray) -> np.ndarray:
    """Centroid voxel of ``mask``, moved per axis to the nearest slice that contains the structure."""
    centre = np.round(ndi.center_of_mass(mask)).astype(int)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        centre[axis] = int(present[np.argmin(np.abs(present - centre[axis]))])
    return centre


def _match_reference(seg: Segmentation, ref: Segmentation | None, explicit: Mapping[str, str] | None) -> dict[str, str]:
    if ref is None:
        if explicit:
            raise ReportError("reference_labels given without a reference segmentation")
        return {}
    if explicit:
        for net, other in explicit.items():
            if net not in seg.names:
                raise ReportError(f"reference_labels: the segmentation has no structure {net!r} ({', '.join(seg.names)})")
            if other not in ref.names:
                raise ReportError(f"reference_labels: the reference has no segment {other!r} ({', '.join(ref.names)})")
        return dict(explicit)
    by_name = {_norm_name(n): n for n in ref.names}
    matches = {n: by_name[_norm_name(n)] for n in seg.names if _norm_name(n) in by_name}
    if not matches and len(seg.names) == 1 and len(ref.names) == 1:
        matches = {seg.names[0]: ref.names[0]}
    return matches
