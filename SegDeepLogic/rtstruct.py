"""DICOM RT Structure Sets: write a segmentation as contours, read contours back as masks.

Writing (:func:`write_rtstruct`)
    Each segment becomes an ROI. On every CT slice plane that the segment touches, its mask is
    traced with marching squares at the 0.5 level: the polygons run through the midpoints
    between inside and outside voxel centres, i.e. exactly on the voxel boundary, so every
    point lies within half a voxel of the mask's boundary voxels and filling the polygons at the
    voxel centres gives the mask back. Each connected region gives an outer contour and each
    hole an inner contour (the standard RTSTRUCT convention, filled by the even-odd rule);
    collinear points are removed (the polygon is unchanged), degenerate polygons (under 3
    points or no area) are dropped. Points are LPS millimetres (``index_to_physical`` of the
    CT grid, so oblique and shifted series are exact), written as DS strings of at most 16
    characters. Every contour references its CT slice's SOP Instance UID; the structure set
    references the Study, the Frame of Reference and every image of the series. ROIs carry
    the segment's colour, its terminology as RT ROI Identification Code Sequence, ROI
    Interpreted Type ``ORGAN`` and, for a model's output, generation algorithm ``AUTOMATIC``
    with the model name, version and weights' SHA-256.

Reading (:func:`read_rtstruct`)
    Each ROI is rasterised onto the CT grid: every contour is mapped to continuous voxel
    indices, must lie on a slice plane, and the contours of a slice are filled together with
    the even-odd rule (voxel centres inside an odd number of contours are in the ROI), which
    turns inner contours into holes. Errors are specific (:class:`RTStructError`): another
    Frame of Reference, referenced CT images missing from the series, an unknown ROI name
    (the available names are listed), open or self-intersecting contours (naming the ROI, the
    slice and the contour), contours off the slice planes or outside the grid. Safe repairs
    (a repeated closing point, repeated consecutive points, degenerate contours) are made
    silently; ``repair=True`` also fills self-intersecting contours by the even-odd rule and
    accepts open contours whose ends meet, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .dicom_common import (
    Algorithm,
    copy_patient_study,
    dicom_header_is,
    format_ds,
    now_date_time,
    segments_on_series,
    software_version,
    terminology_codes,
    verify_dicom_file,
    write_dicom_bytes,
)
from .dicom_series import CTReference, list_series, new_uid, read_dicom_series
from .errors import SegDeepError
from .progress import ProgressCallback, report
from .segmentation_io import Segmentation, SegmentInfo, labelmap_from_masks
from .volume import Volume

__all__ = [
    "RTSTRUCT_STORAGE",
    "RTStructError",
    "mask_contours",
    "read_rtstruct",
    "rtstruct_roi_names",
    "write_rtstruct",
]

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
ON_PLANE_TOLERANCE = 0.05  # voxels: how far from a slice plane a contour point may lie


class RTStructError(SegDeepError, ValueError):
    """An RT Structure Set cannot be written or read onto the given CT."""


# --------------------------------------------------------------------------------------------
# Mask -> polygons
# --------------------------------------------------------------------------------------------
def _drop_collinear(poly: np.ndarray) -> np.ndarray:
    """Remove points that lie on the straight line through their neighbours (closed polygon)."""
    while len(poly) > 3:
        prev, nxt = np.roll(poly, 1, axis=0), np.roll(poly, -1, axis=0)
        cross = (poly[:, 0] - prev[:, 0]) * (nxt[:, 1] - poly[:, 1]) - (poly[:, 1] - prev[:, 1]) * (nxt[:, 0] - poly[:, 0])
        keep = np.abs(cross) > 1e-9
        if keep.all():
            break
        poly = poly[keep]
    return poly


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed polygons tracing a 2D mask (indexed ``[j, i]``), as ``(n, 2)`` arrays of ``(i, j)``.

    Outer boundaries and hole boundaries each give one polygon (filling them by the even-odd
    rule at the pixel centres reproduces the mask exactly). Points lie on pixel edges.

    Examples
    --------
    >>> import numpy as np
    >>> square = np.zeros((5, 5), bool); square[1:4, 1:4] = True; square[2, 2] = False
    >>> [len(p) for p in mask_contours(square)]  # the outer boundary and the hole
    [8, 4]
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask2d, dtype=np.uint8), 1)
    polygons = []
    for c in find_contours(padded, 0.5, fully_connected="high"):
        if len(c) < 4:
            continue
        poly = c[:-1, ::-1] - 1.0  # (row, col) -> (i, j); drop the repeated closing point
        poly = _drop_collinear(poly)
        if len(poly) >= 3 and abs(_area(poly)) > 1e-6:
            polygons.append(poly)
    return polygons


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _raw_ds(tag: int, values: np.ndarray) -> Any:
    """A DS data element built from numbers without per-value conversion (fast for big contours)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    text = "\\".join(format_ds(v) for v in values) if values.size < 8 else _fast_ds(values)
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True, True, False)


