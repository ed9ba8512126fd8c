"""``segdeep evaluate``: score a model package (and HU-threshold baselines) on labelled cases."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..compare import DEFAULT_ROI_MARGIN_MM
from ..errors import SegDeepError
from ..evaluate import choose_threshold, evaluate_model, record_in_card, training_reference, write_evaluation
from ._common import number_in, progress_bar, validate_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="Dice, HD95 and ASSD of a model package on labelled cases, with threshold baselines",
        description="Segment every case of DATA_DIR (<case>/ct.nii.gz + <structure>.nii.gz, as OpenKBP) with MODEL "
        "through the normal inference pipeline and score each contoured structure (Dice, HD95, ASSD). For the bone "
        "structure also score the native-resolution refinement and global HU-threshold baselines (whole volume and "
        "inside the reference grown by --roi-mm, with and without largest-component clean-up). The threshold must "
        "come from training data: --threshold-hu, --threshold-json (a previous summary.json or threshold.json) or "
        "--threshold-from TRAIN_DIR (chosen there, never on the evaluated cases). Writes per_case.csv, "
        "summary.json and dice_boxplot.png to OUT_DIR.",
    )
    p.add_argument("model", help="model package folder (or .zip)")
    p.add_argument("data", nargs="+", metavar="DATA_DIR", help="labelled data folder(s) or CSV/JSON case lists")
    p.add_argument("-o", "--output", default="evaluation", metavar="OUT_DIR", help="output folder (default ./evaluation)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--threshold-hu", type=float, help="baseline HU threshold (chosen on training data)")
    t.add_argument("--threshold-json", help="JSON with 'threshold_hu' (or a summary.json with 'threshold')")
    t.add_argument("--threshold-from", nargs="+", metavar="TRAIN_DIR", help="choose the threshold on these training cases")
    p.add_argument("--bone", default="mandible", help="structure that gets the refinement and threshold baselines")
    p.add_argument(
        "--roi-mm",
        type=number_in(0),
        default=DEFAULT_ROI_MARGIN_MM,
        help=f"ROI margin around the reference bone, mm (default {DEFAULT_ROI_MARGIN_MM:g})",
    )
    p.add_argument("--no-refine", action="store_true", help="do not score the native-resolution refinement")
    p.add_argument("--overlap", type=number_in(0, 1, high_open=True), default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--no-body-crop", action="store_true", help="network on the whole image, as segdeep segment --no-body-crop")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="inference precision, as segdeep segment --precision (default auto)",
    )
    p.add_argument("--cases", nargs="+", help="only these case ids")
    p.add_argument(
        "--record-in-card", action="store_true", help="also store the summary in the model card (re-saves the package)"
    )
    p.add_argument(
        "--reference-from",
        nargs="+",
        metavar="TRAIN_DIR",
        help="with --record-in-card: also record the training cases' reference statistics for the out-of-distribution "
        "check (for a package trained before segdeep train recorded them)",
    )
    p.add_argument("--cache-dir", help="cache of the prepared training cases (as segdeep train --cache-dir)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    validate_outputs(
        {"-o": out, **{f"-o/{n}": out / n for n in ("per_case.csv", "summary.json", "dice_boxplot.png")}},
        inputs={"model": Path(args.model)},
        overwrite=args.overwrite,
        folders=("-o",),
    )
    if args.reference_from and not args.record_in_card:
        raise SegDeepError("--reference-from only makes sense with --record-in-card")
    threshold = None
    if args.threshold_hu is not None:
        threshold = {"threshold_hu": args.threshold_hu, "source": "command line"}
    elif args.threshold_json:
        data = json.loads(Path(args.threshold_json).read_text())
        threshold = data.get("threshold", data) if isinstance(data, dict) else None
        if not isinstance(threshold, dict) or "threshold_hu" not in threshold:
            raise SegDeepError(f"{args.threshold_json} has no 'threshold_hu'")
    elif args.threshold_from:
        with progress_bar("threshold", enabled=not args.no_progress) as progress:
            threshold = choose_threshold(args.threshold_from, args.bone, roi_mm=args.roi_mm, progress=progress)
    with progress_bar("evaluate", enabled=not args.no_progress) as progress:
        result = evaluate_model(
            args.model,
            args.data,
            threshold=threshold,
            bone_structure=args.bone,
            roi_mm=args.roi_mm,
            refine=not args.no_refine,
            overlap=args.overlap,
            cases=args.cases,
            segment_options={"device": args.device, "precision": args.precision, "restrict_to_body": not args.no_body_crop},
            progress=progress,
        )
    paths = write_evaluation(result, args.output, overwrite=args.overwrite)
    if args.record_in_card:
        reference = None
        if args.reference_from:
            reference = training_reference(args.model, args.reference_from, cache_dir=args.cache_dir)
        record_in_card(args.model, result, reference=reference)
    verdicts = result.summary.get("plausibility", {}).get("verdicts", {})
    print(f"out-of-distribution check on the evaluated cases: {verdicts}", file=sys.stderr)
    table = []
    for name, methods in result.summary["structures"].items():
        for method, stats in methods.items():
            d, h = stats["dice"], stats["hd95_mm"]
            table.append(
                f"{name:14s} {method:22s} n={d['n']:3d}  Dice median {d['median']}  mean {d['mean']}  HD95 median {h['median']} mm"
            )
    print("\n".join(table))
    print(f"results: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
