"""Segmentation files: 3D Slicer ``.seg.nrrd`` and NIfTI label maps with a colour table.

A segmentation here is a **label map** -- an integer :class:`~SegDeepLogic.volume.Volume` in
which 0 is background and each segment owns one positive value -- plus a list of
:class:`SegmentInfo` (name, value, colour, optional terminology). Segments do not overlap
(one layer, in Slicer's terms). :class:`Segmentation` holds both.

Files
-----
``.seg.nrrd`` (:func:`write_seg_nrrd`, :func:`read_seg_nrrd`, :func:`read_seg_nrrd_layers`)
    The format 3D Slicer's Segmentations module saves and loads: a gzip-compressed NRRD label
    map in ``left-posterior-superior`` space whose header carries one ``Segment{N}_*`` block
    per segment (ID, name, colour, label value, layer, extent, tags with the terminology) and
    the ``Segmentation_*`` fields (master representation ``Binary labelmap``, conversion
    parameters, reference-image extent offset) exactly as Slicer 5 writes them. The header is
    written by this module (ITK's NRRD writer cannot produce the ``kinds`` / ``:=`` layout
    byte for byte); reading parses it the same way, including Slicer's multi-layer (4D) files.
    Not ``slicerio`` (the Slicer project's reader/writer, used by the tests to cross-check our
    files): slicerio 1.4 cannot write a segment name outside ASCII, reads one with the non-ASCII
    letters silently dropped, and refuses files real Slicer reads (an unparseable terminology
    tag, a tag without ``:``, ``space: LPS``); it also inflates the data before any size check
    and stamps the time into every header. ``Testing/test_segmentation_io.py`` shows each case
    against real Slicer (slicer-core).

``.nii.gz`` label map (:func:`write_labelmap_nifti`, :func:`read_labelmap_nifti`)
    A uint8 (uint16 above 255 labels) NIfTI label map plus two sidecars next to it, named
    after the label map without its ``.nii``/``.nii.gz`` suffix:

    * ``<stem>.labels.json`` -- names, values, colours (RGB 0-1) and terminology, for programs;
    * ``<stem>.labels.csv`` -- a 3D Slicer CSV colour table (columns ``LabelValue, Name,
      Color_R, Color_G, Color_B, Color_A`` in 0-255 and the terminology code columns), which
      Slicer loads as a colour node to name and colour the label map.

All writers are atomic (a file appears under its final name only when complete; with several
files, none appears unless all were written) and refuse to overwrite existing files unless
``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from ._compat import zip_strict
from .atomic import atomic_outputs, atomic_path, write_all
from .errors import GeometryMismatchError, ImageSizeError, SegDeepError, VolumeReadError
from .filecheck import nrrd_layout, parse_nrrd_fields, read_text_header, scan_payload
from .io import read_volume, verify_image_file, write_image
from .terminology import TerminologyError, terminology_codes, terminology_entry
from .volume import Volume

__all__ = [
    "SegmentInfo",
    "Segmentation",
    "SegmentationFileError",
    "default_color",
    "labelmap_from_masks",
    "read_labelmap_nifti",
    "read_seg_nrrd",
    "read_seg_nrrd_layers",
    "seg_nrrd_header",
    "sidecar_paths",
    "write_labelmap_nifti",
    "write_seg_nrrd",
]

MAX_LABEL_VALUE = 65535

Color = tuple[float, float, float]


class SegmentationFileError(SegDeepError, ValueError):
    """A segmentation (label map + segment list) is invalid, or a segmentation file is unusable."""


# A palette of well separated colours for segments created without one (value 1 = bone colour
# of Slicer's generic anatomy table, 241/214/145).
_PALETTE: tuple[Color, ...] = (
    (241 / 255, 214 / 255, 145 / 255),
    (0.863, 0.243, 0.204),
    (0.235, 0.569, 0.808),
    (0.361, 0.722, 0.361),
    (0.600, 0.400, 0.800),
    (0.957, 0.600, 0.200),
    (0.275, 0.784, 0.784),
    (0.863, 0.451, 0.706),
    (0.706, 0.706, 0.275),
    (0.502, 0.502, 0.502),
)


def default_color(value: int) -> Color:
    """Colour given to segment ``value`` when none is specified (a fixed 10-colour cycle).

    Examples
    --------
    >>> [round(c, 3) for c in default_color(1)]
    [0.945, 0.839, 0.569]
    """
    return _PALETTE[(int(value) - 1) % len(_PALETTE)]


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class SegmentInfo:
    """One segment of a label map.

    Parameters
    ----------
    name : str
        Display name (non-empty, one line).
    value : int
        Label value in the label map, 1..65535 (0 is background).
    color : (r, g, b) floats in [0, 1], optional
        Display colour; :func:`default_color` of ``value`` if omitted.
    terminology : str, optional
        A model card's coded concept (``"SCT^91609006^Mandible"``) or a full Slicer terminology
        entry (e.g. ``"Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^
        Tissue~SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^"``). Stored as the
        full entry (:func:`SegDeepLogic.terminology.terminology_entry`), which the segment's
        ``TerminologyEntry`` tag holds.

    Examples
    --------
    >>> SegmentInfo("Bone", 1, (0.9, 0.8, 0.6))
    SegmentInfo(name='Bone', value=1, color=(0.9, 0.8, 0.6), terminology=None)
    >>> SegmentInfo("", 1)
    Traceback (most recent call last):
    ...
    SegDeepLogic.segmentation_io.SegmentationFileError: segment name must be a non-empty string, got ''
    """

    name: str
    value: int
    color: Color | None = None
    terminology: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SegmentationFileError(f"segment name must be a non-empty string, got {self.name!r}")
        if _CONTROL.search(self.name):
            raise SegmentationFileError(f"segment name {self.name!r} contains a line break or control character")
        value = self.value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise SegmentationFileError(f"label value of segment {self.name!r} must be an integer, got {value!r}")
        if not 1 <= int(value) <= MAX_LABEL_VALUE:
            raise SegmentationFileError(
                f"label value of segment {self.name!r} must be in 1..{MAX_LABEL_VALUE} (0 is background), got {value}"
            )
        object.__setattr__(self, "value", int(value))
        color = default_color(int(value)) if self.color is None else self.color
        try:
            rgb = tuple(float(c) for c in color)
        except (TypeError, ValueError):
            raise SegmentationFileError(f"colour of segment {self.name!r} must be 3 numbers in [0, 1], got {color!r}") from None
        if len(rgb) != 3 or not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in rgb):
            raise SegmentationFileError(f"colour of segment {self.name!r} must be 3 numbers in [0, 1] (RGB), got {color!r}")
        object.__setattr__(self, "color", rgb)
        if self.terminology is not None:
            if not isinstance(self.terminology, str) or _CONTROL.search(self.terminology) or "|" in self.terminology:
                raise SegmentationFileError(
                    f"terminology of segment {self.name!r} must be a one-line string without '|', got {self.terminology!r}"
                )
            try:  # a model card's "SCT^91609006^Mandible" becomes the full entry Slicer and slicerio read
                entry = terminology_entry(self.terminology, self.name)
            except TerminologyError as exc:
                raise SegmentationFileError(f"terminology of segment {self.name!r}: {exc}") from None
            object.__setattr__(self, "terminology", entry)


@dataclasses.dataclass(frozen=True, eq=False)
class Segmentation:
    """A label map with its segments (non-overlapping, one layer).

    Parameters
    ----------
    labelmap : Volume
        Integer (or bool) label map; 0 is background.
    segments : sequence of SegmentInfo
        Unique names and values. Every non-zero value in ``labelmap`` must belong to a segment;
        a segment whose value does not occur is an empty segment.

    Examples
    --------
    >>> import numpy as np
    >>> lm = Volume(np.array([[[0, 1, 1, 2]]], np.uint8), spacing=(1, 1, 1))
    >>> seg = Segmentation(lm, [SegmentInfo("Bone", 1), SegmentInfo("Teeth", 2)])
    >>> seg.names
    ('Bone', 'Teeth')
    >>> seg.mask("Bone").array.astype(int).tolist()
    [[[0, 1, 1, 0]]]
    """

    labelmap: Volume
    segments: tuple[SegmentInfo, ...]

    def __post_init__(self) -> None:
        segments = tuple(self.segments)
        _check_segments(segments)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "labelmap", _check_labelmap(self.labelmap, segments))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    def segment(self, name: str) -> SegmentInfo:
        """The segment called ``name`` (KeyError listing the names otherwise)."""
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(f"no segment named {name!r}; segments: {', '.join(self.names) or '(none)'}")

    def mask(self, name: str) -> Volume:
        """Boolean mask of segment ``name`` on the label map's grid."""
        return self.labelmap.with_array(self.labelmap.array == self.segment(name).value)

    def masks(self) -> dict[str, Volume]:
        """``{name: boolean mask}`` for every segment, in segment order."""
        return {s.name: self.mask(s.name) for s in self.segments}


def _check_segments(segments: Sequence[SegmentInfo]) -> None:
    for s in segments:
        if not isinstance(s, SegmentInfo):
            raise SegmentationFileError(f"segments must be SegmentInfo objects, got {type(s).__name__}")
    names = [s.name for s in segments]
    values = [s.value for s in segments]
    dup_names = sorted({n for n in names if names.count(n) > 1})
    if dup_names:
        raise SegmentationFileError(f"duplicate segment names: {', '.join(map(repr, dup_names))}")
    dup_values = sorted({v for v in values if values.count(v) > 1})
    if dup_values:
        owners = "; ".join(f"{v}: {', '.join(s.name for s in segments if s.value == v)}" for v in dup_values)
        raise SegmentationFileError(f"duplicate label values (each segment needs its own): {owners}")


def _check_labelmap(labelmap: Volume, segments: Sequence[SegmentInfo]) -> Volume:
    if not isinstance(labelmap, Volume):
        raise SegmentationFileError(f"the label map must be a Volume, got {type(labelmap).__name__}")
    a = labelmap.array
    if a.dtype == bool:
        a = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        if a.size and not (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))):
            raise SegmentationFileError(
                f"the label map must hold integer labels, got dtype {a.dtype} with fractional or non-finite values"
            )
    elif a.dtype.kind not in "iu":
        raise SegmentationFileError(f"the label map must hold integer labels, got dtype {a.dtype}")
    if a.size == 0:
        raise SegmentationFileError("the label map is empty")
    lo, hi = a.min(), a.max()
    if lo < 0:
        raise SegmentationFileError(f"the label map has negative values (minimum {lo}); labels must be >= 0")
    if hi > MAX_LABEL_VALUE:
        raise SegmentationFileError(f"the label map has values up to {hi}; at most {MAX_LABEL_VALUE} is supported")
    declared = {s.value for s in segments}
    present = _present_labels(a, int(hi))
    unknown = sorted(set(present) - declared)
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        raise SegmentationFileError(
            f"the label map contains values with no segment: {shown}; give a SegmentInfo for each label value"
        )
    top = max(declared, default=int(hi))
    dtype = np.uint8 if top <= 255 else np.uint16
    if a.dtype != dtype:
        a = a.astype(dtype)
    return labelmap if a is labelmap.array else labelmap.with_array(a)


