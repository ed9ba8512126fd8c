"""``segdeep dicom-info``: list the DICOM series of a folder (and why one cannot be read)."""

from __future__ import annotations

import argparse
import json
import sys

from ..atomic import write_text
from ..dicom_series import list_series
from ._common import input_files, validate_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dicom-info",
        help="list the DICOM series in a folder (UID, modality, size, spacing, readable or why not; RTSTRUCT ROIs)",
        description="List every series in a DICOM folder (searched recursively): image series with their size and "
        "spacing and, when they cannot be read as a regular volume, the reason (gantry tilt, irregular spacing, mixed "
        "sizes, a single slice); RT Structure Sets and DICOM SEGs with their ROIs/segments and the series they "
        "reference. Pass a UID to --series of segment, convert or report to choose a series.",
    )
    p.add_argument("folder", help="folder with DICOM files")
    p.add_argument("--json", default=None, help="write the list as JSON here ('-' = stdout) instead of the table")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    validate_outputs({"--json": args.json}, inputs=input_files(folder=args.folder), overwrite=args.overwrite)
    series = list_series(args.folder)
    if args.json:
        text = json.dumps([s.as_dict() for s in series], indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_text(args.json, text, overwrite=args.overwrite)
        return 0
    out = sys.stdout
    for s in series:
        line = f"{s.series_uid}  {s.modality or '?':8s} {len(s.files):4d} file(s)  {s.description!r}"
        if s.is_image:
            if s.problem is None:
                size = "x".join(map(str, s.size_ijk or ()))
                spacing = " x ".join(f"{v:g}" for v in s.spacing_mm or ())
                line += f"  {size} voxels, {spacing} mm"
            else:
                line += f"  NOT READABLE: {s.problem}"
        if s.roi_names:
            line += f"  ROIs: {', '.join(s.roi_names)}"
        if s.referenced_series_uids:
            line += f"  references series {', '.join(s.referenced_series_uids)}"
        print(line, file=out)
    return 0
