"""``segdeep export``: printable meshes (STL/OBJ/PLY/3MF), optionally hollowed and cut, with a print-readiness report per part."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MeshError
from ..mesh import DEFAULT_SMOOTHING_FACTOR
from ..mesh_cut import CutPlane
from ..mesh_io import export_segments, safe_filename
from ..print_prep import PrintOptions, parse_points
from ..segmentation_io import SegmentationFileError
from ._common import input_files, load_segmentation, number_in, progress_bar, validate_outputs, write_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export segments as watertight, smoothed meshes (STL/OBJ/PLY/3MF; hollowed, cut) with a print-readiness report",
        description="Build a closed surface per segment (flying edges, windowed-sinc smoothing that does not shrink, "
        "optional decimation), in physical millimetres, LPS by default (as Slicer's STL export) or RAS, and report "
        "whether each mesh is print-ready (watertight, manifold, shells, volume vs voxels, smoothing deviation). For "
        "printing and surgical planning: one 3MF file with a named, coloured object per part (--format 3mf), hollowing "
        "with a wall in mm and drain holes, cutting planes with a kerf, one object per shell, wall-thickness and "
        "build-volume checks.",
    )
    p.add_argument("segmentation", help="segmentation (.seg.nrrd or label map .nii.gz/.nrrd)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument(
        "--format",
        choices=["stl", "obj", "ply", "3mf"],
        default="stl",
        help="mesh format (default stl, binary); 3mf: one file with one named, coloured object per part, in mm",
    )
    p.add_argument(
        "--name", default=None, help="file name (without suffix) of the 3MF or merged file (default: the input's name)"
    )
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
    prep = p.add_argument_group("print preparation (surgical planning)")
    prep.add_argument(
        "--hollow", type=number_in(0, low_open=True), metavar="MM", help="hollow each part, leaving a wall of MM millimetres"
    )
    prep.add_argument(
        "--voxel", type=number_in(0, low_open=True), metavar="MM", help="voxel size of the hollowing grid (default wall/4)"
    )
    prep.add_argument(
        "--drain-holes", type=number_in(0, integer=True), default=0, metavar="N", help="drain holes at the cavity's lowest points"
    )
    prep.add_argument(
        "--drain-diameter", type=number_in(0, low_open=True), default=3.0, metavar="MM", help="drain hole diameter (default 3 mm)"
    )
    prep.add_argument("--drain-at", action="append", metavar="X,Y,Z", help="drill a drain hole towards this point (mm, --space)")
    prep.add_argument(
        "--cut",
        action="append",
        metavar="PX,PY,PZ:NX,NY,NZ",
        help="cutting plane through a point with a normal (mm, in --space); repeat for several planes; "
        "write --cut=-10,... when the point starts with a minus sign",
    )
    prep.add_argument("--kerf", type=number_in(0), default=0.0, metavar="MM", help="saw gap removed around each cutting plane")
    prep.add_argument("--per-shell", action="store_true", help="one object (or file) per connected shell")
    prep.add_argument(
        "--thin",
        type=number_in(0, low_open=True),
        metavar="MM",
        help="measure wall thickness; report regions thinner than MM (e.g. 0.8)",
    )
    prep.add_argument(
        "--prep-segments",
        nargs="+",
        metavar="NAME",
        help="apply --hollow, --cut and --per-shell only to these segments (default: all); checks apply to all",
    )
    prep.add_argument(
        "--build-volume", type=number_in(0, low_open=True), nargs=3, metavar=("X", "Y", "Z"), help="printer build volume (mm)"
    )
    p.add_argument("--report", default="-", help="print-readiness report (.json or .csv); '-' prints JSON to stdout")
    p.add_argument("--overwrite", action="store_true", help="replace existing mesh files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    name = args.name or Path(args.segmentation).name.split(".")[0]
    single = None  # the one file of --merge or --format 3mf, known before any work
    if args.merge or args.format == "3mf":
        single = Path(args.output) / f"{safe_filename(name, default='segmentation')}.{args.format}"
    validate_outputs(
        {"-o": args.output, "-o (the mesh file)": single, "--report": args.report},
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
                raise SegmentationFileError(
                    f"{args.segmentation} has no segment {wanted!r}; its segments are: {', '.join(seg.names)}"
                )
            chosen[match[0]] = masks[match[0]]
        masks = chosen
    planes = tuple(CutPlane.parse(text, space=args.space, name=f"cut{i + 1}") for i, text in enumerate(args.cut or []))
    if (args.drain_holes or args.drain_at) and args.hollow is None:
        raise MeshError("drain holes need --hollow (a wall thickness)")
    options = PrintOptions(
        wall_mm=args.hollow,
        voxel_mm=args.voxel,
        drain_holes=args.drain_holes,
        drain_diameter_mm=args.drain_diameter,
        drain_points=parse_points(args.drain_at),
        planes=planes,
        kerf_mm=args.kerf,
        per_shell=args.per_shell,
        thin_threshold_mm=args.thin,
        build_volume_mm=tuple(args.build_volume) if args.build_volume else None,
    )
    print_options: PrintOptions | dict[str, PrintOptions] = options
    if args.prep_segments:
        unknown = [n for n in args.prep_segments if n not in masks]
        if unknown:
            raise MeshError(f"--prep-segments: no segment {unknown[0]!r} to export; exported segments: {', '.join(masks)}")
        checks_only = PrintOptions(thin_threshold_mm=options.thin_threshold_mm, build_volume_mm=options.build_volume_mm)
        print_options = {n: options if n in args.prep_segments else checks_only for n in masks}
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
            merged_name=name,
            colors={s.name: s.color for s in seg.segments if s.color is not None},
            print_options=print_options,
            progress=progress,
        )
    rows = [{"file": str(path), "units": "mm", **report.to_dict()} for path, report in results]
    fmt = "csv" if str(args.report).lower().endswith(".csv") else "json"
    write_table(rows, args.report, fmt, overwrite=args.overwrite)
    for row in rows:
        state = "print-ready" if row["print_ready"] else "NOT print-ready"
        extra = ""
        if row.get("hollowing"):
            h = row["hollowing"]
            extra += f", hollow: wall {h['wall_mm']:g} mm (measured min {h['measured_wall_min_mm']:.2f}), saved {h['saved_volume_ml']:.1f} mL"
        if row.get("min_wall_thickness_mm") is not None:
            extra += f", min wall {row['min_wall_thickness_mm']:.2f} mm, {len(row['thin_regions'])} thin region(s)"
        if row.get("fits_build_volume") is not None:
            extra += ", fits the build volume" if row["fits_build_volume"] else ", does NOT fit the build volume as oriented"
        print(
            f"{row['name']}: {row['triangle_count']} triangles, {row['volume_ml']:.1f} mL, {state}{extra} -> {row['file']}",
            file=sys.stderr,
        )
    return 0 if rows else 1