def _present_labels(a: np.ndarray, hi: int) -> list[int]:
    if a.dtype.kind in "iu" and hi <= MAX_LABEL_VALUE:
        counts = np.bincount(a.ravel().astype(np.intp, copy=False), minlength=hi + 1) if hi >= 0 else np.zeros(1, int)
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    return [int(v) for v in np.unique(a) if v != 0]


# --------------------------------------------------------------------------------------------
# Building a label map from masks
# --------------------------------------------------------------------------------------------
def labelmap_from_masks(
    masks: Mapping[str | SegmentInfo, Volume | np.ndarray],
    *,
    reference: Volume | None = None,
    overlap: Literal["error", "first", "last"] = "error",
) -> Segmentation:
    """Combine binary masks into one label map.

    Parameters
    ----------
    masks : mapping
        ``{name or SegmentInfo: mask}``. A plain name gets value = its position (1, 2, ...)
        and the :func:`default_color`; a :class:`SegmentInfo` key keeps its value, colour and
        terminology. Masks are Volumes on one grid, or arrays of the reference's shape.
    reference : Volume, optional
        Grid of the label map. Defaults to the first Volume mask's grid; required when all
        masks are bare arrays.
    overlap : {'error', 'first', 'last'}
        What to do with a voxel claimed by two masks: raise :class:`SegmentationFileError`
        naming the two segments and the voxel count (default); keep the segment that comes
        **first** in ``masks`` (earlier masks take priority); or the one that comes **last**
        (later masks paint over earlier ones).

    Returns
    -------
    Segmentation

    Examples
    --------
    >>> import numpy as np
    >>> grid = Volume(np.zeros((1, 1, 4), np.uint8), spacing=(1, 1, 1))
    >>> a = np.array([[[1, 1, 0, 0]]], bool); b = np.array([[[0, 1, 1, 0]]], bool)
    >>> labelmap_from_masks({"A": a, "B": b}, reference=grid, overlap="first").labelmap.array.tolist()
    [[[1, 1, 2, 0]]]
    >>> labelmap_from_masks({"A": a, "B": b}, reference=grid, overlap="last").labelmap.array.tolist()
    [[[1, 2, 2, 0]]]
    """
    if overlap not in ("error", "first", "last"):
        raise SegmentationFileError(f"overlap must be 'error', 'first' or 'last', got {overlap!r}")
    if not masks:
        raise SegmentationFileError("no masks given")
    segments: list[SegmentInfo] = []
    for position, key in enumerate(masks, start=1):
        if isinstance(key, SegmentInfo):
            segments.append(key)
        elif isinstance(key, str):
            segments.append(SegmentInfo(key, position))
        else:
            raise SegmentationFileError(f"mask keys must be names or SegmentInfo objects, got {key!r}")
    _check_segments(segments)

    grid = reference if reference is not None else next((m for m in masks.values() if isinstance(m, Volume)), None)
    if grid is None:
        raise SegmentationFileError("all masks are bare arrays: pass reference=<Volume> to give the label map its geometry")
    top = max(s.value for s in segments)
    labels = np.zeros(grid.array.shape, dtype=np.uint8 if top <= 255 else np.uint16)
    owner = {}  # label value -> segment name, for overlap messages
    for seg, mask in zip_strict(segments, masks.values()):
        if isinstance(mask, Volume):
            grid.require_same_grid(mask, f"mask {seg.name!r} and the label map grid")
            m = mask.array
        else:
            m = np.asarray(mask)
            if m.shape != grid.array.shape:
                raise GeometryMismatchError(f"mask {seg.name!r} has shape {m.shape}, the label map grid {grid.array.shape}")
        m = m if m.dtype == bool else m != 0
        taken = m & (labels != 0)
        if overlap == "error" and taken.any():
            clash = np.bincount(labels[taken])
            other = owner[int(np.argmax(clash))]
            raise SegmentationFileError(
                f"segments {other!r} and {seg.name!r} overlap in {int(taken.sum())} voxel(s); "
                "a label map holds one segment per voxel (use overlap='first' or 'last' to resolve by order)"
            )
        labels[(m & ~taken) if overlap == "first" else m] = seg.value
        owner[seg.value] = seg.name
    return Segmentation(grid.with_array(labels), tuple(segments))


