"""Helpers shared by the CLI sub-commands: progress bars, option ranges, output checks and result output."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import check_outputs, write_text
from ..errors import OutputError
from ..options import SegmentOptions
from ..progress import CancelToken, ProgressCallback
from ..refine import RefineOptions
from ..segmentation_io import (
    Segmentation,
    SegmentationFileError,
    SegmentInfo,
    sidecar_paths,
    write_labelmap_nifti,
    write_seg_nrrd,
)
from ..segmentation_read import read_segmentation
from ..volume import Volume


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr driven by the engine's ``progress(fraction, stage)`` callback."""
    bar = tqdm(
        total=100,
        desc=description,
        unit="%",
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )

    def update(fraction: float, stage: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_description_str(f"{description} ({stage})", refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


@contextlib.contextmanager
def ctrl_c_cancels(token: CancelToken, message: str) -> Iterator[None]:
    """First Ctrl-C: cancel ``token`` cooperatively and print ``message``; a second one interrupts at once.

    Outside the main thread (where signals cannot be handled) Ctrl-C is left alone.
    """

    def handler(signum: int, frame: object) -> None:
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        print(f"\n{message}", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_table(rows: list[dict], path: str | Path | None, fmt: str, *, overwrite: bool = True) -> None:
    """Write ``rows`` as JSON or CSV to ``path`` (atomically) or to stdout when ``path`` is None or '-'."""
    if fmt == "json":
        text = json.dumps(rows if len(rows) != 1 else rows[0], indent=2, default=_json_default) + "\n"
    elif fmt == "csv":
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        text = buf.getvalue()
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if path is None or str(path) == "-":
        sys.stdout.write(text)
    else:
        write_text(path, text, overwrite=overwrite)


def number_in(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type`` accepting a finite number in the given range (a usage error, exit 2, otherwise).

    Examples
    --------
    >>> number_in(0, 100)("95")
    95.0
    >>> number_in(0, 100)("150")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 150 is out of range: must be in [0, 100]
    """
    lo_br, hi_br = "(" if low_open else "[", ")" if high_open else "]"
    if low is not None and high is not None:
        span = f"in {lo_br}{low:g}, {high:g}{hi_br}"
    elif low is not None:
        span = f"{'>' if low_open else '>='} {low:g}"
    else:
        span = f"{'<' if high_open else '<='} {high:g}"

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if integer else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {span}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {span}")
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse


def segmentation_targets(flag: str, path: str | Path | None) -> dict[str, Path]:
    """The files a segmentation output writes (a NIfTI label map has two sidecars), keyed for messages.

    Raises :class:`OutputError` (before any work) for a name that is neither ``.seg.nrrd`` nor NIfTI.
    """
    if path is None or str(path) == "-":
        return {}
    path = Path(path)
    name = path.name.lower()
    try:
        is_dir = path.is_dir()
    except OSError:  # an over-long or impossible name: check_outputs says what is wrong
        is_dir = False
    if is_dir:
        raise OutputError(f"{flag} {path} is a folder; give a file name (.seg.nrrd or .nii.gz)")
    if name.endswith(".seg.nrrd"):
        return {flag: path}
    if name.endswith((".nii.gz", ".nii")):
        side = sidecar_paths(path)
        return {flag: path, f"{flag} (sidecar)": side["json"], f"{flag} (colour table)": side["csv"]}
    raise OutputError(f"{flag} {path.name}: use a .seg.nrrd (3D Slicer) or .nii.gz (label map) file name")


def input_files(**inputs: str | Path | None) -> dict[str, Path]:
    """Inputs for :func:`check_outputs`, with the sidecars of NIfTI label maps."""
    out: dict[str, Path] = {}
    for name, value in inputs.items():
        if value is None or str(value) == "-":
            continue
        out[name] = Path(value)
        if Path(value).name.lower().endswith((".nii.gz", ".nii")):
            side = sidecar_paths(Path(value))
            out[f"{name} sidecar"], out[f"{name} colour table"] = side["json"], side["csv"]
    return out


def validate_outputs(
    outputs: dict[str, str | Path | None], *, inputs: dict[str, Path], overwrite: bool, folders: tuple[str, ...] = ()
) -> None:
    """Check every output before any work (see :func:`SegDeepLogic.atomic.check_outputs`)."""
    check_outputs(outputs, inputs=inputs, overwrite=overwrite, folders=folders)


def _json_default(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _csv_value(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value


# --- segmentation files ------------------------------------------------------------------------
def load_segmentation(
    path: str | Path, *, ct: str | Path | None = None, names: list[str] | None = None, repair: bool = False
) -> Segmentation:
    """:func:`~SegDeepLogic.segmentation_read.read_segmentation` (any supported file); ``ct`` is the
    CT's DICOM series folder an RTSTRUCT is rasterised onto (and a DICOM SEG placed on)."""
    return read_segmentation(path, ct_series=ct, names=names, repair=repair)


def load_mask(path: str | Path, label: str | None, *, ct: str | Path | None = None, repair: bool = False) -> tuple[str, Volume]:
    """:func:`select_mask` of a segmentation file; an RTSTRUCT rasterises only the ROI ``label``."""
    from ..rtstruct import is_rtstruct

    if is_rtstruct(path) and label is not None and not label.isdigit():
        seg = load_segmentation(path, ct=ct, names=[label], repair=repair)  # one ROI (a case-insensitive match is accepted)
        return seg.segments[0].name, seg.mask(seg.segments[0].name)
    return select_mask(load_segmentation(path, ct=ct, repair=repair), label, path=path)


def select_mask(seg: Segmentation, label: str | None, *, path: str | Path) -> tuple[str, Volume]:
    """The mask of segment ``label`` (a name or a label value); all non-zero voxels if None."""
    if label is None:
        names = ", ".join(seg.names) or "no segment"
        if len(seg.segments) == 1:
            return seg.segments[0].name, seg.mask(seg.segments[0].name)
        return f"all ({names})", seg.labelmap.with_array(seg.labelmap.array != 0)
    for s in seg.segments:
        if s.name == label or (label.isdigit() and s.value == int(label)):
            return s.name, seg.mask(s.name)
    raise SegmentationFileError(f"{path} has no segment {label!r}; its segments are: {', '.join(seg.names) or '(none)'}")


def save_segmentation(labelmap: Volume, segments: list[SegmentInfo], path: str | Path, *, overwrite: bool) -> list[Path]:
    """Write ``.seg.nrrd`` (Slicer) or a NIfTI label map with sidecars, chosen by suffix."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        return [write_seg_nrrd(labelmap, segments, path, overwrite=overwrite)]
    if name.endswith((".nii.gz", ".nii")):
        return list(write_labelmap_nifti(labelmap, segments, path, overwrite=overwrite).values())
    raise SegmentationFileError(f"cannot write {path.name}: use a .seg.nrrd (3D Slicer) or .nii.gz (label map) file name")


# --- segmentation options ----------------------------------------------------------------------
def segment_options_from_args(args: argparse.Namespace, **fixed: Any) -> SegmentOptions:
    """The :class:`~SegDeepLogic.options.SegmentOptions` of the network flags ``segdeep segment`` and
    ``segdeep batch`` share (``--device``, ``--precision``, ``--overlap``, ``--batch-size``,
    ``--threads``, ``--tta``, ``--threshold``, ``--keep-largest``, ``--min-island-mm3``,
    ``--refine*``), with ``fixed`` options on top."""
    refine_options = None
    if args.refine_hu != RefineOptions.lower_hu or args.refine_grow_mm is not None:
        refine_options = RefineOptions(lower_hu=args.refine_hu, grow_mm=args.refine_grow_mm or RefineOptions.grow_mm)
    return SegmentOptions(
        device=args.device,
        precision=args.precision,
        overlap=args.overlap,
        batch_size=args.batch_size,
        num_threads=args.threads,
        tta=args.tta,
        thresholds=args.threshold,
        keep_largest=args.keep_largest,
        min_island_mm3=args.min_island_mm3,
        refine=args.refine,
        refine_labels=args.refine_labels,
        refine_options=refine_options,
        restrict_to_body=not getattr(args, "no_body_crop", False),
        **fixed,
    )
