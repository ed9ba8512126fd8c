"""Helpers shared by the CLI sub-commands: progress bars and result output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_path
from ..progress import ProgressCallback
from ..segmentation_io import (
    Segmentation,
    SegmentationFileError,
    SegmentInfo,
    read_labelmap_nifti,
    read_seg_nrrd,
    sidecar_paths,
    write_labelmap_nifti,
    write_seg_nrrd,
)
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


def write_table(rows: list[dict], path: str | Path | None, fmt: str) -> None:
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
        with atomic_path(path) as tmp:
            tmp.write_text(text)


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
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def load_segmentation(
    path: str | Path, *, ct: str | Path | None = None, names: list[str] | None = None, repair: bool = False
) -> Segmentation:
    """Read a Slicer ``.seg.nrrd``, a label map (NIfTI/NRRD/MHA, with or without sidecar) or a DICOM RTSTRUCT.

    A single-label file without a sidecar (such as ``mandible.nii.gz``) gets a segment named
    after the file. An RT Structure Set is rasterised onto its CT series (``ct``: the series
    folder; default the referenced series next to the file); ``names`` picks ROIs by name.
    """
    from ..rtstruct import is_rtstruct, rtstruct_segmentation

    if is_rtstruct(path):
        return rtstruct_segmentation(path, ct, names=names, repair=repair)
    path = Path(path)
    if path.name.lower().endswith(".seg.nrrd"):
        return read_seg_nrrd(path)
    seg = read_labelmap_nifti(path)
    if len(seg.segments) == 1 and seg.segments[0].name.startswith("Label ") and not sidecar_paths(path)["json"].exists():
        stem = path.name.split(".")[0]
        seg = Segmentation(seg.labelmap, [SegmentInfo(stem, seg.segments[0].value, seg.segments[0].color)])
    return seg


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