# --------------------------------------------------------------------------------------------
# .seg.nrrd writing
# --------------------------------------------------------------------------------------------
# Slicer 5.12's default conversion parameters, as vtkMRMLSegmentationStorageNode writes them
# (the reference image geometry is filled in from the label map).
_CONVERSION_PARAMETERS = (
    ("Decimation factor", "0.0", "Desired reduction in the total number of polygons. Range: 0.0 (no decimation) to 1.0 (as much simplification as possible). Value of 0.8 typically reduces data set size by 80% without losing too much details."),
    ("Smoothing factor", "0.5", "Smoothing factor. Range: 0.0 (no smoothing) to 1.0 (strong smoothing)."),
    ("Compute surface normals", "1", "Compute surface normals. 1 (default) = surface normals are computed. 0 = surface normals are not computed (slightly faster but produces less smooth surface display, not used if vtkSurfaceNets3D is used)."),
    ("Conversion method", "0", "Conversion method. 0 (default) = vtkDiscreteFlyingEdges3D is used to generate closed surface.1 = vtkSurfaceNets3D (more performant than flying edges)."),
    ("SurfaceNets smoothing", "0", "SurfaceNets smoothing. 0 (default) = Smoothing done by vtkWindowedSincPolyDataFilter1 = Smoothing done in surface nets filter."),
    ("Joint smoothing", "0", "Perform joint smoothing."),
    ("Reference image geometry", None, "Image geometry description string determining the geometry of the labelmap that is created in course of conversion. Can be copied from a volume, using the button."),
    ("Oversampling factor", "1", 'Determines the oversampling of the reference image geometry. If it\'s a number, then all segments are oversampled with the same value (value of 1 means no oversampling). If it has the value "A", then automatic oversampling is calculated.'),
    ("Crop to reference image geometry", "0", "Crop the model to the extent of reference geometry. 0 (default) = created labelmap will contain the entire model. 1 = created labelmap extent will be within reference image extent."),
    ("Collapse labelmaps", "1", "Merge the labelmaps into as few shared labelmaps as possible 1 = created labelmaps will be shared if possible without overwriting each other."),
    ("Fractional labelmap oversampling factor", "1", "Determines the oversampling of the reference image geometry. All segments are oversampled with the same value (value of 1 means no oversampling)."),
    ("Threshold fraction", "0.5", "Determines the threshold that the closed surface is created at as a fractional value between 0 and 1."),
)  # fmt: skip

