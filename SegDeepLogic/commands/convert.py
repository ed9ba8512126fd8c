"""``segdeep convert``: segmentation files to and from DICOM (RTSTRUCT, DICOM SEG) on a CT series."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import SegDeepError
from ._common import input_files, load_segmentation, save_segmentation, segmentation_targets, validate_outputs

FORMATS = ("rtstruct", "dicom-seg", "seg.nrrd", "nii.gz", "dicom-ct")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a segmentation (.seg.nrrd, NIfTI label map, RTSTRUCT) to an RT Structure Set, DICOM SEG, "
        ".seg.nrrd or NIfTI on a DICOM CT series",
        description="Write a .seg.nrrd or NIfTI label map as an RT Structure Set (contours for a planning system) or a "
        "DICOM SEG referencing the CT series it was made on (--reference-ct); or read an RT Structure Set "
        "(rasterised onto that CT's grid, holes by the even-odd rule) and write it as .seg.nrrd / NIfTI. The "
        "segmentation must be on the CT series' voxels (flipped axes are fine; nothing is interpolated). "
        "--format dicom-ct writes a CT volume (NIfTI, NRRD, ...) as a DICOM CT series folder with its true geometry.",
    )
    p.add_argument("input", help="segmentation: .seg.nrrd, label map (.nii.gz/.nrrd/.mha) or an RTSTRUCT .dcm file")
    p.add_argument("-o", "--output", required=True, help="output file: .dcm (RTSTRUCT or SEG), .seg.nrrd or .nii.gz")
    p.add_argument(
        "--reference-ct", required=False, help="the CT's DICOM series folder (default for an RTSTRUCT: its own folder)"
    )
    p.add_argument("--series", default=None, metavar="UID", help="series in --reference-ct (default: the referenced or largest)")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format (default: from the suffix; .dcm needs it)")
    p.add_argument(
        "--model",
        default=None,
        help="the model package that made the segmentation: ROIs are then AUTOMATIC with its name, version and "
        "weights hash, and take its terminology (default: generation algorithm left empty, i.e. unknown)",
    )
    p.add_argument("--rois", nargs="+", default=None, metavar="NAME", help="RTSTRUCT input: the ROIs to convert (default all)")
    p.add_argument("--repair-contours", action="store_true", help="RTSTRUCT input: fill self-intersecting contours (even-odd)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (file, or the dicom-ct folder)")
    p.set_defaults(run=run)


def _format(path: Path, fmt: str | None) -> str:
    name = path.name.lower()
    if fmt:
        return fmt
    if name.endswith(".seg.nrrd"):
        return "seg.nrrd"
    if name.endswith((".nii.gz", ".nii")):
        return "nii.gz"
    raise SegDeepError(f"cannot tell the output format from {path.name}: pass --format ({', '.join(FORMATS)})")


def _write_ct(args: argparse.Namespace) -> int:
    from ..dicom_series import write_ct_series
    from ..io import read_volume

    output = Path(args.output)
    validate_outputs(  # before any work: a folder output, never an input or a file
        {"-o": output},
        inputs=input_files(input=args.input, **{"--reference-ct": args.reference_ct, "--model": args.model}),
        overwrite=args.overwrite,
        folders=("-o",),
    )
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"refusing to overwrite existing folder: {output} (pass --overwrite)")
    ct = read_volume(args.input, check_hu=True)
    files = write_ct_series(ct, output, overwrite=args.overwrite)
    print(f"{Path(args.input).name}: {len(files)} CT slices -> {args.output}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.format == "dicom-ct":
        return _write_ct(args)
    from ..dicom_common import Algorithm
    from ..dicom_series import onto_grid, read_dicom_series
    from ..rtstruct import is_rtstruct, rtstruct_segmentation
    from ..segmentation_io import Segmentation

    output = Path(args.output)
    fmt = _format(output, args.format)
    if fmt in ("rtstruct", "dicom-seg") and not output.name.lower().endswith(".dcm"):
        raise SegDeepError(f"output {output.name}: name the DICOM file *.dcm")
    validate_outputs(  # before any work: exists, an input, a folder, a special file
        {"-o": output} if fmt in ("rtstruct", "dicom-seg") else segmentation_targets("-o", output),
        inputs=input_files(input=args.input, **{"--reference-ct": args.reference_ct, "--model": args.model}),
        overwrite=args.overwrite,
    )
    if args.reference_ct is None and (fmt in ("rtstruct", "dicom-seg") or not is_rtstruct(args.input)):
        raise SegDeepError("--reference-ct (the CT's DICOM series folder) is needed to write DICOM or read a label map onto it")
    ct, reference = (None, None)
    if args.reference_ct is not None:
        ct, reference = read_dicom_series(args.reference_ct, args.series, read_pixels=False)  # the grid only
    if is_rtstruct(args.input):
        seg = rtstruct_segmentation(
            args.input, (ct, reference) if ct is not None else None, names=args.rois, repair=args.repair_contours
        )
        if ct is None:
            ct = seg.labelmap
    else:
        seg = load_segmentation(args.input)
        seg = Segmentation(onto_grid(seg.labelmap, ct, what=str(args.input)), seg.segments)
    algorithm = None
    if args.model:
        from ..segment import load_model

        card = load_model(args.model).card
        algorithm = Algorithm.from_card(card)
        terms = {s.name: s.terminology for s in card.segments}
        seg = Segmentation(
            seg.labelmap,
            [dataclasses.replace(s, terminology=s.terminology or terms.get(s.name)) for s in seg.segments],
        )
    if fmt == "rtstruct":
        from ..rtstruct import write_rtstruct

        written = [write_rtstruct(seg, reference, output, ct_grid=ct, algorithm=algorithm, overwrite=args.overwrite)]
    elif fmt == "dicom-seg":
        from ..dicom_seg import write_dicom_seg

        written = [write_dicom_seg(seg, reference, output, ct_grid=ct, algorithm=algorithm, overwrite=args.overwrite)]
    else:
        written = save_segmentation(seg.labelmap, list(seg.segments), output, overwrite=args.overwrite)
    print(f"{Path(args.input).name}: {', '.join(seg.names)} -> {', '.join(map(str, written))}", file=sys.stderr)
    return 0