def _fast_ds(values: np.ndarray) -> str:
    # 4 decimals (0.1 µm) in fixed point: at most 16 characters for |v| < 1e10 mm.
    if np.max(np.abs(values)) >= 1e10:
        raise RTStructError("contour coordinates beyond 1e10 mm cannot be written as DICOM DS")
    return ("\\".join(["%.4f"] * values.size)) % tuple(values.tolist())


def _color255(color: Sequence[float]) -> list[int]:
    return [int(round(255 * float(c))) for c in color]


def write_rtstruct(
    segmentation: Segmentation | Mapping[str | SegmentInfo, Volume],
    reference: CTReference,
    path: str | os.PathLike,
    *,
    ct_grid: Volume | None = None,
    algorithm: Algorithm | None = None,
    label: str = "SegDeep",
    series_description: str = "SegDeep contours",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write ``segmentation`` as an RT Structure Set referencing the CT series ``reference``.

    Parameters
    ----------
    segmentation : Segmentation or mapping of name (or SegmentInfo) to mask Volume
        The masks may overlap (each becomes its own ROI). On the CT grid that :func:`~SegDeepLogic.dicom_series.read_dicom_series` returned with
        ``reference`` (pass that grid as ``ct_grid`` to have it checked).
    reference : CTReference
        The CT series (its UIDs, slice SOP Instance UIDs, patient and study).
    path : path-like
        The ``.dcm`` file to write (atomically; refused if it exists unless ``overwrite``).
    algorithm : Algorithm, optional
        The model that made the segmentation: ROIs are then ``AUTOMATIC`` with its name,
        version and weights hash; without it the generation algorithm is left empty (unknown).
    label : str
        Structure Set Label (at most 16 characters).

    Returns
    -------
    Path
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    items, grid = segments_on_series(segmentation, reference, ct_grid, RTStructError)
    nk = grid.array.shape[0]
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite existing file: {path} (use overwrite)")
    ct0 = reference.header()
    date, time_ = now_date_time()
    sop_uid = new_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = ct0.get("SpecificCharacterSet", "ISO_IR 100")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time_
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = sop_uid
    copy_patient_study(ds, ct0)
    ds.StudyInstanceUID = reference.study_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = int(ct0.get("SeriesNumber", 0) or 0) + 1000
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate, ds.SeriesTime = date, time_
    ds.OperatorsName = ""
    ds.Manufacturer = "SegDeep"
    ds.ManufacturerModelName = (algorithm.name if algorithm else "SegDeep")[:64]
    ds.SoftwareVersions = software_version()
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = reference.frame_of_reference_uid
    ds.PositionReferenceIndicator = ct0.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate, ds.StructureSetTime = date, time_

    # Referenced Frame of Reference -> Study -> Series -> every image of the series.
    def image_item(uid: str) -> Any:
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = uid
        return item

    series_item = pydicom.Dataset()
    series_item.SeriesInstanceUID = reference.series_uid
    series_item.ContourImageSequence = [image_item(u) for u in reference.sop_instance_uids]
    study_item = pydicom.Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as the standard says)
    study_item.ReferencedSOPInstanceUID = reference.study_uid
    study_item.RTReferencedSeriesSequence = [series_item]
    for_item = pydicom.Dataset()
    for_item.FrameOfReferenceUID = reference.frame_of_reference_uid
    for_item.RTReferencedStudySequence = [study_item]
    ds.ReferencedFrameOfReferenceSequence = [for_item]

    roi_seq, contour_seq, obs_seq = [], [], []
    for number, (info, mask) in enumerate(items, start=1):
        report(progress, (number - 1) / len(items), f"contours of {info.name}")
        if mask.array.shape != grid.array.shape:
            raise RTStructError(f"mask {info.name!r} is not on the segmentation grid")
        roi = pydicom.Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = reference.frame_of_reference_uid
        roi.ROIName = info.name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC" if algorithm else ""
        if algorithm:
            roi.ROIGenerationDescription = algorithm.description
            roi.ROIDerivationAlgorithmIdentificationSequence = [algorithm.identification_dataset()]
        roi_seq.append(roi)

        contours = []
        array = np.asarray(mask.array, dtype=bool)
        present = np.flatnonzero(array.reshape(nk, -1).any(axis=1))
        if present.size:
            rows = np.flatnonzero(array[present].any(axis=(0, 2)))
            cols = np.flatnonzero(array[present].any(axis=(0, 1)))
            j0, j1, i0, i1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        for k in present:
            for poly in mask_contours(array[k, j0:j1, i0:i1]):
                ijk = np.column_stack([poly[:, 0] + i0, poly[:, 1] + j0, np.full(len(poly), float(k))])
                xyz = grid.index_to_physical(ijk)
                item = pydicom.Dataset()
                item.ContourImageSequence = [image_item(reference.sop_instance_uids[k])]
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(xyz)
                item[0x30060050] = _raw_ds(0x30060050, xyz.ravel())
                contours.append(item)
        roi_contour = pydicom.Dataset()
        roi_contour.ROIDisplayColor = _color255(info.color)
        roi_contour.ReferencedROINumber = number
        if contours:
            roi_contour.ContourSequence = contours
        contour_seq.append(roi_contour)

        obs = pydicom.Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = info.name[:16]
        codes = terminology_codes(info.terminology)
        if codes is not None:
            obs.RTROIIdentificationCodeSequence = [codes[1].dataset()]
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    ds.ApprovalStatus = "UNAPPROVED"
    report(progress, 0.95, "write")
    # The contour items hold raw (pre-encoded) Contour Data: declaring their encoding equal to the
    # file's lets pydicom write those bytes as they are instead of decoding every number again.
    for roi_contour in contour_seq:
        for item in roi_contour.get("ContourSequence", []):
            item.set_original_encoding(False, True, item._character_set)
    uid = str(ds.SOPInstanceUID)
    with atomic_path(path, overwrite=overwrite, verify=lambda tmp: verify_dicom_file(tmp, uid)) as tmp:
        write_dicom_bytes(ds, tmp, enforce_file_format=True)
    report(progress, 1.0, "done")
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _read_rt_dataset(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise RTStructError(f"no such RT Structure Set file: {path}")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise RTStructError(f"{path} is not a DICOM file: {exc}") from None
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_STORAGE and ds.get("Modality") != "RTSTRUCT":
        raise RTStructError(f"{path} is not an RT Structure Set (Modality {ds.get('Modality', '?')})")
    return ds


def is_rtstruct(path: str | os.PathLike) -> bool:
    """True if ``path`` is a DICOM file holding an RT Structure Set (reads only the header)."""
    return dicom_header_is(path, RTSTRUCT_STORAGE, "RTSTRUCT")


def rtstruct_roi_names(path: str | os.PathLike) -> list[str]:
    """The ROI names of an RT Structure Set, in ROI order."""
    ds = _read_rt_dataset(Path(path))
    return [str(r.ROIName) for r in ds.get("StructureSetROISequence", [])]


def _referenced_series(ds: Any) -> tuple[str | None, str | None]:
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                return str(fr.get("FrameOfReferenceUID", "")), str(se.SeriesInstanceUID)
        return str(fr.get("FrameOfReferenceUID", "")), None
    return None, None


def _find_ct_for(path: Path, ds: Any) -> tuple[Volume, CTReference]:

    _, series_uid = _referenced_series(ds)
    folder = path.parent
    candidates = [s for s in list_series(folder) if s.is_image]
    if series_uid and any(s.series_uid == series_uid for s in candidates):
        return read_dicom_series(folder, series_uid, read_pixels=False)
    if not candidates:
        raise RTStructError(f"{path.name}: no CT series next to it in {folder}; give the CT series folder it was drawn on")
    raise RTStructError(
        f"{path.name} references CT series {series_uid}, which is not in {folder} (it holds "
        f"{', '.join(s.series_uid for s in candidates)}); give the CT series folder it was drawn on"
    )


def _segments_intersect(poly: np.ndarray) -> tuple[int, int] | None:
    """Indices of two non-adjacent edges of the closed polygon that cross, or None."""
    n = len(poly)
    if n < 4:
        return None
    a, b = poly, np.roll(poly, -1, axis=0)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n, chunk):
        p, r = a[s : s + chunk, None, :], (b - a)[s : s + chunk, None, :]
        q, t = a[None, :, :], (b - a)[None, :, :]
        denom = r[..., 0] * t[..., 1] - r[..., 1] * t[..., 0]
        qp = q - p
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (qp[..., 0] * t[..., 1] - qp[..., 1] * t[..., 0]) / denom
            v = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / denom
        eps = 1e-9
        hit = (np.abs(denom) > 1e-12) & (u > eps) & (u < 1 - eps) & (v > eps) & (v < 1 - eps)
        idx_i = np.arange(s, min(s + chunk, n))[:, None]
        idx_j = np.arange(n)[None, :]
        gap = np.abs(idx_i - idx_j)
        hit &= (gap > 1) & (gap < n - 1)
        if hit.any():
            i, j = np.argwhere(hit)[0]
            return int(i + s), int(j)
    return None


