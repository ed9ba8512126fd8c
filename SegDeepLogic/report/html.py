"""Render :class:`~SegDeepLogic.report.facts.ReportFacts` as one self-contained HTML file and write it.

The page has no external resources: pictures are PNG ``data:`` URIs, the style is inline, and
a Content-Security-Policy forbids loading anything else (so a report that renders correctly
is known to be complete). Every number in a table carries its exact value and its place in the
JSON facts (``data-key="structures.0.threshold_comparison.dice" data-value="0.9123..."``);
the text shows it rounded.

A network result's out-of-distribution check (``facts.data["plausibility"]``) is never hidden: a
banner right under the title shows its verdict (red for mismatch, amber for caution, green for
ok, grey for unchecked) with every finding, a section lists the findings and image features,
and each structure's uncertainty section repeats the verdict with the findings about it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..atomic import atomic_outputs, atomic_path, write_all
from ..mesh_3mf import PrintPart, write_3mf
from ..mesh_io import write_mesh
from ..verdicts import PLAUSIBILITY_COLORS
from .facts import ReportFacts

__all__ = ["CSP", "render_html", "write_report"]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""Content-Security-Policy of the report: inline style and data: images only."""

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#1d2330;font-size:14px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:2px solid #d7dce5;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#5b6575}.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:6px 10px}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d7dce5;padding:3px 8px;text-align:left;vertical-align:top}
.grid{display:flex;flex-wrap:wrap;gap:4px 28px;align-items:flex-start}.grid h3{margin-top:8px}
th{background:#eef1f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.bad{color:#b00020;font-weight:600}td.good{color:#137333}img{max-width:100%;border:1px solid #d7dce5;margin:4px 0}
figure{margin:8px 0 16px}figcaption{color:#5b6575;font-size:12.5px}pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:6px;vertical-align:-1px}
.ood{border:1px solid;border-left-width:8px;border-radius:4px;padding:8px 14px;margin:12px 0}.ood p{margin:4px 0}
.ood ul{margin:4px 0 4px 18px;padding:0}.ood-title{font-size:16px}.ood-small{padding:4px 10px;margin:6px 0;font-size:13px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:700;border:1px solid}
"""
_STYLE += (
    "".join(  # the verdict banners: the colours of SegDeepLogic.verdicts, as the Slicer panel's
        f".ood-{verdict}{{background:{background};border-color:{border};color:{text}}}"
        for verdict, (background, border, text) in PLAUSIBILITY_COLORS.items()
    )
    + "\n"
)

_COMPARISON_ROWS = (
    ("dice", "Dice"),
    ("jaccard", "Jaccard"),
    ("hd_mm", "Hausdorff distance (mm)"),
    ("hd95_mm", "HD95 (mm)"),
    ("assd_mm", "ASSD (mm)"),
    ("surface_dice", "Surface Dice"),
    ("tolerance_mm", "Surface Dice tolerance (mm)"),
    ("sensitivity", "Sensitivity"),
    ("precision", "Precision"),
    ("volume_a_ml", "Volume, network (mL)"),
    ("volume_b_ml", "Volume, compared mask (mL)"),
    ("volume_difference_ml", "Volume difference (mL)"),
    ("only_a_ml", "Only network (mL)"),
    ("only_b_ml", "Only compared mask (mL)"),
)

_MESH_ROWS = (
    ("print_ready", "Print-ready"),
    ("watertight", "Watertight"),
    ("manifold", "Manifold"),
    ("edge_manifold", "Edge-manifold"),
    ("vertex_manifold", "Vertex-manifold"),
    ("consistently_oriented", "Consistently oriented"),
    ("outward_normals", "Outward normals"),
    ("shell_count", "Shells"),
    ("euler_characteristic", "Euler characteristic"),
    ("boundary_edge_count", "Boundary edges"),
    ("non_manifold_edge_count", "Non-manifold edges"),
    ("non_manifold_vertex_count", "Non-manifold vertices"),
    ("degenerate_triangle_count", "Degenerate triangles"),
    ("vertex_count", "Vertices"),
    ("triangle_count", "Triangles"),
    ("volume_ml", "Mesh volume (mL)"),
    ("mask_volume_ml", "Mask volume (mL)"),
    ("volume_difference_percent", "Volume difference (%)"),
    ("surface_area_mm2", "Surface area (mm²)"),
    ("deviation_max_mm", "Max deviation from voxel surface (mm)"),
    ("deviation_mean_mm", "Mean deviation from voxel surface (mm)"),
    ("smoothing_factor", "Smoothing factor"),
    ("decimation", "Decimation"),
    ("space", "Coordinate system"),
    ("file", "File"),
)

_VERDICT_LABELS = {"mismatch": "MISMATCH", "caution": "CAUTION", "ok": "OK", "unchecked": "NOT CHECKED"}

_FEATURE_ROWS = (
    ("body_area_cm2", "Median axial body cross-section (cm²)"),
    ("bone_fraction", "Bone fraction of the body (≥ 300 HU)"),
    ("fat_fraction", "Fat fraction of the body (-190 to -30 HU)"),
    ("soft_tissue_fraction", "Soft-tissue fraction of the body (-30 to 150 HU)"),
    ("air_fraction", "Air fraction inside the body outline (< -400 HU)"),
)

_UNCERTAINTY_ROWS = (
    ("mean_entropy_inside", "Mean uncertainty inside"),
    ("mean_entropy_boundary", "Mean uncertainty at the boundary"),
    ("uncertain_fraction", "Uncertain fraction (structure + band)"),
    ("uncertain_volume_mm3", "Uncertain volume (mm³)"),
    ("uncertain_centroid_lps", "Where (LPS mm)"),
    ("mean_tta_variance_inside", "Mean TTA variance inside"),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):  # a matrix: one bracket per row
            return " ".join("[" + _fmt(v) + "]" for v in value)
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cell(value: Any, key: str | None = None, text: str | None = None) -> str:
    """A ``<td>`` with the rounded value (or ``text``), its exact JSON value and its key in the facts."""
    cls = "num" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    if isinstance(value, bool):
        cls = "good" if value else "bad"
    attrs = f' class="{cls}"' if cls else ""
    if key is not None:
        attrs += f' data-key="{html.escape(key)}" data-value="{html.escape(json.dumps(value), quote=True)}"'
    return f"<td{attrs}>{html.escape(_fmt(value) if text is None else text)}</td>"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_table(items: Iterable[tuple[str, Any, str | None]], fmt: Callable[[Any], str] | None = None) -> str:
    return _table(
        ("", "value"), ([f"<th>{html.escape(label)}</th>", _cell(v, k, fmt(v) if fmt else None)] for label, v, k in items)
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _verdict(plausibility: dict[str, Any]) -> tuple[str, str]:
    """CSS class suffix and label of a verdict (an unknown verdict is shown as it is, in grey)."""
    verdict = str(plausibility.get("verdict"))
    return (verdict if verdict in _VERDICT_LABELS else "unchecked"), _VERDICT_LABELS.get(verdict, verdict.upper())


def _plausibility_banner(plausibility: dict[str, Any]) -> str:
    """The verdict of the out-of-distribution check with every finding, for the top of the page."""
    cls, label = _verdict(plausibility)
    e = html.escape
    findings = "".join(f"<li>{e(f.get('message', ''))}</li>" for f in plausibility.get("findings") or [])
    role = ' role="alert"' if cls in ("mismatch", "caution") else ""
    return (
        f'<div class="ood ood-{cls}" id="plausibility-banner" data-verdict="{e(str(plausibility.get("verdict")))}"{role}>'
        f'<p class="ood-title"><b>Out-of-distribution check: {e(label)}</b>. {e(plausibility.get("headline", ""))}</p>'
        + (f"<ul>{findings}</ul>" if findings else "")
        + '<p><a href="#plausibility">How the CT and the result compare with the training data</a></p></div>'
    )


def _plausibility_section(plausibility: dict[str, Any]) -> str:
    """The out-of-distribution check: verdict, definition, every finding, the image features."""
    cls, label = _verdict(plausibility)
    e = html.escape
    out = [
        '<h2 id="plausibility">Out-of-distribution check</h2>',
        f'<p><span class="badge ood-{cls}">{e(label)}</span> {e(plausibility.get("headline", ""))}</p>',
        f'<p class="muted">{e(plausibility.get("definition", ""))}</p>',
    ]
    findings = plausibility.get("findings") or []
    if findings:
        rows = []
        for i, f in enumerate(findings):
            p = f"plausibility.findings.{i}"
            about = f.get("structure") or f.get("feature") or ", ".join(f.get("core_structures") or []) or ""
            rows.append(
                [
                    _cell(f.get("check"), f"{p}.check"),
                    _cell(f.get("severity"), f"{p}.severity"),
                    f"<td>{e(str(about))}</td>",
                    _cell(f.get("message"), f"{p}.message"),
                ]
            )
        out.append(_table(("check", "severity", "about", "finding"), rows, "findings"))
    else:
        out.append("<p>No finding: every checked value is within the range of the training data.</p>")
    features = plausibility.get("features")
    if features:
        out.append("<h3>Image features (on the model grid)</h3>")
        labels = dict(_FEATURE_ROWS)
        keys = [k for k, _ in _FEATURE_ROWS if k in features] + [k for k in features if k not in labels]
        out.append(_kv_table((labels.get(k, k), features[k], f"plausibility.features.{k}") for k in keys))
    return "\n".join(out)


def _structure_plausibility(name: str, plausibility: dict[str, Any] | None) -> str:
    """The verdict of the whole result, with the findings about this structure."""
    if not plausibility:
        return ""
    cls, label = _verdict(plausibility)
    e = html.escape
    own = [
        f for f in plausibility.get("findings") or [] if f.get("structure") == name or name in (f.get("core_structures") or [])
    ]
    items = "".join(f"<li>{e(f.get('message', ''))}</li>" for f in own)
    return (
        f'<div class="ood ood-small ood-{cls}" data-structure="{e(name)}"><b>Out-of-distribution check: {e(label)}</b> '
        '(the whole result; <a href="#plausibility">details</a>)' + (f"<ul>{items}</ul>" if items else "") + "</div>"
    )


def _comparison_table(p: str, s: dict[str, Any]) -> str:
    """Metrics of the network's structure vs the threshold (in its region) and vs the reference."""
    thr, ref = s.get("threshold_comparison", {}), s.get("reference_comparison")
    columns = []
    if thr.get("applies"):
        columns.append((f"vs threshold ({thr['region']})", thr, f"{p}.threshold_comparison"))
    if ref is not None:
        columns.append((f"vs reference “{s.get('reference_segment', '')}”", ref, f"{p}.reference_comparison"))
    if not columns:
        return ""
    header = ["metric", *[c[0] for c in columns]]
    rows = [
        [f"<th>{html.escape(label)}</th>", *[_cell(c[1].get(key), f"{c[2]}.{key}") for c in columns]]
        for key, label in _COMPARISON_ROWS
    ]
    notes = "".join(f'<p class="warn">{html.escape(n)}</p>' for c in columns for n in c[1].get("notes") or [])
    return _table(header, rows) + notes


def _structure_section(i: int, s: dict[str, Any], images: dict[str, bytes], data: dict[str, Any]) -> str:
    p = f"structures.{i}"
    color = s.get("color") or [0.5, 0.5, 0.5]
    rgb = ",".join(str(round(255 * c)) for c in color)
    out = [f'<h2 id="structure-{i}"><span class="swatch" style="background:rgb({rgb})"></span>{html.escape(s["name"])}</h2>']
    if s.get("empty"):
        out.append('<p class="warn">The network found no voxel of this structure.</p>')
        out.append(_structure_plausibility(s["name"], data.get("plausibility")))
        if s.get("reference_comparison"):
            out.append(_comparison_table(p, s))
        return "\n".join(out)
    figures: list[str] = []
    mesh = s.get("mesh") or {}
    for item in s.get("images", []):
        png = images.get(item["id"])
        if png is None:
            continue
        if item["kind"] == "slices":
            c = ", ".join(f"{v:.1f}" for v in item["centre_lps_mm"])
            caption = (
                f"Axial, coronal and sagittal slices through ({c}) LPS mm (the structure's centroid, moved to the nearest "
                "slice holding the structure), radiological convention, physical aspect ratio, CT window "
                f"{data['parameters']['ct_window_hu'][0]:g}..{data['parameters']['ct_window_hu'][1]:g} HU. Top row: network "
                "contour (yellow), the compared mask (cyan threshold or green reference), disagreement filled (red: only "
                "network, blue: only the compared mask), threshold region dotted. Bottom row (when available): the "
                "network's uncertainty."
            )
        else:
            coloured = item.get("coloured_by")
            caption = (
                f"The printable mesh (the surface exported with these settings, {_fmt(mesh.get('triangle_count'))} "
                "triangles; large meshes are drawn from a random subset of 80,000), seen from the front and from the left"
            ) + (
                f", coloured by {html.escape(coloured)}: red outside, blue inside."
                if coloured
                else ", no surface to compare with."
            )
        figures.append(f"<figure>{_img(png, item['id'])}<figcaption>{caption}</figcaption></figure>")
    out.append('<div class="grid"><div><h3>Structure</h3>')
    out.append(
        _kv_table(
            [
                ("Label value", s["value"], f"{p}.value"),
                ("Volume (mL)", s["volume_ml"], f"{p}.volume_ml"),
                ("Voxels", s["voxels"], f"{p}.voxels"),
                ("Centroid (LPS mm)", s["centroid_lps_mm"], f"{p}.centroid_lps_mm"),
            ]
        )
    )
    thr = s.get("threshold_comparison", {})
    out.append("<h3>Comparison (A = network, B = threshold or reference)</h3>")
    out.append(_comparison_table(p, s))
    if not thr.get("applies"):
        out.append(
            '<p class="muted">No threshold comparison: this structure is not bone-like (see “Threshold comparison” '
            "above), so a HU threshold says nothing about it.</p>"
        )
    dist = s.get("surface_distance")
    if dist:
        out.append(f"<h3>Signed surface distance of the mesh to the {html.escape(dist['to'])} surface</h3>")
        out.append(
            _kv_table(
                [
                    ("Mean signed (mm)", dist["mean_mm"], f"{p}.surface_distance.mean_mm"),
                    ("Mean |d| (mm)", dist["mean_abs_mm"], f"{p}.surface_distance.mean_abs_mm"),
                    ("95th percentile |d| (mm)", dist["p95_abs_mm"], f"{p}.surface_distance.p95_abs_mm"),
                    ("Max |d| (mm)", dist["max_abs_mm"], f"{p}.surface_distance.max_abs_mm"),
                    (
                        "Fraction of vertices within 1 mm",
                        dist["fraction_within_1mm"],
                        f"{p}.surface_distance.fraction_within_1mm",
                    ),
                ]
            )
        )
    out.append("</div><div>")
    mesh = s.get("mesh")
    if mesh:
        out.append("<h3>Mesh print-readiness</h3>")
        out.append(_kv_table((label, mesh.get(key), f"{p}.mesh.{key}") for key, label in _MESH_ROWS if key in mesh))
    unc = s.get("uncertainty")
    if unc or data.get("plausibility"):
        out.append("<h3>Uncertainty (normalised entropy 0..1)</h3>")
        out.append(_structure_plausibility(s["name"], data.get("plausibility")))
    if unc:
        out.append(_kv_table((label, unc.get(key), f"{p}.uncertainty.{key}") for key, label in _UNCERTAINTY_ROWS if key in unc))
    out.append("</div></div>")
    out[1:1] = figures
    return "\n".join(out)


def render_html(facts: ReportFacts) -> str:
    """The report as one self-contained HTML page (pictures embedded as PNG data URIs)."""
    d = facts.data
    e = html.escape
    seg = d["segmentation"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(d['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(d['title'])}</h1>",
        _plausibility_banner(d["plausibility"]) if d.get("plausibility") else "",
        f'<p class="muted">Created {e(d["created_utc"])} by SegDeep {e(str(d["software"]["segdeep"]))}. Lengths in mm, '
        f"volumes in mL, coordinates {e(d['units']['coordinates'])}.</p>",
        '<p class="warn">Research software. Check every structure against the images before using a mesh for printing '
        "or any clinical decision.</p>",
    ]
    # summary
    rows = []
    for i, s in enumerate(d["structures"]):
        p = f"structures.{i}"
        thr = s.get("threshold_comparison") or {}
        ref = s.get("reference_comparison") or {}
        rows.append(
            [
                f'<td><a href="#structure-{i}">{e(s["name"])}</a></td>',
                _cell(s.get("volume_ml"), f"{p}.volume_ml"),
                _cell(thr.get("dice"), f"{p}.threshold_comparison.dice") if thr.get("applies") else "<td>not applicable</td>",
                _cell(thr.get("hd95_mm"), f"{p}.threshold_comparison.hd95_mm") if thr.get("applies") else "<td></td>",
                _cell(ref.get("dice"), f"{p}.reference_comparison.dice") if ref else "<td></td>",
                _cell(ref.get("hd95_mm"), f"{p}.reference_comparison.hd95_mm") if ref else "<td></td>",
                _cell((s.get("mesh") or {}).get("print_ready"), f"{p}.mesh.print_ready") if s.get("mesh") else "<td></td>",
                _cell((s.get("uncertainty") or {}).get("mean_entropy_inside"), f"{p}.uncertainty.mean_entropy_inside")
                if s.get("uncertainty")
                else "<td>n/a</td>",
            ]
        )
    parts.append("<h2>Summary</h2>")
    parts.append(
        _table(
            (
                "structure",
                "volume (mL)",
                "Dice vs threshold",
                "HD95 vs threshold (mm)",
                "Dice vs reference",
                "HD95 vs reference (mm)",
                "print-ready",
                "mean uncertainty",
            ),
            rows,
            "summary",
        )
    )
    if d.get("plausibility"):
        parts.append(_plausibility_section(d["plausibility"]))
    thr = d["threshold"]
    tp = thr["parameters"]
    rng = f"{_fmt(tp.get('lower_hu'))} .. {_fmt(tp.get('upper_hu'))} HU" + (
        f" (preset “{e(tp['preset'])}”)" if tp.get("preset") else ""
    )
    applies = ", ".join(thr["structures"]) or "none"
    parts.append("<h2>Threshold comparison</h2>")
    parts.append(f"<p>Threshold {e(rng)}. Applies to: <b>{e(applies)}</b> ({e(thr['selection'])}).</p><p>{e(thr['reason'])}</p>")
    if d.get("reference"):
        r = d["reference"]
        m = ", ".join(f"{k} ↔ {v}" for k, v in r["matches"].items()) or "no structure matched"
        parts.append(f"<p>Reference segmentation {e(str((r.get('file') or {}).get('path', '(in memory)')))}: {e(m)}.</p>")
    for note in d.get("notes", []):
        parts.append(f'<p class="warn">{e(note)}</p>')
    for i, s in enumerate(d["structures"]):
        parts.append(_structure_section(i, s, facts.images, d))

    # provenance
    parts.append("<h2>Provenance</h2><h3>Input CT</h3>")
    g = d["input"]["geometry"]
    ct = d["input"].get("ct") or {}
    parts.append(
        _kv_table(
            [
                ("File", ct.get("path"), "input.ct.path"),
                ("SHA-256", ct.get("sha256"), "input.ct.sha256"),
                ("Size (i, j, k voxels)", g["size_ijk"], "input.geometry.size_ijk"),
                ("Spacing (mm)", g["spacing_mm"], "input.geometry.spacing_mm"),
                ("Origin (LPS mm)", g["origin_lps_mm"], "input.geometry.origin_lps_mm"),
                ("Direction (columns i, j, k in LPS)", g["direction_lps"], "input.geometry.direction_lps"),
                ("Orientation code", g["orientation"], "input.geometry.orientation"),
                ("Coordinate system", g["coordinate_system"], "input.geometry.coordinate_system"),
                ("HU range", [g["hu_min"], g["hu_max"]], None),
            ]
        )
    )
    parts.append("<h3>Segmentation</h3>")
    model = seg.get("model") or {}
    mk = "segmentation.model." if seg.get("model") else None

    def key(name: str) -> str | None:  # a result given to the report records fewer model facts
        return mk + name if mk and name in model else None

    parts.append(
        _kv_table(
            [
                ("Source", seg["source"], "segmentation.source"),
                ("File", (seg.get("file") or {}).get("path"), None),
                ("Model", model.get("name"), key("name")),
                ("Model version", model.get("version"), key("version")),
                ("Architecture", model.get("architecture"), None),
                ("Model package", model.get("path"), None),
                ("Weights SHA-256", model.get("weights_sha256"), key("weights_sha256")),
                ("Device", seg.get("device"), "segmentation.device"),
                ("Precision", seg.get("precision"), "segmentation.precision"),
                ("Fallbacks", seg.get("fallbacks") or "none", None),
                *(
                    [("Out-of-distribution check", d["plausibility"]["verdict"], "plausibility.verdict")]
                    if d.get("plausibility")
                    else []
                ),
            ]
        )
    )
    parts.append("<h3>Timings (s)</h3>")
    t = d["timings_s"]
    items = [(f"network: {k}", v, f"timings_s.network_stages.{k}") for k, v in t.get("network_stages", {}).items()]
    items += [(k.replace("_", " "), v, f"timings_s.{k}") for k, v in t.items() if k != "network_stages"]
    parts.append(_kv_table(items, lambda v: f"{v:.3f}"))
    parts.append("<h3>Parameters</h3>")
    parameters = {k: d["parameters"][k] for k in d["parameters"]} | {"threshold_segment": tp}
    if seg.get("parameters"):
        parameters["segment_volume"] = seg["parameters"]
    parts.append(f"<pre>{e(json.dumps(parameters, indent=2))}</pre>")
    parts.append("<h3>Software</h3>")
    parts.append(_kv_table((k, v, f"software.{k}") for k, v in d["software"].items()))
    parts.append("<h3>Metric definitions</h3>")
    parts.append(
        _table(("metric", "definition"), ([f"<th>{e(k)}</th>", f"<td>{e(v)}</td>"] for k, v in d["metric_definitions"].items()))
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    facts: ReportFacts,
    html_path: str | os.PathLike,
    json_path: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write the HTML report, its JSON facts and the meshes to export: all of them or none.

    Parameters
    ----------
    facts : ReportFacts
        From :func:`~SegDeepLogic.report.build_report`.
    html_path : path-like
        The HTML file.
    json_path : path-like, optional
        The JSON file (default: ``html_path`` with the suffix ``.json``).
    overwrite : bool
        Replace existing files; default False: ``FileExistsError`` before anything is written.

    Returns
    -------
    (Path, Path)
        The HTML and JSON paths.
    """
    html_file = Path(html_path)
    json_file = Path(json_path) if json_path is not None else html_file.with_suffix(".json")
    if html_file.resolve() == json_file.resolve():
        raise ValueError(f"the HTML and JSON paths are the same file: {html_file}")
    page = render_html(facts)
    text = json.dumps(facts.data, indent=2, allow_nan=False) + "\n"
    writers: list[tuple[Path, Callable[[Path], Any]]] = [
        (html_file, lambda tmp: write_all(tmp, page.encode("utf-8"))),
        (json_file, lambda tmp: write_all(tmp, text.encode("utf-8"))),
    ]
    three_mf: dict[Path, list] = {}
    for index, (target, mesh) in enumerate(facts.meshes):
        if target.suffix.lower() == ".3mf":  # one file, one named, coloured object per structure
            name, color = facts.mesh_parts[index] if index < len(facts.mesh_parts) else (target.stem, None)
            three_mf.setdefault(target, []).append(PrintPart(name, mesh, color))
            continue
        writers.append((target, lambda tmp, mesh=mesh: write_mesh(mesh, tmp, overwrite=True)))
    for target, parts in three_mf.items():
        writers.append((target, lambda tmp, parts=parts: write_3mf(parts, tmp, title="SegDeep report", overwrite=True)))
    targets = [t for t, _ in writers]
    if not overwrite:
        for target in targets:
            if target.exists():
                raise FileExistsError(f"refusing to overwrite existing file: {target} (pass overwrite=True / --overwrite)")
    existed = {t: t.exists() for t in targets}
    try:
        with atomic_outputs(), contextlib.ExitStack() as stack:  # every file is put in place only once all are written
            for target, write in writers:
                write(stack.enter_context(atomic_path(target, overwrite=overwrite)))
    except BaseException:
        for target in targets:  # a rename failed part-way: remove what this call created
            if not existed[target] and target.exists():
                target.unlink()
        raise
    return html_file, json_file
