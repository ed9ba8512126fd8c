"""``segdeep compare``: overlap and surface-distance metrics between two segmentations, or a segmentation and a HU threshold."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..compare import DEFAULT_ROI_MARGIN_MM, compare_with_threshold
from ..dicom_series import onto_grid
from ..errors import GeometryMismatchError
from ..io import read_volume
from ..metrics import compare_masks, disagreement_masks
from ..report.facts import parse_threshold
from ..segmentation_io import SegmentInfo
from ..threshold import grow_mask
from ._common import (
    input_files,
    load_mask,
    load_segmentation,
    number_in,
    progress_bar,
    save_segmentation,
    segmentation_targets,
    select_mask,
    validate_outputs,
    write_table,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two segmentations (Dice, Jaccard, HD, HD95, ASSD, surface Dice, volumes)",
        description="Compare segmentation A (test, e.g. the network) with B (reference, e.g. threshold or a manual "
        "contour) on the same voxel grid, or with a Hounsfield threshold of the CT (--threshold, --ct) inside A grown "
        "by --roi-margin-mm: SegDeepLogic.compare.compare_with_threshold, as the report and the Slicer panel. "
        "Distances in mm honour anisotropic spacing; definitions match MONAI (see SegDeepLogic.metrics).",
    )
    p.add_argument("a", help="segmentation A (.seg.nrrd, label map or DICOM RTSTRUCT); the test / prediction")
    p.add_argument(
        "b", nargs="?", help="segmentation B (.seg.nrrd, label map or DICOM RTSTRUCT); the reference (not with --threshold)"
    )
    p.add_argument("--label-a", help="segment of A (name or value; an RTSTRUCT ROI name); default: all non-zero voxels")
    p.add_argument("--label-b", help="segment of B (name or value; an RTSTRUCT ROI name); default: all non-zero voxels")
    p.add_argument(
        "--ct",
        default=None,
        help="the CT's DICOM series folder an RTSTRUCT is rasterised onto (default: the referenced series next to it); "
        "with --threshold: the CT (any volume format) that is thresholded",
    )
    p.add_argument(
        "--threshold",
        metavar="PRESET|LOWER:UPPER",
        help="compare A with a Hounsfield threshold of --ct instead of with B: a preset (e.g. bone) or LOWER:UPPER HU, "
        f"inside A grown by --roi-margin-mm (default {DEFAULT_ROI_MARGIN_MM:g} mm; the same as the report and the Slicer panel)",
    )
    p.add_argument("--whole-ct", action="store_true", help="with --threshold: no region, threshold the whole CT")
    p.add_argument("--repair-contours", action="store_true", help="RTSTRUCT: fill self-intersecting contours (even-odd)")
    p.add_argument(
        "--tolerance-mm", type=number_in(0, low_open=True), default=1.0, help="surface Dice tolerance in mm (default 1)"
    )
    p.add_argument("--percentile", type=number_in(0, 100), default=95.0, help="percentile of the robust Hausdorff (default 95)")
    p.add_argument("--roi", help="restrict both masks to this mask file (non-zero voxels), e.g. a region around an organ")
    p.add_argument(
        "--roi-margin-mm",
        type=number_in(0),
        default=None,
        help="grow the --roi mask by this distance (mm) first (default 0); with --threshold: the margin of the region "
        f"around A (default {DEFAULT_ROI_MARGIN_MM:g})",
    )
    p.add_argument("-o", "--output", default="-", help="metrics file (.json or .csv); '-' prints JSON to stdout")
    p.add_argument("--format", choices=["json", "csv"], help="output format (default: from the file suffix, else json)")
    p.add_argument("--disagreement", help="write the disagreement (only in A / only in B) as .seg.nrrd or .nii.gz")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run, usage_error=p.error)


def run(args: argparse.Namespace) -> int:
    if args.threshold is not None:
        return _run_threshold(args)
    if args.b is None:
        args.usage_error("give segmentation B, or --threshold with --ct")
    if args.whole_ct:
        args.usage_error("--whole-ct goes with --threshold")
    if args.roi_margin_mm is None:
        args.roi_margin_mm = 0.0
    validate_outputs(
        {"-o": args.output, **segmentation_targets("--disagreement", args.disagreement)},
        inputs=input_files(A=args.a, B=args.b, ROI=args.roi, CT=args.ct),
        overwrite=args.overwrite,
    )
    name_a, mask_a = load_mask(args.a, args.label_a, ct=args.ct, repair=args.repair_contours)
    name_b, mask_b = load_mask(args.b, args.label_b, ct=args.ct, repair=args.repair_contours)
    if not mask_a.same_grid(mask_b):  # the same voxels stored in another axis order are moved exactly
        try:
            mask_a = onto_grid(mask_a, mask_b, what="segmentation A")
        except GeometryMismatchError:
            mask_a.require_same_grid(mask_b, "segmentations A and B")
    if args.roi:
        _, roi = select_mask(load_segmentation(args.roi), None, path=args.roi)
        roi.require_same_grid(mask_a, "the ROI and the segmentations")
        roi_array = grow_mask(roi.with_array(roi.array != 0), args.roi_margin_mm).array
        mask_a = mask_a.with_array(mask_a.array & roi_array)
        mask_b = mask_b.with_array(mask_b.array & roi_array)
    with progress_bar("compare", enabled=not args.no_progress) as progress:
        result = compare_masks(mask_a, mask_b, tolerance_mm=args.tolerance_mm, percentile=args.percentile, progress=progress)
    row = {"a": str(args.a), "segment_a": name_a, "b": str(args.b), "segment_b": name_b}
    if args.roi:
        row |= {"roi": str(args.roi), "roi_margin_mm": args.roi_margin_mm}
    row |= result.to_dict()
    fmt = args.format or ("csv" if str(args.output).lower().endswith(".csv") else "json")
    if fmt == "csv":
        row = {k: v for k, v in row.items() if not isinstance(v, dict)}
    write_table([row], args.output, fmt, overwrite=args.overwrite)
    if args.disagreement:
        only_a, only_b = disagreement_masks(mask_a, mask_b)
        labels = only_a.array.astype(np.uint8) + 2 * only_b.array.astype(np.uint8)
        segments = [
            SegmentInfo(f"only in A ({name_a})", 1, (0.9, 0.2, 0.2)),
            SegmentInfo(f"only in B ({name_b})", 2, (0.2, 0.4, 0.95)),
        ]
        save_segmentation(mask_a.with_array(labels), segments, Path(args.disagreement), overwrite=args.overwrite)
    if args.output != "-":
        print(f"Dice {result.dice:.4f}, HD95 {result.hd95_mm:.2f} mm -> {args.output}", file=sys.stderr)
    return 0


def _run_threshold(args: argparse.Namespace) -> int:
    """``segdeep compare A --threshold SPEC --ct CT``: :func:`~SegDeepLogic.compare.compare_with_threshold`."""
    if args.b is not None:
        args.usage_error("give either segmentation B or --threshold, not both")
    if args.ct is None:
        args.usage_error("--threshold needs --ct (the CT to threshold)")
    if args.roi:
        args.usage_error("--roi does not go with --threshold (the region is A grown by --roi-margin-mm)")
    if args.whole_ct and args.roi_margin_mm is not None:
        args.usage_error("give either --whole-ct or --roi-margin-mm, not both")
    validate_outputs(
        {"-o": args.output, **segmentation_targets("--disagreement", args.disagreement)},
        inputs=input_files(A=args.a, CT=args.ct),
        overwrite=args.overwrite,
    )
    threshold_kwargs = parse_threshold(args.threshold)
    ct = read_volume(args.ct)
    name_a, mask_a = load_mask(args.a, args.label_a, ct=args.ct if Path(args.ct).is_dir() else None, repair=args.repair_contours)
    if not mask_a.same_grid(ct):
        try:
            mask_a = onto_grid(mask_a, ct, what="segmentation A")
        except GeometryMismatchError:
            mask_a.require_same_grid(ct, "segmentation A and the CT")
    margin = None if args.whole_ct else (DEFAULT_ROI_MARGIN_MM if args.roi_margin_mm is None else args.roi_margin_mm)
    with progress_bar("compare", enabled=not args.no_progress) as progress:
        result = compare_with_threshold(
            ct,
            mask_a,
            **threshold_kwargs,
            roi_margin_mm=margin,
            tolerance_mm=args.tolerance_mm,
            percentile=args.percentile,
            progress=progress,
        )
    row = {"a": str(args.a), "segment_a": name_a, "ct": str(args.ct)} | result.to_dict()
    fmt = args.format or ("csv" if str(args.output).lower().endswith(".csv") else "json")
    if fmt == "csv":
        row = {k: v for k, v in row.items() if not isinstance(v, dict)}
    write_table([row], args.output, fmt, overwrite=args.overwrite)
    if args.disagreement:
        only_a, only_b = disagreement_masks(mask_a, result.threshold_mask)
        labels = only_a.array.astype(np.uint8) + 2 * only_b.array.astype(np.uint8)
        segments = [
            SegmentInfo(f"only in A ({name_a})", 1, (0.9, 0.2, 0.2)),
            SegmentInfo("only in the threshold", 2, (0.2, 0.4, 0.95)),
        ]
        save_segmentation(mask_a.with_array(labels), segments, Path(args.disagreement), overwrite=args.overwrite)
    if args.output != "-":
        print(f"Dice {result.comparison.dice:.4f}, HD95 {result.comparison.hd95_mm:.2f} mm -> {args.output}", file=sys.stderr)
    return 0