def _fill_even_odd(polygons: Sequence[np.ndarray], nj: int, ni: int) -> np.ndarray:
    """Even-odd fill, at the pixel centres, of polygons given in continuous ``(i, j)`` indices."""
    toggles = np.zeros((nj, ni + 1), dtype=np.int32)
    for poly in polygons:
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        moving = y0 != y1
        x0, y0, x1, y1 = x0[moving], y0[moving], x1[moving], y1[moving]
        lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
        r0 = np.clip(np.ceil(lo), 0, nj).astype(np.int64)
        r1 = np.clip(np.ceil(hi), 0, nj).astype(np.int64)  # rows r with lo <= r < hi
        counts = r1 - r0
        if counts.sum() == 0:
            continue
        edge = np.repeat(np.arange(len(r0)), counts)
        rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + r0[edge]
        xs = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        cols = np.clip(np.ceil(xs), 0, ni).astype(np.int64)
        np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles, axis=1)[:, :ni] % 2).astype(bool)


def _contour_points(item: Any) -> np.ndarray:
    raw = item.get_item(0x30060050) if 0x30060050 in item else None
    if raw is None:
        return np.zeros((0, 3))
    value = raw.value
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).strip(b" \x00")
        values = np.array(text.split(b"\\"), dtype=float) if text else np.zeros(0)
    else:
        values = np.asarray(item.ContourData, dtype=float)
    if values.size % 3:
        raise RTStructError(f"Contour Data has {values.size} values, not a multiple of 3")
    return values.reshape(-1, 3)


