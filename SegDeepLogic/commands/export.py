"""``segdeep export``: printable meshes (STL/OBJ/PLY) with a print-readiness report per segment."""

from __future__ import annotations

import argparse
import sys

from ..mesh import DEFAULT_SMOOTHING_FACTOR
from ..mesh_io import export_segments
from ._common import input_files, load_segmentation, number_in, progress_bar, validate_outputs, write_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export segments as watertight, smoothed meshes (STL/OBJ/PLY) with a print-readiness report",
        description="Build a closed surface per segment (flying edges, windowed-sinc smoothing that does not shrink, "
        "optional decimation), in physical millimetres, LPS by default (as Slicer's STL export) or RAS, and report "
        "whether each mesh is print-ready (watertight, manifold, shells, volume vs voxels, smoothing deviation).",
    )
    p.add_argument("segmentation", help="segmentation (.seg.nrrd or label map .nii.gz/.nrrd)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--format", choices=["stl", "obj", "ply"], default="stl", help="mesh format (default stl, binary)")
    p.add_argument("--segments", nargs="+", help="names (or label values) of the segments to export; default all")
    p.add_argument("--merge", action="store_true", help="one file with every segment instead of one file per segment")
    p.add_argument("--space", choices=["LPS", "RAS"], default="LPS", help="coordinate system of the files (default LPS)")
    p.add_argument(
        "--smoothing", type=number_in(0, 1), default=DEFAULT_SMOOTHING_FACTOR, help="smoothing factor 0..1 (default 0.5)"
    )
    p.add_argument(
        "--decimation",
        type=number_in(0, 1, high_open=True),
        default=0.0,
        help="fraction of triangles to remove, 0..1 (default 0)",
    )
    p.add_argument("--report", default="-", help="print-readiness report (.json or .csv); '-' prints JSON to stdout")
    p.add_argument("--overwrite", action="store_true", help="replace existing mesh files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    validate_outputs(
        {"-o": args.output, "--report": args.report},
        inputs=input_files(segmentation=args.segmentation),
        overwrite=args.overwrite,
        folders=("-o",),
    )
    seg = load_segmentation(args.segmentation)
    masks = seg.masks()
    if args.segments:
        chosen = {}
        for wanted in args.segments:
            match = [s.name for s in seg.segments if s.name == wanted or (wanted.isdigit() and s.value == int(wanted))]
            if not match:
                from ..segmentation_io import SegmentationFileError

                raise SegmentationFileError(
                    f"{args.segmentation} has no segment {wanted!r}; its segments are: {', '.join(seg.names)}"
                )
            chosen[match[0]] = masks[match[0]]
        masks = chosen
    with progress_bar("export", enabled=not args.no_progress) as progress:
        results = export_segments(
            masks,
            args.output,
            format=args.format,
            merge=args.merge,
            space=args.space,
            smoothing_factor=args.smoothing,
            decimation=args.decimation,
            overwrite=args.overwrite,
            progress=progress,
        )
    rows = [{"file": str(path), "units": "mm", **report.to_dict()} for path, report in results]
    fmt = "csv" if str(args.report).lower().endswith(".csv") else "json"
    write_table(rows, args.report, fmt, overwrite=args.overwrite)
    for row in rows:
        state = "print-ready" if row["print_ready"] else "NOT print-ready"
        print(
            f"{row['name']}: {row['triangle_count']} triangles, {row['volume_ml']:.1f} mL, {state} -> {row['file']}",
            file=sys.stderr,
        )
    return 0 if rows else 1