_NRRD_TYPES = {
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.uint16): "unsigned short",
}


def _num(x: float) -> str:
    """Shortest round-trip text of a float, without '.0' on integers and without '-0'."""
    x = float(x)
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _vector(v: Iterable[float]) -> str:
    return "(" + ",".join(_num(x) for x in v) + ")"


def _reference_geometry(labelmap: Volume) -> str:
    """Slicer's serialised image geometry: IJK-to-RAS matrix (row-major) then the extent."""
    matrix = labelmap.affine("RAS")
    ni, nj, nk = labelmap.shape_ijk
    values = [_num(x) for x in matrix.ravel()] + [str(n) for n in (0, ni - 1, 0, nj - 1, 0, nk - 1)]
    return ";".join(values) + ";"


def seg_nrrd_header(labelmap: Volume, segments: Sequence[SegmentInfo], *, encoding: str = "gzip") -> str:
    """The NRRD header text :func:`write_seg_nrrd` writes (ends with the blank line).

    Examples
    --------
    >>> import numpy as np
    >>> lm = Volume(np.zeros((2, 3, 4), np.uint8), spacing=(0.5, 0.5, 2.0), origin=(10, 20, 30))
    >>> header = seg_nrrd_header(lm, [SegmentInfo("Bone", 1)])
    >>> print("\\n".join(line for line in header.splitlines() if not line.startswith("Segmentation_Conv")))
    NRRD0004
    # Complete NRRD file format specification at:
    # http://teem.sourceforge.net/nrrd/format.html
    type: unsigned char
    dimension: 3
    space: left-posterior-superior
    sizes: 4 3 2
    space directions: (0.5,0,0) (0,0.5,0) (0,0,2)
    kinds: domain domain domain
    encoding: gzip
    space origin: (10,20,30)
    Segment0_Color:=0.945098 0.839216 0.568627
    Segment0_ColorAutoGenerated:=0
    Segment0_Extent:=0 3 0 2 0 1
    Segment0_ID:=Segment_1
    Segment0_LabelValue:=1
    Segment0_Layer:=0
    Segment0_Name:=Bone
    Segment0_NameAutoGenerated:=0
    Segment0_Tags:=
    Segmentation_ContainedRepresentationNames:=Binary labelmap|
    Segmentation_MasterRepresentation:=Binary labelmap
    Segmentation_ReferenceImageExtentOffset:=0 0 0
    <BLANKLINE>
    """
    labelmap = Segmentation(labelmap, tuple(segments)).labelmap  # validates, picks uint8/uint16
    a = labelmap.array
    ni, nj, nk = labelmap.shape_ijk
    axes = labelmap.direction * np.array(labelmap.spacing)  # column c = LPS step of axis c
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {_NRRD_TYPES[a.dtype]}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {ni} {nj} {nk}",
        "space directions: " + " ".join(_vector(axes[:, c]) for c in range(3)),
        "kinds: domain domain domain",
    ]
    if a.dtype.itemsize > 1:
        lines.append("endian: little")
    lines += [f"encoding: {encoding}", f"space origin: {_vector(labelmap.origin)}"]
    extent = f"0 {ni - 1} 0 {nj - 1} 0 {nk - 1}"
    for n, s in enumerate(segments):
        tags = f"TerminologyEntry:{s.terminology}|" if s.terminology else ""
        lines += [
            f"Segment{n}_Color:=" + " ".join(f"{c:.6g}" for c in s.color),
            f"Segment{n}_ColorAutoGenerated:=0",
            f"Segment{n}_Extent:={extent}",
            f"Segment{n}_ID:=Segment_{s.value}",
            f"Segment{n}_LabelValue:={s.value}",
            f"Segment{n}_Layer:=0",
            f"Segment{n}_Name:={s.name}",
            f"Segment{n}_NameAutoGenerated:=0",
            f"Segment{n}_Tags:={tags}",
        ]
    conversion = "".join(
        f"{name}|{_reference_geometry(labelmap) if value is None else value}|{description}&"
        for name, value, description in _CONVERSION_PARAMETERS
    )
    lines += [
        "Segmentation_ContainedRepresentationNames:=Binary labelmap|",
        f"Segmentation_ConversionParameters:={conversion}",
        "Segmentation_MasterRepresentation:=Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset:=0 0 0",
    ]
    return "\n".join(lines) + "\n\n"