def read_rtstruct(
    path: str | os.PathLike,
    ct: str | os.PathLike | tuple[Volume, CTReference] | None = None,
    *,
    names: Sequence[str] | None = None,
    series_uid: str | None = None,
    repair: bool = False,
) -> dict[str, Volume]:
    """Rasterise the ROIs of an RT Structure Set onto its CT's grid.

    Parameters
    ----------
    path : path-like
        The RTSTRUCT file.
    ct : path-like or (Volume, CTReference), optional
        The CT series it was drawn on: a folder (``series_uid`` picks the series, default the one
        the RTSTRUCT references) or what :func:`read_dicom_series` returned. By default the
        referenced series is looked for in the RTSTRUCT's own folder.
    names : sequence of str, optional
        ROIs to rasterise (exact names; a unique case-insensitive match is accepted). Default all.
    repair : bool
        Also fill self-intersecting contours (even-odd) and open contours whose ends meet,
        with a warning, instead of refusing them.

    Returns
    -------
    dict of str to Volume
        ``{ROI name: boolean mask}`` on the CT grid, in ROI order (an ROI without contours is empty).
    """
    path = Path(path)
    ds = _read_rt_dataset(path)
    if ct is None:
        grid, reference = _find_ct_for(path, ds)
    elif isinstance(ct, tuple):
        grid, reference = ct
    else:
        _, ref_series = _referenced_series(ds)
        folder = Path(ct)
        if series_uid is None and ref_series:
            if any(s.series_uid == ref_series for s in list_series(folder)):
                series_uid = ref_series
        grid, reference = read_dicom_series(folder, series_uid, read_pixels=False)

    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    roi_names = [str(r.ROIName) for r in rois.values()]
    for_uids = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in rois.values()} - {""}
    ref_for, _ = _referenced_series(ds)
    if ref_for:
        for_uids.add(ref_for)
    other = sorted(u for u in for_uids if u != reference.frame_of_reference_uid)
    if other:
        raise RTStructError(
            f"{path.name} is drawn in another Frame of Reference ({', '.join(other)}) than the CT series "
            f"{reference.series_uid} ({reference.frame_of_reference_uid}); its contours cannot be placed on this CT"
        )
    wanted = list(roi_names) if names is None else []
    for name in names or []:
        if name in roi_names:
            wanted.append(name)
            continue
        folded = [n for n in roi_names if n.casefold() == name.casefold()]
        if len(folded) == 1:
            wanted.append(folded[0])
            continue
        raise RTStructError(f"{path.name} has no ROI named {name!r}; its ROIs are: {', '.join(roi_names) or '(none)'}")
    contours_of = {int(c.ReferencedROINumber): c for c in ds.get("ROIContourSequence", [])}
    sop_index = {uid: k for k, uid in enumerate(reference.sop_instance_uids)}
    nk, nj, ni = grid.array.shape
    out: dict[str, Volume] = {}
    for number, roi in rois.items():
        name = str(roi.ROIName)
        if name not in wanted or name in out:
            continue
        per_slice: dict[int, list[np.ndarray]] = {}
        items = contours_of.get(number)
        missing: list[str] = []
        for c_index, item in enumerate(items.get("ContourSequence", []) if items is not None else [], start=1):
            for img in item.get("ContourImageSequence", []):
                uid = str(img.ReferencedSOPInstanceUID)
                if uid not in sop_index:
                    missing.append(uid)
            points = _contour_points(item)
            kind = str(item.get("ContourGeometricType", "CLOSED_PLANAR"))
            where = f"ROI {name!r}, contour {c_index}"
            if kind == "POINT" or len(points) == 0:
                continue
            ijk = grid.physical_to_index(points)
            k_values = ijk[:, 2]
            k = int(np.round(np.median(k_values)))
            where += f" (slice at {points[0, 2]:.2f} mm)"
            if np.max(np.abs(k_values - k)) > ON_PLANE_TOLERANCE:
                raise RTStructError(
                    f"{path.name}: {where} does not lie on a slice plane of the CT (off by up to "
                    f"{np.max(np.abs(k_values - k)):.2f} slices); it was not drawn on this series' slices"
                )
            if not 0 <= k < nk:
                raise RTStructError(f"{path.name}: {where} lies outside the CT series (slice index {k} of 0..{nk - 1})")
            poly = ijk[:, :2]
            # safe repairs: repeated consecutive points and an explicit closing point
            keep = np.ones(len(poly), bool)
            keep[1:] = np.any(np.abs(np.diff(poly, axis=0)) > 1e-6, axis=1)
            poly = poly[keep]
            closed_explicitly = len(poly) > 1 and np.allclose(poly[0], poly[-1], atol=1e-6)
            if closed_explicitly:
                poly = poly[:-1]
            if kind.startswith("OPEN"):
                if not (repair and closed_explicitly):
                    raise RTStructError(
                        f"{path.name}: {where} is {kind}: an open contour encloses no area and cannot be filled"
                        + ("" if not closed_explicitly else " (its ends meet: pass repair=True / --repair-contours to close it)")
                    )
                warnings.warn(f"{where}: {kind} contour whose ends meet was closed", UserWarning, stacklevel=2)
            elif kind != "CLOSED_PLANAR":
                raise RTStructError(f"{path.name}: {where} has Contour Geometric Type {kind!r}; expected CLOSED_PLANAR")
            if len(poly) < 3 or abs(_area(poly)) < 1e-9:
                continue  # degenerate: encloses nothing
            crossing = _segments_intersect(poly)
            if crossing is not None:
                if not repair:
                    a, b = crossing
                    raise RTStructError(
                        f"{path.name}: {where} is self-intersecting (edges {a + 1} and {b + 1} of {len(poly)} cross); "
                        "its inside is ambiguous. Pass repair=True (--repair-contours) to fill it by the even-odd rule"
                    )
                warnings.warn(f"{where}: self-intersecting contour filled by the even-odd rule", UserWarning, stacklevel=2)
            per_slice.setdefault(k, []).append(poly)
        if missing:
            raise RTStructError(
                f"{path.name}: ROI {name!r} references {len(set(missing))} CT image(s) that are not in the series "
                f"{reference.series_uid} (e.g. {missing[0]}): missing slices, or another series"
            )
        mask = np.zeros((nk, nj, ni), bool)
        for k, polys in per_slice.items():
            # fill only the polygons' bounding box (voxel centres outside it are outside every polygon)
            points = np.concatenate(polys)
            i0, j0 = (max(0, int(np.floor(v))) for v in points.min(axis=0))
            top = points.max(axis=0)
            i1, j1 = min(ni, int(np.ceil(top[0])) + 1), min(nj, int(np.ceil(top[1])) + 1)
            if i1 > i0 and j1 > j0:
                local = [p - np.array([i0, j0], dtype=float) for p in polys]
                mask[k, j0:j1, i0:i1] = _fill_even_odd(local, j1 - j0, i1 - i0)
        out[name] = grid.with_array(mask)
    return {n: out[n] for n in wanted if n in out}


