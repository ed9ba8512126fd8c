"""Read any segmentation file SegDeep supports, optionally onto a reference grid: one entry point.

:func:`read_segmentation` is what the command line (``compare``, ``export``, ``convert``), the
report and the README use. It calls the format's own reader:

* a 3D Slicer ``.seg.nrrd`` -- :func:`~SegDeepLogic.segmentation_io.read_seg_nrrd`;
* a label map (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``) with or without its
  ``.labels.json`` / ``.labels.csv`` sidecar -- :func:`~SegDeepLogic.segmentation_io.read_labelmap_nifti`
  (a single-label file without a sidecar, such as ``mandible.nii.gz``, gets a segment named after
  the file);
* a DICOM RT Structure Set -- :func:`~SegDeepLogic.rtstruct.rtstruct_segmentation`, rasterised onto
  its CT series (``ct_series``, default the referenced series next to the file);
* a DICOM Segmentation (SEG) -- :func:`~SegDeepLogic.dicom_seg.read_dicom_seg_segmentation`, on the CT series
  given as ``ct_series`` (a SEG is placed by the CT images it references), with each segment's
  label, colour and terminology (category, type and laterality).

With ``reference`` the label map comes back on the reference's grid: exactly (the same voxels in
another axis order, or a Slicer crop pasted back) where the grids allow it, otherwise by
nearest-neighbour resampling when ``resample=True`` (the default refuses, because resampling a
label map changes its volumes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .dicom_common import dicom_header_is
from .errors import GeometryMismatchError
from .segmentation_io import (
    Segmentation,
    SegmentationFileError,
    SegmentInfo,
    read_labelmap_nifti,
    read_seg_nrrd,
    sidecar_paths,
)
from .volume import Volume

__all__ = ["is_dicom_seg", "read_segmentation"]

DICOM_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True if ``path`` is a DICOM file holding a Segmentation (reads only the header)."""
    return dicom_header_is(path, DICOM_SEG_STORAGE, "SEG")


def read_segmentation(
    path: str | os.PathLike,
    *,
    reference: Volume | None = None,
    resample: bool = False,
    ct_series: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    repair: bool = False,
) -> Segmentation:
    """Read a segmentation file of any supported format as one label map with its segments.

    Parameters
    ----------
    path : path-like
        ``.seg.nrrd``, a label map (NIfTI/NRRD/MHA, sidecars optional), a DICOM RTSTRUCT or a
        DICOM SEG file.
    reference : Volume, optional
        Put the label map on this grid (e.g. the CT). Without ``resample`` only exact placements
        are made (same voxels in another axis order, a ``.seg.nrrd`` crop pasted back); anything
        else is a :class:`~SegDeepLogic.errors.GeometryMismatchError`.
    resample : bool
        With ``reference``: resample (nearest neighbour) when no exact placement exists.
    ct_series : path-like, optional
        The CT's DICOM series folder: what an RTSTRUCT is rasterised onto (default: the series
        it references, next to it) and what a DICOM SEG is placed on (required for a SEG).
    names : sequence of str, optional
        RTSTRUCT only: read just these ROIs (a case-insensitive match is accepted).
    repair : bool
        RTSTRUCT only: fill self-intersecting contours (even-odd).

    Returns
    -------
    Segmentation

    Raises
    ------
    SegmentationFileError, RTStructError, DicomSegError
        Unreadable or inconsistent file.
    GeometryMismatchError
        The segmentation cannot be put on ``reference`` (without ``resample``).

    Examples
    --------
    >>> seg = read_segmentation("Resources/SampleData/openkbp_pt_236/mandible.nii.gz")
    >>> seg.names
    ('mandible',)
    """
    from .rtstruct import is_rtstruct, rtstruct_segmentation

    path = Path(path)
    if is_rtstruct(path):
        seg = rtstruct_segmentation(path, ct_series, names=names, repair=repair)
    elif is_dicom_seg(path):
        if ct_series is None:
            raise SegmentationFileError(f"{path.name} is a DICOM SEG: give its CT series folder (ct_series) to place it")
        from .dicom_seg import read_dicom_seg_segmentation
        from .dicom_series import read_dicom_series

        ct, ct_reference = read_dicom_series(ct_series)
        seg = read_dicom_seg_segmentation(path, ct_reference, ct)
    elif path.name.lower().endswith(".seg.nrrd"):
        seg = read_seg_nrrd(path)
        if reference is not None and not seg.labelmap.same_grid(reference):
            try:  # a Slicer crop, put back at its position
                seg = read_seg_nrrd(path, reference=reference)
            except (SegmentationFileError, GeometryMismatchError):
                pass
    else:
        seg = read_labelmap_nifti(path)
        if len(seg.segments) == 1 and seg.segments[0].name.startswith("Label ") and not sidecar_paths(path)["json"].exists():
            s = seg.segments[0]
            seg = Segmentation(seg.labelmap, [SegmentInfo(path.name.split(".")[0], s.value, s.color, s.terminology)])
    if reference is not None and not seg.labelmap.same_grid(reference):
        seg = Segmentation(_onto(seg.labelmap, reference, path, resample), seg.segments)
    return seg


def _onto(labelmap: Volume, reference: Volume, path: Path, resample: bool) -> Volume:
    from .dicom_series import onto_grid

    try:
        return onto_grid(labelmap, reference, what=str(path.name))
    except GeometryMismatchError:
        if not resample:
            raise
    from .resample import resample_to_grid

    return resample_to_grid(labelmap, reference, interpolation="nearest", default_value=0)
