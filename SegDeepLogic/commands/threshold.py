"""``segdeep threshold``: global Hounsfield-unit threshold segmentation of a CT."""

from __future__ import annotations

import argparse
import sys

from ..io import read_volume
from ..segmentation_io import SegmentInfo
from ..threshold import PRESETS, threshold_segment
from ._common import input_files, number_in, progress_bar, save_segmentation, segmentation_targets, validate_outputs, write_table

BONE_COLOR = (0.945, 0.839, 0.569)  # Slicer's "bone" colour
BONE_TERMINOLOGY = "SCT^272673000^Bone"  # Slicer's General Anatomy "Tissue / Bone" (full entry built by SegmentInfo)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "threshold",
        help="segment a CT with a global HU threshold (presets, automatic methods, clean-up in mm³)",
        description="Threshold a CT in Hounsfield units and write a Slicer .seg.nrrd or a NIfTI label map. "
        f"Presets: {', '.join(f'{k} ({v.lower_hu:g}..{v.upper_hu:g} HU)' for k, v in PRESETS.items())}.",
    )
    p.add_argument("ct", help="CT volume (NRRD, NIfTI, MHA/MHD or a DICOM series folder)")
    p.add_argument("-o", "--output", required=True, help="output segmentation: .seg.nrrd (3D Slicer) or .nii.gz label map")
    rng = p.add_mutually_exclusive_group()
    rng.add_argument("--preset", choices=sorted(PRESETS), help="named HU range (default: bone)")
    rng.add_argument("--method", choices=["otsu", "li", "yen", "triangle", "isodata"], help="automatic lower threshold")
    rng.add_argument("--lower-hu", type=float, help="lower HU bound (inclusive)")
    p.add_argument("--upper-hu", type=float, help="upper HU bound (inclusive); with --lower-hu or --method")
    p.add_argument("--keep-largest", action="store_true", help="keep only the largest connected component")
    p.add_argument("--min-island-mm3", type=number_in(0), default=0.0, help="remove components smaller than this (mm³)")
    p.add_argument("--fill-holes", action="store_true", help="fill enclosed cavities (3D)")
    p.add_argument("--name", default=None, help="segment name (default: the preset or method name)")
    p.add_argument("--json", default=None, help="write the resolved thresholds and volume as JSON here ('-' = stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--allow-non-hu",
        action="store_true",
        help="threshold an image that cannot be a CT in HU (nothing below -200: raw scanner values, MR) as it is",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    preset = args.preset
    if preset is None and args.method is None and args.lower_hu is None and args.upper_hu is None:
        preset = "bone"
    validate_outputs(
        {**segmentation_targets("-o", args.output), "--json": args.json},
        inputs=input_files(CT=args.ct),
        overwrite=args.overwrite,
    )
    ct = read_volume(args.ct, check_hu=True, allow_non_hu=args.allow_non_hu)
    with progress_bar("threshold", enabled=not args.no_progress) as progress:
        result = threshold_segment(
            ct,
            preset=preset,
            lower_hu=args.lower_hu,
            upper_hu=args.upper_hu,
            method=args.method,
            keep_largest=args.keep_largest,
            min_island_mm3=args.min_island_mm3,
            fill_holes=args.fill_holes,
            progress=progress,
        )
    name = args.name or preset or f"threshold_{args.method or 'range'}"
    labelmap = result.mask.with_array(result.mask.array.astype("uint8"))
    terminology = BONE_TERMINOLOGY if preset in ("bone", "compact_bone_adult") else None  # else: what it is is unknown
    segment = SegmentInfo(name, 1, BONE_COLOR, terminology)
    written = save_segmentation(labelmap, [segment], args.output, overwrite=args.overwrite)
    summary = {
        "input": str(args.ct),
        "output": [str(p) for p in written],
        "segment": name,
        "lower_hu": None if result.lower_hu == float("-inf") else result.lower_hu,
        "upper_hu": None if result.upper_hu == float("inf") else result.upper_hu,
        "volume_ml": result.volume_mm3 / 1000.0,
        "parameters": result.parameters,
        "geometry": ct.geometry_dict(),
    }
    if args.json:
        write_table([summary], args.json, "json", overwrite=args.overwrite)
    print(
        f"{name}: {summary['lower_hu']}..{summary['upper_hu']} HU, {summary['volume_ml']:.1f} mL -> {', '.join(summary['output'])}",
        file=sys.stderr,
    )
    return 0
