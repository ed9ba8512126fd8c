"""``segdeep batch``: segment a cohort (folder or CSV manifest), resumable, locally or on Ray."""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

from ..progress import CancelToken
from ._common import ctrl_c_cancels, number_in, segment_options_from_args

# Options taken over, unchanged, from ``segdeep segment`` (so a new segment option or output
# format is a batch option too).
SEGMENT_OPTIONS = (
    "device",
    "precision",
    "overlap",
    "batch_size",
    "threads",
    "tta",
    "threshold",
    "keep_largest",
    "min_island_mm3",
    "refine",
    "refine_labels",
    "refine_hu",
    "refine_grow_mm",
    "output_format",
    "allow_mismatch",
    "no_body_crop",
)


#: The review table ``--review-queue`` writes into OUTDIR.
REVIEW_TABLE = "review_queue.csv"


def _segment_actions() -> list[argparse.Action]:
    from . import segment

    scratch = argparse.ArgumentParser(add_help=False)
    segment.add_parser(scratch.add_subparsers())
    parser = next(a for a in scratch._actions if isinstance(a, argparse._SubParsersAction)).choices["segment"]
    actions = []
    for action in parser._actions:
        if action.dest not in SEGMENT_OPTIONS:
            continue
        if action.dest == "output_format":  # same choices; the file name is the batch's, not a suffix
            action = copy.copy(action)
            action.help = (
                "segmentation format of every case (default seg.nrrd): seg.nrrd, nii.gz (label map), rtstruct (RT "
                "Structure Set, rtstruct.dcm) or dicom-seg (DICOM SEG, segmentation.dcm); the last two need each "
                "case's CT as a DICOM series folder (a case given as a file fails with that message)"
            )
        actions.append(action)
    return actions


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="segment a cohort (folder of CTs or CSV manifest): resumable, parallel, optionally on a Ray cluster",
        description="Segment every case of INPUT with one model (loaded once per worker) and write, per case, "
        "OUTDIR/cases/<case_id>/: the segmentation (as segdeep segment writes it), optionally the uncertainty map, "
        "the report (report.html/.json: threshold comparison, reference comparison where a reference is given, "
        "out-of-distribution check) and the print meshes (meshes/), and case.json, its completion record. "
        "OUTDIR/summary.csv (and summary.parquet with pyarrow) has one row per case: status, out-of-distribution "
        "verdict, volumes, metrics, timings, device, fallbacks, error. "
        "INPUT is a folder (CT files directly in it; <case>/ct.nii.gz with an optional <case>/reference.nii.gz or "
        "reference.seg.nrrd; or <case>/ holding one DICOM series) or a CSV manifest with the columns case_id, ct "
        "(a CT file or DICOM series folder) and optionally reference (a segmentation or a DICOM RTSTRUCT; "
        "reference_labels STRUCTURE=ROI picks its ROIs) and per-case options (tta, refine, keep_largest, min_island_mm3, overlap, "
        "allow_mismatch, compare_threshold, reference_labels); relative paths are relative to the manifest. "
        "Run the same command again after a crash or Ctrl-C: only unfinished cases are done (and cases whose CT, "
        "reference, options or model changed). A failed case is recorded with its error and the batch goes on; "
        "--retry-failed redoes failed cases. Exit status: 0 all cases done, 1 some failed, 130 stopped by Ctrl-C.",
    )
    p.add_argument("input", help="folder of cases or a CSV manifest")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (locked while the batch runs)")
    p.add_argument(
        "--model",
        default=None,
        help="model package folder or .zip (default: the first bundled model, in Resources/Models or $SEGDEEP_MODELS_DIR)",
    )
    for action in _segment_actions():
        p._add_action(action)
    p.add_argument("--uncertainty", action="store_true", help="also write each case's uncertainty map (uncertainty.nii.gz)")
    p.add_argument("--no-report", action="store_true", help="no report, threshold/reference comparison or meshes")
    p.add_argument("--no-meshes", action="store_true", help="report and comparisons, but no mesh files")
    p.add_argument("--mesh-format", choices=["stl", "obj", "ply"], default="stl", help="print mesh format (default stl)")
    p.add_argument(
        "--compare-threshold",
        default="bone",
        metavar="PRESET|LOWER:UPPER",
        help="HU threshold the bone-like structures are compared with (default bone)",
    )
    p.add_argument(
        "--reference-label",
        action="append",
        default=None,
        metavar="STRUCTURE=SEGMENT",
        help="pair a network structure with a reference segment (default: match by name); repeatable; a manifest's "
        "reference_labels column (STRUCTURE=SEGMENT;...) overrides it per case",
    )
    p.add_argument(
        "--workers",
        type=number_in(1, integer=True),
        default=None,
        help="worker processes on this machine (default: one per CUDA GPU when the model runs on CUDA, else 1)",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS|local",
        help="run the cases as Ray tasks: 'local' starts Ray on this machine, else a cluster address "
        "(e.g. ray://head:10001 or auto); needs pip install 'segdeep[ray]'",
    )
    p.add_argument(
        "--ray-cpus-per-task",
        type=number_in(0, low_open=True),
        default=1.0,
        help="CPUs each Ray task declares (> 0, default 1)",
    )
    p.add_argument(
        "--review-queue",
        action="store_true",
        help="after the batch, rank its cases for review (as segdeep review-queue OUTDIR) into OUTDIR/review_queue.csv",
    )
    p.add_argument("--retry-failed", action="store_true", help="redo the cases recorded as failed")
    p.add_argument("--no-parquet", action="store_true", help="write summary.csv only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the per-case lines are still printed)")
    p.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~SegDeepLogic.cohort.BatchSettings` of parsed ``segdeep batch`` arguments."""
    from ..cohort import BatchSettings, parse_pairs

    return BatchSettings(
        output_format=args.output_format or "seg.nrrd",
        uncertainty=args.uncertainty,
        report=not args.no_report,
        meshes=not args.no_meshes,
        mesh_format=args.mesh_format,
        compare_threshold=args.compare_threshold,
        reference_labels=parse_pairs(args.reference_label, "--reference-label") if args.reference_label else None,
        allow_mismatch=args.allow_mismatch,
        segment_options=segment_options_from_args(args),
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..cohort import segment_cohort

    settings = settings_from_args(args)
    token = CancelToken()
    bar = tqdm(
        total=100,
        desc="batch",
        file=sys.stderr,
        disable=args.no_progress,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
        postfix="starting",
    )

    def progress(fraction: float, stage: str) -> None:
        bar.n = round(100 * fraction, 2)
        bar.set_postfix_str(stage, refresh=False)
        bar.refresh()

    def log(line: str) -> None:
        if args.no_progress:
            print(line, file=sys.stderr, flush=True)
        else:
            bar.write(line, file=sys.stderr)

    try:
        with ctrl_c_cancels(
            token,
            "segdeep batch: stopping after the cases in progress (Ctrl-C again to stop at once; the same command resumes)...",
        ):
            result = segment_cohort(
                args.input,
                args.output,
                args.model,
                settings=settings,
                workers=args.workers,
                ray=args.ray,
                ray_cpus_per_task=args.ray_cpus_per_task,
                retry_failed=args.retry_failed,
                parquet=not args.no_parquet,
                progress=progress,
                log=log,
                cancel=token,
            )
    finally:
        bar.close()
    print(
        f"batch: {len(result.done)} done, {len(result.failed)} failed, {len(result.skipped)} already finished, "
        f"{len(result.pending)} not started -> {', '.join(str(p) for p in result.summary_files)}",
        file=sys.stderr,
    )
    if args.review_queue and not result.stopped:
        from pathlib import Path

        from ..review import review_queue
        from .review_queue import write_review_table

        table = Path(args.output) / REVIEW_TABLE
        items = review_queue(args.output)
        write_review_table(items, table)
        first = f": first {items[0].case_id} ({items[0].reasons[0] if items[0].reasons else ''})" if items else ""
        print(f"review queue of {len(items)} case(s) -> {table}{first}", file=sys.stderr)
    if result.stopped:
        print("stopped by Ctrl-C: run the same command again to continue", file=sys.stderr)
        return 130
    failed_total = sum(1 for row in result.rows if row.get("status") == "failed")
    if failed_total:
        print(f"{failed_total} case(s) failed (see the error column of the summary; --retry-failed redoes them)", file=sys.stderr)
        return 1
    return 0