def write_seg_nrrd(
    labelmap: Volume,
    segments: Sequence[SegmentInfo],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compression_level: int = 1,
) -> Path:
    """Write a label map and its segments as a 3D Slicer segmentation file (``.seg.nrrd``).

    Parameters
    ----------
    labelmap : Volume
        Integer label map (0 = background); its geometry becomes the NRRD space directions
        and origin (LPS).
    segments : sequence of SegmentInfo
        One entry per label value; ``Segment{N}`` in the header follows this order. The
        segment IDs are ``Segment_<value>``.
    path : path-like
        Output file; should end in ``.seg.nrrd`` (Slicer loads a plain ``.nrrd`` as a volume).
    overwrite : bool
        Replace an existing file (default: refuse with ``FileExistsError``).
    compression_level : int
        gzip level 1 (fast, the default; label maps compress well anyway) to 9.

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> lm = Volume(np.array([[[0, 1, 2]]], np.uint8), spacing=(1, 1, 1))
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "bone.seg.nrrd"
    >>> _ = write_seg_nrrd(lm, [SegmentInfo("Bone", 1), SegmentInfo("Teeth", 2)], out)
    >>> read_seg_nrrd(out).names
    ('Bone', 'Teeth')
    """
    path = Path(path)
    if not path.name.lower().endswith(".nrrd"):
        raise SegmentationFileError(f"cannot write {path.name}: a Slicer segmentation file must end in .seg.nrrd")
    if not 0 <= int(compression_level) <= 9:
        raise SegmentationFileError(f"compression_level must be 0..9, got {compression_level}")
    segments = tuple(segments)
    segmentation = Segmentation(labelmap, segments)
    header = seg_nrrd_header(segmentation.labelmap, segments).encode("utf-8")
    data = np.ascontiguousarray(segmentation.labelmap.array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        f.write(header)
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=int(compression_level), mtime=0) as gz:
            for k in range(data.shape[0]):  # slice by slice: no second full-size copy in memory
                gz.write(data[k].tobytes())
    return path


# --------------------------------------------------------------------------------------------
# .seg.nrrd reading
# --------------------------------------------------------------------------------------------
_TYPE_NAMES = {
    np.dtype(np.int8): ("signed char", "int8", "int8_t"),
    np.dtype(np.uint8): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype(np.int16): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.dtype(np.uint16): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype(np.int32): ("int", "signed int", "int32", "int32_t"),
    np.dtype(np.uint32): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype(np.int64): ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    np.dtype(np.uint64): ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    np.dtype(np.float32): ("float",),
    np.dtype(np.float64): ("double",),
}  # fmt: skip
_NRRD_DTYPE = {name: dtype for dtype, names in _TYPE_NAMES.items() for name in names}
_LPS_SPACES = {"left-posterior-superior": 1.0, "lps": 1.0, "right-anterior-superior": -1.0, "ras": -1.0}


@dataclasses.dataclass
class _NrrdFile:
    fields: dict[str, str]
    keys: dict[str, str]
    data: np.ndarray  # shape (nk, nj, ni) or (nk, nj, ni, layers)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray


