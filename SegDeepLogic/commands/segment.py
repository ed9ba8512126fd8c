"""``segdeep segment``: U-Net segmentation of a CT with a model package."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import MismatchError, OutputError
from ..progress import CancelToken
from ..refine import RefineOptions
from ._common import (
    ctrl_c_cancels,
    input_files,
    number_in,
    progress_bar,
    segment_options_from_args,
    segmentation_targets,
    validate_outputs,
    write_table,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment a CT with a U-Net model package (sliding window, optional TTA, refinement, uncertainty)",
        description="Segment a CT with a U-Net model package and write a 3D Slicer .seg.nrrd (segment names and colours "
        "from the model card) or a NIfTI label map on the CT's exact grid. The first Ctrl-C stops cleanly "
        "between sliding windows; nothing is written unless the whole segmentation succeeded.",
    )
    p.add_argument("ct", help="CT volume (NRRD, NIfTI, MHA/MHD or a DICOM series folder)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output segmentation: .seg.nrrd (3D Slicer), .nii.gz label map, or a .dcm RT Structure Set / DICOM SEG "
        "(with --format rtstruct / dicom-seg and a DICOM CT folder)",
    )
    p.add_argument(
        "--series", default=None, metavar="UID", help="DICOM folder: the series to segment (segdeep dicom-info lists them)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="model package folder or .zip (default: the first bundled model, in Resources/Models or $SEGDEEP_MODELS_DIR)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="auto: bf16/fp16 on GPUs, fp32 on CPU"
    )
    p.add_argument(
        "--overlap", type=number_in(0, 1, high_open=True), default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)"
    )
    p.add_argument(
        "--batch-size",
        type=number_in(1, integer=True),
        default=None,
        help="windows per network call (default: by patch size and device)",
    )
    p.add_argument(
        "--threads", type=number_in(1, integer=True), default=None, help="CPU threads for the network (default: one per core)"
    )
    p.add_argument(
        "--no-body-crop",
        action="store_true",
        help="run the network on the whole image, not only on a box around the body (>-500 HU, +10 mm; default): "
        "slower on a large field of view",
    )
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 flips, 8x slower)")
    p.add_argument(
        "--threshold",
        type=number_in(0, 1, low_open=True),
        default=None,
        help="label a voxel only where its label's probability reaches this value (default: argmax)",
    )
    p.add_argument("--keep-largest", action="store_true", help="keep only the largest connected component of each label")
    p.add_argument(
        "--min-island-mm3", type=number_in(0), default=0.0, help="remove components smaller than this (mm³), per label"
    )
    p.add_argument("--refine", action="store_true", help="refine bone labels at the CT's resolution with a HU threshold")
    p.add_argument(
        "--refine-labels", nargs="+", default=None, metavar="NAME", help="labels to refine (default: those named after a bone)"
    )
    p.add_argument(
        "--refine-hu", type=float, default=RefineOptions.lower_hu, help="bone threshold for --refine (HU, default 226)"
    )
    p.add_argument(
        "--refine-grow-mm",
        type=number_in(0, low_open=True),
        default=None,
        help="how far --refine may grow the network's mask (mm; default: the model's voxel size, at least 3)",
    )
    p.add_argument("--uncertainty", default=None, metavar="PATH", help="also write the uncertainty map (entropy 0..1) here")
    p.add_argument(
        "--format",
        dest="output_format",
        default=None,
        choices=["seg.nrrd", "nii.gz", "rtstruct", "dicom-seg"],
        help="output format (default: by suffix); rtstruct (RT Structure Set for a planning system) and dicom-seg "
        "(DICOM Segmentation) reference the input DICOM CT series",
    )
    p.add_argument("--json", default=None, help="write a summary (volumes, uncertainty, timings, fallbacks) here ('-' = stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="write the segmentation even if the out-of-distribution check says the CT is not the anatomy the model "
        "was trained on (default: write nothing and exit with an error)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def print_plausibility(check: dict | None, stream=None) -> None:  # noqa: ANN001
    """Print the out-of-distribution verdict (to stderr) unless it is plain "ok"."""
    stream = stream or sys.stderr
    if not check or check.get("verdict") == "ok":
        return
    verdict = check["verdict"]
    head = {
        "mismatch": "WARNING: this CT does not look like the model's training data; do not use the result",
        "caution": "caution: parts of this CT or result are unlike the model's training data; review them",
        "unchecked": "note: no out-of-distribution check",
    }.get(verdict, verdict)
    print(f"{head} (out-of-distribution check: {verdict})", file=stream)
    for finding in check.get("findings", []):
        print(f"  - {finding['message']}", file=stream)


@contextlib.contextmanager
def _show_mismatch() -> Iterator[None]:
    """On a withheld (mismatch) result, print the whole out-of-distribution check before the error."""
    try:
        yield
    except MismatchError as exc:
        print_plausibility(getattr(exc.result, "plausibility", None))
        raise


def run(args: argparse.Namespace) -> int:
    from ..io import WRITE_SUFFIXES, _suffix
    from ..segment import DICOM_OUTPUT_FORMATS, _output_format, segment_file  # torch is imported only now

    fmt = _output_format(Path(args.output), args.output_format)  # the name must match the format: before any work
    main_output = {"-o": args.output} if fmt in DICOM_OUTPUT_FORMATS else segmentation_targets("-o", args.output)
    outputs = {**main_output, "--uncertainty": args.uncertainty, "--json": args.json}
    validate_outputs(outputs, inputs=input_files(CT=args.ct, model=args.model), overwrite=args.overwrite)
    if args.uncertainty is not None and _suffix(Path(args.uncertainty)) not in WRITE_SUFFIXES:
        raise OutputError(f"--uncertainty {args.uncertainty}: use one of {', '.join(WRITE_SUFFIXES)}")
    options = segment_options_from_args(args, allow_mismatch=args.allow_mismatch, uncertainty=bool(args.uncertainty or args.json))
    token = CancelToken()
    cancelling = "segdeep segment: cancelling (Ctrl-C again to stop at once)..."
    with ctrl_c_cancels(token, cancelling), progress_bar("segment", enabled=not args.no_progress) as progress, _show_mismatch():
        result, written = segment_file(
            args.ct,
            args.output,
            args.model,
            options,
            output_format=args.output_format,
            uncertainty_path=args.uncertainty,
            overwrite=args.overwrite,
            series_uid=args.series,
            progress=progress,
            cancel=token,
        )
    summary = {"input": str(args.ct), "output": [str(p) for p in written], **result.summary()}
    if args.json:
        write_table([summary], args.json, "json", overwrite=args.overwrite)
    for message in result.fallbacks:
        print(f"fallback: {message}", file=sys.stderr)
    print_plausibility(result.plausibility)
    volumes = ", ".join(f"{s['name']} {s['volume_mm3'] / 1000:.1f} mL" for s in summary["segments"])
    total = sum(result.timings_s.values())
    print(
        f"{Path(args.ct).name}: {volumes} on {result.device} ({result.precision}) in {total:.1f} s -> {', '.join(summary['output'])}",
        file=sys.stderr,
    )
    return 0