def rtstruct_segmentation(
    path: str | os.PathLike,
    ct: str | os.PathLike | tuple[Volume, CTReference] | None = None,
    *,
    names: Sequence[str] | None = None,
    repair: bool = False,
    colors: bool = True,
) -> Segmentation:
    """The ROIs of an RT Structure Set as one label map (overlaps: the earlier ROI keeps the voxel, with a warning)."""
    masks = read_rtstruct(path, ct, names=names, repair=repair)
    if not masks:
        raise RTStructError(f"{path}: no ROI to read")
    ds = _read_rt_dataset(Path(path))
    color_of = {}
    for rc in ds.get("ROIContourSequence", []):
        color_of[int(rc.ReferencedROINumber)] = rc.get("ROIDisplayColor")
    number_of = {str(r.ROIName): int(r.ROINumber) for r in ds.get("StructureSetROISequence", [])}
    keys = []
    for value, name in enumerate(masks, start=1):
        rgb = color_of.get(number_of.get(name, -1))
        color = tuple(min(1.0, max(0.0, float(c) / 255)) for c in rgb) if (colors and rgb and len(rgb) == 3) else None
        keys.append(SegmentInfo(name, value, color))
    stack = np.stack([m.array for m in masks.values()])
    overlap = stack.sum(axis=0) > 1
    if overlap.any():
        warnings.warn(
            f"{Path(path).name}: ROIs overlap in {int(overlap.sum())} voxel(s); in the label map the earlier ROI keeps them "
            "(choose one ROI by name to compare it whole)",
            UserWarning,
            stacklevel=2,
        )
    first = next(iter(masks.values()))
    return labelmap_from_masks({key: masks[key.name] for key in keys}, reference=first, overlap="first")