def _read_nrrd(path: Path) -> _NrrdFile:
    if not path.exists():
        raise VolumeReadError(f"no such file: {path}")
    try:
        header, start = read_text_header(path, magic=b"NRRD000", end="blank")
    except VolumeReadError as exc:
        raise SegmentationFileError(str(exc)) from None
    fields, keys = parse_nrrd_fields(header)
    if fields.get("byte skip", "0") != "0" or fields.get("line skip", "0") != "0":
        raise SegmentationFileError(f"{path}: NRRD 'byte skip' / 'line skip' are not supported")
    for field in ("data file", "datafile"):
        if field in fields:
            raise SegmentationFileError(
                f"{path}: detached NRRD data ('{field}: {fields[field]}') is not supported; save as .seg.nrrd"
            )
    try:
        dtype = _NRRD_DTYPE[fields["type"].lower()]
        dimension = int(fields["dimension"])
        sizes = [int(s) for s in fields["sizes"].split()]
    except KeyError as exc:
        raise SegmentationFileError(f"{path}: NRRD header lacks or has an unknown {exc} field") from None
    except ValueError as exc:
        raise SegmentationFileError(f"{path}: unreadable NRRD sizes or dimension ({exc})") from None
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if fields.get("endian", "little").lower() == "big" else "<")
    if len(sizes) != dimension or dimension not in (3, 4):
        raise SegmentationFileError(f"{path}: expected a 3D (or 4D multi-layer) segmentation, got sizes {sizes}")
    kinds = fields.get("kinds", " ".join(["domain"] * dimension)).split()
    if len(kinds) != dimension:
        raise SegmentationFileError(f"{path}: 'kinds' has {len(kinds)} entries for {dimension} axes")
    domain_axes = [n for n, kind in enumerate(kinds) if kind.lower() in ("domain", "space")]
    if dimension == 4 and domain_axes != [1, 2, 3]:
        raise SegmentationFileError(
            f"{path}: unsupported 4D layout (kinds: {' '.join(kinds)}); Slicer multi-layer files have the layer axis first ('list domain domain domain')"
        )
    if dimension == 3 and len(domain_axes) != 3:
        raise SegmentationFileError(f"{path}: expected 3 spatial axes, got kinds: {' '.join(kinds)}")

    space = fields.get("space", "").lower()
    if space not in _LPS_SPACES:
        raise SegmentationFileError(
            f"{path}: unsupported NRRD space {fields.get('space')!r}; expected left-posterior-superior or RAS"
        )
    flip = np.array([_LPS_SPACES[space], _LPS_SPACES[space], 1.0])
    vectors = re.findall(r"\(([^)]*)\)|none", fields.get("space directions", ""))
    vectors = [v for v in vectors if v != ""]
    if len(vectors) != 3:
        raise SegmentationFileError(f"{path}: needs 3 space direction vectors, got {fields.get('space directions')!r}")
    try:
        axes = np.array([[float(x) for x in v.split(",")] for v in vectors]).T * flip[:, None]
        origin_text = fields.get("space origin", "(0,0,0)").strip().strip("()")
        origin = np.array([float(x) for x in origin_text.split(",")]) * flip
    except ValueError as exc:
        raise SegmentationFileError(f"{path}: unreadable space directions or origin: {exc}") from None
    if axes.shape != (3, 3) or origin.shape != (3,):
        raise SegmentationFileError(f"{path}: space directions and origin must be 3D")
    spacing = np.linalg.norm(axes, axis=0)
    if not np.all(spacing > 0):
        raise SegmentationFileError(f"{path}: a space direction has zero length")

    count = int(np.prod(sizes))
    try:
        _, _, compression = nrrd_layout(path, fields)  # voxel limit and encoding, before anything is inflated
        body = scan_payload(
            path,
            offset=start,
            nbytes=count * dtype.itemsize,
            compression=compression,
            check_finite=dtype if dtype.kind == "f" else None,
            keep=True,
        )
    except ImageSizeError:
        raise
    except VolumeReadError as exc:
        raise SegmentationFileError(str(exc)) from None
    data = np.frombuffer(body, dtype=dtype, count=count)
    data = data.reshape(sizes[::-1]).astype(dtype.newbyteorder("="), copy=False)
    return _NrrdFile(fields, keys, data, tuple(spacing), tuple(origin), axes / spacing)


def _segments_from_keys(keys: Mapping[str, str], layers: int, path: Path) -> list[tuple[SegmentInfo, int]]:
    """(SegmentInfo, layer) for each ``Segment{N}_*`` block, in N order."""
    numbers_ = sorted({int(m.group(1)) for k in keys if (m := re.match(r"Segment(\d+)_", k))})
    result = []
    for n in numbers_:
        get = lambda field, n=n: keys.get(f"Segment{n}_{field}")  # noqa: E731
        name = get("Name") or get("ID") or f"Segment_{n + 1}"
        try:
            value = int(get("LabelValue") or 1)  # files before Slicer 4.11: one binary layer per segment
            layer = int(get("Layer") or (n if layers > 1 else 0))
            color_text = get("Color")
            color = tuple(float(c) for c in color_text.split()) if color_text else None
        except ValueError as exc:
            raise SegmentationFileError(f"{path}: unreadable fields of segment {n} ({name!r}): {exc}") from None
        if not 0 <= layer < layers:
            raise SegmentationFileError(f"{path}: segment {name!r} is in layer {layer}, but the file has {layers} layer(s)")
        terminology = None
        for tag in (get("Tags") or "").split("|"):
            if tag.startswith("TerminologyEntry:"):
                terminology = tag[len("TerminologyEntry:") :] or None
        try:  # another program's entry SegDeep cannot interpret is dropped, not an error
            terminology = terminology_entry(terminology, name)
        except TerminologyError:
            terminology = None
        if color is not None and (len(color) != 3 or not all(0 <= c <= 1 for c in color)):
            color = None
        result.append((SegmentInfo(name, value, color, terminology), layer))
    return result


def read_seg_nrrd_layers(path: str | os.PathLike) -> list[Segmentation]:
    """Read a ``.seg.nrrd`` as one :class:`Segmentation` per layer.

    Slicer stores segments that overlap in separate layers (a 4D NRRD, layer axis first); each
    layer is a label map of its own and label values repeat between layers. A 3D file gives a
    list of one.

    The label maps are on the grid stored in the file. Slicer may save a segmentation cropped
    to its segments; the geometry (origin) in the file accounts for that.
    """
    path = Path(path)
    nrrd = _read_nrrd(path)
    a = nrrd.data
    layers = 1 if a.ndim == 3 else a.shape[3]
    if a.dtype.kind not in "iu":
        raise SegmentationFileError(f"{path}: a segmentation label map must be integer, got {a.dtype}")
    pairs = _segments_from_keys(nrrd.keys, layers, path)
    result = []
    for layer in range(layers):
        array = a if a.ndim == 3 else np.ascontiguousarray(a[..., layer])
        volume = Volume(array, nrrd.spacing, nrrd.origin, nrrd.direction)
        segments = tuple(s for s, lay in pairs if lay == layer)
        try:
            result.append(Segmentation(volume, segments))
        except SegmentationFileError as exc:
            raise SegmentationFileError(f"{path} (layer {layer}): {exc}") from None
    return result


