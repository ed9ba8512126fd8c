"""``segdeep review-queue``: rank the cases of a batch output folder for review (most in need first)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ._common import validate_outputs, write_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review-queue",
        help="rank the cases of a segdeep batch output folder for review, with the reason for each rank",
        description="Rank the cases of OUTDIR (a segdeep batch output folder) for review by the model's own signals: "
        "the mean normalised entropy inside each structure (the worst structure counts), the "
        "out-of-distribution verdict and the volume plausibility findings. Failed cases come first, then cases whose "
        "output was withheld (mismatch), then the rest by descending score. Each row names the most uncertain "
        "structure and the reasons. Writes a table (-o: .csv or .json by its suffix; default: print the table).",
    )
    p.add_argument("outdir", metavar="OUTDIR", help="segdeep batch output folder")
    p.add_argument("-o", "--output", default=None, help="table to write (.csv or .json; default: print CSV to stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table")
    p.add_argument("--top", type=int, default=None, metavar="N", help="only the first N cases")
    p.set_defaults(run=run)


def table_format(path: str | Path) -> str:
    """``"csv"`` or ``"json"`` from a table path's suffix (anything else: a clear error)."""
    from ..review import ReviewQueueError

    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ReviewQueueError(f"review table {path}: give a .csv or .json file name")
    return suffix[1:]


def write_review_table(items: list[Any], path: str | Path | None, *, overwrite: bool = True) -> None:
    """Write the queue (:func:`SegDeepLogic.review.review_queue`) as a CSV or JSON table (atomically), or print it."""
    from ..review import review_rows

    if path is None or str(path) == "-":
        write_table(review_rows(items), None, "csv")
        return
    if table_format(path) == "csv":
        write_table(review_rows(items), path, "csv", overwrite=overwrite)
    else:  # always a list, even of one case
        write_text(path, json.dumps([dataclasses.asdict(i) for i in items], indent=2) + "\n", overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    from ..review import review_queue

    if args.top is not None and args.top < 1:
        print("segdeep review-queue: --top must be at least 1", file=sys.stderr)
        return 2
    if args.output is not None and args.output != "-":
        table_format(args.output)
        validate_outputs({"-o": args.output}, inputs={"OUTDIR": Path(args.outdir)}, overwrite=args.overwrite)
    items = review_queue(args.outdir)
    if args.top is not None:
        items = items[: args.top]
    write_review_table(items, args.output, overwrite=args.overwrite)
    if args.output is not None and args.output != "-":
        for item in items[:5]:
            print(
                f"{item.rank:3d}. {item.case_id}  score {item.score}  {item.reasons[0] if item.reasons else ''}", file=sys.stderr
            )
        print(f"review queue of {len(items)} case(s) -> {args.output}", file=sys.stderr)
    return 0
