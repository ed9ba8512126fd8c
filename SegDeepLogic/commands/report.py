"""``segdeep report``: a self-contained HTML report (and JSON facts) for one CT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..compare import DEFAULT_ROI_MARGIN_MM
from ..mesh import DEFAULT_SMOOTHING_FACTOR
from ._common import input_files, number_in, progress_bar, validate_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="per-case HTML report: slices with contours, mesh coloured by distance, metrics, print-readiness, provenance",
        description="Segment a CT with the network (or take an existing segmentation), compare every bone-like structure "
        "with a HU threshold in a region around it (and every structure with a reference segmentation), build its "
        "printable mesh, and write one self-contained HTML file (pictures embedded) plus a JSON file with the same "
        "facts. Both files appear together or not at all.",
    )
    p.add_argument("ct", help="CT volume (NRRD, NIfTI, MHA/MHD or a DICOM series folder)")
    p.add_argument("-o", "--output", required=True, help="report file (.html)")
    p.add_argument("--series", default=None, metavar="UID", help="DICOM folder: the series to report on (default the largest)")
    p.add_argument("--json", default=None, help="JSON facts file (default: the report's name with .json)")
    p.add_argument("--model", default=None, help="model package folder or .zip (default: the first bundled one)")
    p.add_argument(
        "--segmentation", default=None, help="use this segmentation (.seg.nrrd or label map) instead of running the network"
    )
    p.add_argument("--uncertainty", default=None, help="uncertainty map to show with --segmentation (from segdeep segment)")
    p.add_argument("--reference", default=None, help="reference segmentation to compare with (e.g. clinical contours)")
    p.add_argument(
        "--reference-label",
        action="append",
        default=None,
        metavar="STRUCTURE=SEGMENT",
        help="pair a network structure with a reference segment (default: match by name); repeatable",
    )
    p.add_argument("--threshold", default="bone", help="threshold: a preset (bone, ...) or LOWER:UPPER in HU (default bone)")
    p.add_argument(
        "--threshold-structures",
        nargs="+",
        default=None,
        metavar="NAME",
        help="structures compared with the threshold (default: bone-like names such as bone, mandible, skull)",
    )
    p.add_argument(
        "--threshold-margin-mm",
        type=number_in(0),
        default=DEFAULT_ROI_MARGIN_MM,
        help=f"threshold region: the structure grown by this (mm; default {DEFAULT_ROI_MARGIN_MM:g}, as segdeep compare "
        "--threshold and the Slicer panel)",
    )
    p.add_argument(
        "--tolerance-mm", type=number_in(0, low_open=True), default=1.0, help="surface Dice tolerance in mm (default 1)"
    )
    p.add_argument("--export-dir", default=None, help="also write each structure's mesh into this folder (with the report)")
    p.add_argument(
        "--export-format",
        choices=["stl", "obj", "ply", "3mf"],
        default="stl",
        help="mesh format (default stl); 3mf: one file structures.3mf with a named, coloured object per structure",
    )
    p.add_argument("--space", choices=["LPS", "RAS"], default="LPS", help="coordinate system of the mesh files (default LPS)")
    p.add_argument(
        "--smoothing", type=number_in(0, 1), default=DEFAULT_SMOOTHING_FACTOR, help="mesh smoothing factor 0..1 (default 0.5)"
    )
    p.add_argument(
        "--decimation",
        type=number_in(0, 1, high_open=True),
        default=0.0,
        help="fraction of mesh triangles to remove, 0..1 (default 0)",
    )
    p.add_argument("--device", default="auto", help="network device: auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8x slower)")
    p.add_argument("--refine", action="store_true", help="refine bone labels at the CT's resolution with a HU threshold")
    p.add_argument("--threads", type=number_in(1, integer=True), default=None, help="CPU threads for the network")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="show the network's labels even if the out-of-distribution check says the CT is not the anatomy the "
        "model was trained on (default: withhold them; the report says what was withheld)",
    )
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _pairs(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    from ..report.facts import ReportError

    out = {}
    for item in items:
        if "=" not in item:
            raise ReportError(f"--reference-label expects STRUCTURE=SEGMENT, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from ..options import SegmentOptions
    from ..report import ReportOptions, build_report, write_report

    html_path = Path(args.output)
    json_path = Path(args.json) if args.json else html_path.with_suffix(".json")
    validate_outputs(  # before any work
        {
            "-o": html_path,
            "--json": json_path,
            "--export-dir": args.export_dir,
            "--export-dir (the 3MF file)": (
                Path(args.export_dir) / "structures.3mf" if args.export_dir and args.export_format == "3mf" else None
            ),
        },
        inputs=input_files(
            CT=args.ct, model=args.model, segmentation=args.segmentation, uncertainty=args.uncertainty, reference=args.reference
        ),
        overwrite=args.overwrite,
        folders=("--export-dir",),
    )
    options = SegmentOptions(
        device=args.device, tta=args.tta, refine=args.refine, allow_mismatch=bool(args.allow_mismatch), num_threads=args.threads
    )
    with progress_bar("report", enabled=not args.no_progress) as progress:
        facts = build_report(
            args.ct,
            args.segmentation,
            ReportOptions(
                threshold=args.threshold,
                threshold_structures=args.threshold_structures,
                threshold_margin_mm=args.threshold_margin_mm,
                tolerance_mm=args.tolerance_mm,
                export_dir=args.export_dir,
                export_format=args.export_format,
                space=args.space,
                smoothing=args.smoothing,
                decimation=args.decimation,
                title=args.title,
            ),
            model=args.model,
            segment_options=options,
            series_uid=args.series,
            uncertainty=args.uncertainty,
            reference=args.reference,
            reference_labels=_pairs(args.reference_label),
            progress=progress,
        )
    write_report(facts, html_path, json_path, overwrite=args.overwrite)
    for s in facts.data["structures"]:
        thr = s.get("threshold_comparison") or {}
        extra = f", Dice vs threshold {thr['dice']:.3f}" if thr.get("applies") else ""
        print(f"{s['name']}: {s.get('volume_ml', 0.0):.1f} mL{extra}", file=sys.stderr)
    print(f"report -> {html_path}, {json_path}", file=sys.stderr)
    return 0