def read_seg_nrrd(path: str | os.PathLike, *, reference: Volume | None = None) -> Segmentation:
    """Read a 3D Slicer ``.seg.nrrd`` into a single label map with its segments.

    Parameters
    ----------
    path : path-like
        The segmentation file (single- or multi-layer).
    reference : Volume, optional
        Place the label map on this grid (e.g. the CT it was drawn on). Slicer often saves
        segmentations cropped to the segments' extent; with a reference the crop is put back
        at its position. The grids must share spacing and direction and be offset by whole
        voxels; labelled voxels outside the reference are an error.

    Returns
    -------
    Segmentation

    Raises
    ------
    SegmentationFileError
        Unreadable or inconsistent file, or a multi-layer file whose segments overlap (a
        single label map cannot hold them: use :func:`read_seg_nrrd_layers`).

    Notes
    -----
    A multi-layer file whose segments do not overlap is merged into one label map; label
    values that repeat between layers are then renumbered to the smallest unused values.
    """
    layers = read_seg_nrrd_layers(path)
    segmentation = layers[0] if len(layers) == 1 else _merge_layers(layers, Path(path))
    if reference is not None:
        segmentation = Segmentation(_paste_on_grid(segmentation.labelmap, reference, Path(path)), segmentation.segments)
    return segmentation


def _merge_layers(layers: Sequence[Segmentation], path: Path) -> Segmentation:
    segments = [s for layer in layers for s in layer.segments]
    values = [s.value for s in segments]
    if len(set(values)) != len(values):
        used: set[int] = set()
        renumbered = []
        for s in segments:
            value = s.value
            if value in used:
                value = next(v for v in range(1, MAX_LABEL_VALUE + 1) if v not in used and v not in values)
            used.add(value)
            renumbered.append(dataclasses.replace(s, value=value))
    else:
        renumbered = segments
    top = max((s.value for s in renumbered), default=1)
    merged = np.zeros(layers[0].labelmap.array.shape, np.uint8 if top <= 255 else np.uint16)
    owner = np.zeros(merged.shape, dtype=np.int32)  # index + 1 of the segment holding a voxel
    index = 0
    for layer in layers:
        for s in layer.segments:
            m = layer.labelmap.array == s.value
            clash = m & (owner > 0)
            if clash.any():
                other = segments[int(owner[clash][0]) - 1].name
                raise SegmentationFileError(
                    f"{path}: segments {other!r} and {s.name!r} overlap in {int(clash.sum())} voxel(s) (multi-layer "
                    "segmentation); one label map cannot hold both: use read_seg_nrrd_layers()"
                )
            merged[m] = renumbered[index].value
            owner[m] = index + 1
            index += 1
    return Segmentation(layers[0].labelmap.with_array(merged), tuple(renumbered))


def _paste_on_grid(labelmap: Volume, reference: Volume, path: Path) -> Volume:
    if labelmap.same_grid(reference):
        return labelmap.with_array(labelmap.array)
    if not np.allclose(labelmap.spacing, reference.spacing, atol=1e-3) or not np.allclose(
        labelmap.direction, reference.direction, atol=1e-4
    ):
        raise GeometryMismatchError(
            f"{path}: the segmentation's grid (spacing {labelmap.spacing} mm) cannot be placed on the reference "
            f"(spacing {reference.spacing} mm) without resampling; spacing and direction must match"
        )
    offset = reference.physical_to_index(labelmap.origin)  # (i, j, k) of the file's voxel 0 in the reference
    if not np.allclose(offset, np.round(offset), atol=1e-2):
        raise GeometryMismatchError(f"{path}: the segmentation is offset from the reference by {offset} voxels, not whole voxels")
    offset_kji = np.round(offset).astype(int)[::-1]
    src = labelmap.array
    out = np.zeros(reference.array.shape, dtype=src.dtype)
    lo = np.maximum(offset_kji, 0)
    hi = np.minimum(offset_kji + src.shape, out.shape)
    if np.any(hi <= lo):
        inside = np.zeros(src.shape, bool)
    else:
        dst_box = tuple(slice(a, b) for a, b in zip_strict(lo, hi))
        src_box = tuple(slice(a - o, b - o) for a, b, o in zip_strict(lo, hi, offset_kji))
        out[dst_box] = src[src_box]
        inside = np.zeros(src.shape, bool)
        inside[src_box] = True
    lost = int(np.count_nonzero(src[~inside]))
    if lost:
        raise GeometryMismatchError(f"{path}: {lost} labelled voxel(s) of the segmentation lie outside the reference grid")
    return reference.with_array(out)


# --------------------------------------------------------------------------------------------
# NIfTI label maps with sidecars
# --------------------------------------------------------------------------------------------
_TERMINOLOGY_PARTS = ("Category", "Type", "TypeModifier", "Region", "RegionModifier")


def sidecar_paths(path: str | os.PathLike) -> dict[str, Path]:
    """Paths of the sidecars of the NIfTI label map ``path``: ``{'json': ..., 'csv': ...}``.

    Examples
    --------
    >>> {k: p.name for k, p in sidecar_paths("out/bone.nii.gz").items()}
    {'json': 'bone.labels.json', 'csv': 'bone.labels.csv'}
    """
    path = Path(path)
    stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
    return {"json": path.with_name(f"{stem}.labels.json"), "csv": path.with_name(f"{stem}.labels.csv")}


def _labels_json(segments: Sequence[SegmentInfo], labelmap_name: str) -> str:
    doc = {
        "format": "segdeep-labels",
        "version": 1,
        "labelmap": labelmap_name,
        "background_value": 0,
        "segments": [
            {
                "name": s.name,
                "value": s.value,
                "color": [round(c, 6) for c in s.color],
                "color_255": [round(255 * c) for c in s.color],
                "terminology": s.terminology,
            }
            for s in segments
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _terminology_columns(terminology: str | None) -> list[str]:
    """Slicer CSV colour-table code columns from a terminology entry string (blank if unknown)."""
    out: list[str] = []
    for code in terminology_codes(terminology).values():
        out += list(code) if code else ["", "", ""]
    return out


def _labels_csv(segments: Sequence[SegmentInfo]) -> str:
    columns = ["LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A"]
    for part in _TERMINOLOGY_PARTS:
        columns += [f"{part}_CodingScheme", f"{part}_CodeValue", f"{part}_CodeMeaning"]
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow(columns)
    writer.writerow([0, "Background", 0, 0, 0, 0] + [""] * (len(columns) - 6))
    for s in sorted(segments, key=lambda s: s.value):
        rgb = [round(255 * c) for c in s.color]
        writer.writerow([s.value, s.name, *rgb, 255, *_terminology_columns(s.terminology)])
    return buf.getvalue()


def write_labelmap_nifti(
    labelmap: Volume,
    segments: Sequence[SegmentInfo],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a NIfTI label map (uint8, or uint16 above 255) with its two sidecars.

    Besides ``path`` (``.nii.gz`` or ``.nii``) this writes ``<stem>.labels.json`` (names,
    values, colours 0-1 and terminology) and ``<stem>.labels.csv`` (a 3D Slicer CSV colour
    table with colours 0-255), see :func:`sidecar_paths`. The three files appear together or
    not at all; with ``overwrite=False`` nothing is written if any of them exists.

    Returns
    -------
    dict
        ``{'labelmap': path, 'json': ..., 'csv': ...}``.
    """
    path = Path(path)
    if not re.search(r"\.nii(\.gz)?$", path.name, flags=re.IGNORECASE):
        raise SegmentationFileError(f"cannot write {path.name}: a NIfTI label map must end in .nii.gz or .nii")
    segments = tuple(segments)
    segmentation = Segmentation(labelmap, segments)
    sidecars = sidecar_paths(path)
    targets = {"labelmap": path, **sidecars}
    if not overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise FileExistsError(f"refusing to overwrite existing file(s): {', '.join(existing)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(segmentation.labelmap.array))
    image.SetSpacing(labelmap.spacing)
    image.SetOrigin(labelmap.origin)
    image.SetDirection(tuple(labelmap.direction.ravel()))

    with atomic_outputs(), contextlib.ExitStack() as stack:
        verify = {"labelmap": lambda tmp: verify_image_file(tmp, image)}
        tmp = {
            key: stack.enter_context(atomic_path(target, overwrite=overwrite, verify=verify.get(key)))
            for key, target in targets.items()
        }
        write_image(image, tmp["labelmap"], compress=True)
        write_all(tmp["json"], _labels_json(segments, path.name).encode("utf-8"))
        write_all(tmp["csv"], _labels_csv(segments).encode("utf-8"))
    return targets


def read_labelmap_nifti(path: str | os.PathLike) -> Segmentation:
    """Read a NIfTI (or any image) label map with its ``<stem>.labels.json`` sidecar.

    Without a sidecar every non-zero value becomes a segment ``"Label <value>"`` with the
    default colour.
    """

    path = Path(path)
    volume = read_volume(path)
    if volume.array.dtype.kind not in "iu":
        raise SegmentationFileError(f"{path}: a label map must hold integers, got {volume.array.dtype}")
    lowest = int(volume.array.min())
    if lowest < 0:
        n_negative = int(np.count_nonzero(volume.array < 0))
        raise SegmentationFileError(
            f"{path}: a label map holds 0 (background) and positive labels, but {n_negative} voxels are negative "
            f"(lowest {lowest}); is it a CT or another image rather than a segmentation?"
        )
    sidecar = sidecar_paths(path)["json"]
    if sidecar.exists():
        try:
            doc = json.loads(sidecar.read_text(encoding="utf-8"))
            segments = tuple(
                SegmentInfo(s["name"], int(s["value"]), tuple(s["color"]), s.get("terminology")) for s in doc["segments"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SegmentationFileError(f"{sidecar}: not a valid label sidecar ({exc!r})") from None
    else:
        hi = int(volume.array.max()) if volume.array.size else 0
        segments = tuple(SegmentInfo(f"Label {v}", v) for v in _present_labels(volume.array, hi))
    try:
        return Segmentation(volume, segments)
    except SegmentationFileError as exc:
        raise SegmentationFileError(f"{path}: {exc}") from None
