"""DICOM image series: list the series of a folder, choose one, read it with its geometry, write one.

Reading is done with pydicom (any transfer syntax pydicom can decode: uncompressed, RLE, and the
JPEG family when ``pylibjpeg``/``pyjpegls`` plug-ins are installed). A series becomes a
:class:`~SegDeepLogic.volume.Volume` in LPS millimetres only when its geometry is that of a
regular grid; otherwise a :class:`DicomSeriesError` says why, so that a contour or a mesh is
never placed on a grid the scanner did not image:

* every slice must share Image Orientation (Patient), Rows/Columns and Pixel Spacing;
* the slice positions must lie along the slice normal (a **gantry-tilted** series, whose
  positions are sheared, is refused: resample it in the scanner software or with a tool that
  says so);
* slice positions must be evenly spaced (missing or duplicated slices are refused, naming the
  gap);
* a single slice is not a volume.

The slices are sorted along the normal ``row x column`` cosines; the resulting volume's k axis
points along the normal, so ``array[k]`` is the slice with the ``k``-th smallest position along
it. :class:`CTReference` keeps, for every ``k``, the SOP Instance UID of that slice, with the
Study, Series and Frame of Reference UIDs and the patient attributes: what an RT Structure Set or
a DICOM SEG must reference.

:func:`write_ct_series` writes a :class:`Volume` as a CT Image Storage series (one file per
slice, int16 with rescale slope 1 / intercept 0 when the values fit, the true geometry), for tests
and for users who need to send a NIfTI/NRRD CT to a planning system.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir
from .dicom_common import format_ds, verify_dicom_file, write_dicom_bytes
from .errors import GeometryMismatchError, SegDeepError, VolumeReadError
from .filecheck import check_voxel_limit
from .volume import Volume

__all__ = [
    "CTReference",
    "DicomSeriesError",
    "SeriesInfo",
    "list_series",
    "read_dicom_series",
    "write_ct_series",
]

# Spacing regularity tolerance: relative to the median step, and absolute (mm).
SPACING_TOLERANCE = 0.01
SPACING_TOLERANCE_MM = 0.01
# A slice position off the normal by more than this (mm per mm of travel) is a gantry tilt.
TILT_TOLERANCE = 1e-3

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root for generated UIDs


class DicomSeriesError(VolumeReadError):
    """A DICOM folder or series cannot be read as a regular 3D volume (tilted, irregular, mixed, ...)."""


def new_uid() -> str:
    """A new globally unique DICOM UID (pydicom's UUID-derived generator)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT))


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SeriesInfo:
    """One series found in a folder (images or other objects such as RTSTRUCT, SEG)."""

    series_uid: str
    modality: str
    description: str
    study_uid: str
    frame_of_reference_uid: str
    files: list[Path]
    sop_class_uid: str = ""
    rows_columns: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    problem: str | None = None  # why it cannot be read as a volume (images only); None if fine
    size_ijk: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    referenced_series_uids: list[str] = dataclasses.field(default_factory=list)  # RTSTRUCT / SEG
    roi_names: list[str] = dataclasses.field(default_factory=list)  # RTSTRUCT ROIs / SEG segments

    @property
    def is_image(self) -> bool:
        return bool(self.rows_columns)

    def as_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "description": self.description,
            "study_uid": self.study_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "files": len(self.files),
            "size_ijk": list(self.size_ijk) if self.size_ijk else None,
            "spacing_mm": [round(s, 4) for s in self.spacing_mm] if self.spacing_mm else None,
            "readable_as_volume": self.is_image and self.problem is None,
            "problem": self.problem,
            "referenced_series_uids": list(self.referenced_series_uids),
            "roi_names": list(self.roi_names),
        }


def _dicom_files(folder: Path) -> list[Path]:
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            out.append(Path(root) / name)
    return sorted(out)


def _read_headers(folder: Path) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for path in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
            continue
        if "SeriesInstanceUID" not in ds:
            continue
        headers.append((path, ds))
    return headers


def _is_image(ds: Any) -> bool:
    return "Rows" in ds and "Columns" in ds and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The series in ``folder`` (searched recursively), images first, largest first.

    Each image series is checked (:func:`read_dicom_series` rules) and its ``problem`` says
    why it cannot be read as a volume (``None`` when it can). RT Structure Sets list their ROI
    names and referenced series.

    Raises
    ------
    VolumeReadError
        The folder does not exist or holds no DICOM file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeReadError(f"no such folder: {folder}")
    headers = _read_headers(folder)
    if not headers:
        raise VolumeReadError(f"folder {folder} holds no DICOM series")
    groups: dict[str, list[tuple[Path, Any]]] = {}
    seen: set[str] = set()
    for path, ds in headers:
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop and sop in seen:  # the same instance twice (a copy): read it once
            continue
        seen.add(sop)
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    infos = []
    for uid, items in groups.items():
        ds0 = items[0][1]
        info = SeriesInfo(
            series_uid=uid,
            modality=str(ds0.get("Modality", "")),
            description=str(ds0.get("SeriesDescription", "")),
            study_uid=str(ds0.get("StudyInstanceUID", "")),
            frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "")),
            files=[p for p, _ in items],
            sop_class_uid=str(ds0.get("SOPClassUID", "")),
        )
        images = [(p, d) for p, d in items if _is_image(d)]
        if images:
            info.rows_columns = sorted({(int(d.Rows), int(d.Columns)) for _, d in images})
            try:
                geometry = _series_geometry(images, uid)
                info.size_ijk = (int(geometry["columns"]), int(geometry["rows"]), len(geometry["order"]))
                info.spacing_mm = tuple(float(s) for s in geometry["spacing"])  # type: ignore[assignment]
            except DicomSeriesError as exc:
                info.problem = str(exc)
        elif info.modality == "RTSTRUCT":
            info.roi_names = [str(r.get("ROIName", "")) for r in ds0.get("StructureSetROISequence", [])]
            for fr in ds0.get("ReferencedFrameOfReferenceSequence", []):
                info.frame_of_reference_uid = info.frame_of_reference_uid or str(fr.get("FrameOfReferenceUID", ""))
                for st in fr.get("RTReferencedStudySequence", []):
                    for se in st.get("RTReferencedSeriesSequence", []):
                        info.referenced_series_uids.append(str(se.SeriesInstanceUID))
        elif info.modality == "SEG":
            info.roi_names = [str(s.get("SegmentLabel", "")) for s in ds0.get("SegmentSequence", [])]
            for se in ds0.get("ReferencedSeriesSequence", []):
                info.referenced_series_uids.append(str(se.SeriesInstanceUID))
        infos.append(info)
    infos.sort(key=lambda s: (not s.is_image, s.problem is not None, -len(s.files), s.series_uid))
    return infos


# --------------------------------------------------------------------------------------------
# Geometry of a series
# --------------------------------------------------------------------------------------------
def _floats(value: Any, n: int, what: str, path: Path) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise DicomSeriesError(f"{path.name}: {what} is not numeric ({value!r})") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise DicomSeriesError(f"{path.name}: {what} must have {n} finite values, got {value!r}")
    return out


def _series_geometry(images: Sequence[tuple[Path, Any]], uid: str) -> dict[str, Any]:
    """Check that the slices form a regular grid; return its geometry and the slice order."""
    if any(int(d.get("NumberOfFrames", 1) or 1) > 1 for _, d in images):
        raise DicomSeriesError(f"series {uid} is a multi-frame (enhanced) image; only single-frame slice series are supported")
    sizes = sorted({(int(d.Rows), int(d.Columns)) for _, d in images})
    if len(sizes) > 1:
        counts = {s: sum((int(d.Rows), int(d.Columns)) == s for _, d in images) for s in sizes}
        shown = ", ".join(f"{c} slice(s) of {r}x{cc}" for (r, cc), c in counts.items())
        raise DicomSeriesError(f"series {uid} mixes image sizes ({shown}); it is not one volume")
    iops = [_floats(d.ImageOrientationPatient, 6, "Image Orientation (Patient)", p) for p, d in images]
    iop = iops[0]
    for (p, _), other in ((images[n], iops[n]) for n in range(len(images))):
        if not np.allclose(other, iop, atol=1e-4):
            raise DicomSeriesError(
                f"series {uid} mixes slice orientations ({p.name}: {np.round(other, 4).tolist()} vs "
                f"{np.round(iop, 4).tolist()}); it is not one volume"
            )
    row, col = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3 and abs(row @ col) < 1e-3):
        raise DicomSeriesError(f"series {uid}: Image Orientation (Patient) {iop.tolist()} is not two orthonormal vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    spacings = {tuple(np.round(_floats(d.PixelSpacing, 2, "Pixel Spacing", p), 6)) for p, d in images if "PixelSpacing" in d}
    if len(spacings) > 1:
        raise DicomSeriesError(f"series {uid} mixes pixel spacings {sorted(spacings)}; it is not one volume")
    if not spacings:
        raise DicomSeriesError(f"series {uid} has no Pixel Spacing; its geometry in millimetres is unknown")
    pixel = np.array(next(iter(spacings)), dtype=float)  # (row spacing = between rows, column spacing)
    if np.any(pixel <= 0):
        raise DicomSeriesError(f"series {uid}: Pixel Spacing {pixel.tolist()} must be positive")
    positions = np.array([_floats(d.ImagePositionPatient, 3, "Image Position (Patient)", p) for p, d in images])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    if len(images) == 1:
        raise DicomSeriesError(f"series {uid} has a single slice ({images[0][0].name}); a 3D volume needs at least 2 slices")
    steps = np.diff(along)
    if float(along[-1] - along[0]) < SPACING_TOLERANCE_MM:
        raise DicomSeriesError(
            f"series {uid}: all {len(images)} slices are at one position ({along[0]:.3f} mm along the slice normal); "
            "the slice spacing is unknown, so no distance or volume could be trusted"
        )
    duplicates = np.flatnonzero(steps < SPACING_TOLERANCE_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise DicomSeriesError(
            f"series {uid} has {duplicates.size} duplicated slice position(s): two slices at the same position (e.g. "
            f"{along[k]:.3f} mm along the normal, {images[order[k]][0].name} and {images[order[k + 1]][0].name}); "
            "it is not one volume (duplicated or mixed series?)"
        )
    step = float(np.median(steps))
    irregular = np.flatnonzero(np.abs(steps - step) > max(SPACING_TOLERANCE * step, SPACING_TOLERANCE_MM))
    if irregular.size:
        k = int(irregular[0])
        raise DicomSeriesError(
            f"series {uid} is irregularly spaced: {irregular.size} step(s) differ from the usual {step:.3f} mm "
            f"(e.g. {steps[k]:.3f} mm between slices at {along[k]:.3f} and {along[k + 1]:.3f} mm along the normal: "
            "a missing slice, or extra slices?). Refusing to read it as a regular grid (a volume has one spacing, so "
            "every distance and volume would be wrong); resample it first"
        )
    # Gantry tilt: the positions must move along the normal, not sideways.
    offsets = positions - positions[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    shear = np.linalg.norm(sideways, axis=1) / np.maximum(np.abs(offsets @ normal), 1e-9)
    if np.max(shear[1:]) > TILT_TOLERANCE:
        angle = float(np.degrees(np.arctan(np.max(shear[1:]))))
        gantry = images[0][1].get("GantryDetectorTilt")
        said = f" (Gantry/Detector Tilt {float(gantry):g} deg)" if gantry not in (None, "") else ""
        raise DicomSeriesError(
            f"series {uid} is gantry-tilted{said}: its slices are sheared by {angle:.2f} deg from the slice normal, "
            "so the voxels are not on a rectangular grid. Refusing to read it (a contour or mesh would be misplaced); "
            "resample it to an untilted grid first"
        )
    return {
        "order": order,
        "rows": int(images[0][1].Rows),
        "columns": int(images[0][1].Columns),
        "spacing": (float(pixel[1]), float(pixel[0]), step),
        "origin": positions[0],
        "direction": np.column_stack([row, col, normal]),
        "positions": positions,
    }


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CTReference:
    """What a derived object (RTSTRUCT, SEG) must reference: the image series and its slices.

    ``sop_instance_uids[k]`` is the slice at ``array[k]`` of the :class:`Volume` read with it.
    ``datasets`` holds the slices' headers (no pixel data) in the same order.
    """

    folder: Path
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: list[str]
    files: list[Path]
    datasets: list[Any]

    def header(self) -> Any:
        return self.datasets[0]


def _choose_series(folder: Path, series_uid: str | None) -> tuple[SeriesInfo, list[SeriesInfo]]:
    infos = list_series(folder)
    images = [s for s in infos if s.is_image]
    if series_uid is not None:
        match = [s for s in infos if s.series_uid == series_uid]
        if not match:
            listing = "; ".join(f"{s.series_uid} ({s.modality}, {len(s.files)} file(s))" for s in infos)
            raise DicomSeriesError(f"folder {folder} has no series {series_uid}; its series: {listing}")
        if not match[0].is_image:
            raise DicomSeriesError(f"series {series_uid} in {folder} is a {match[0].modality}, not an image series")
        return match[0], images
    if not images:
        kinds = ", ".join(sorted({s.modality or "?" for s in infos}))
        raise DicomSeriesError(f"folder {folder} holds no image series (only {kinds})")
    readable = [s for s in images if s.problem is None]
    if not readable:
        raise DicomSeriesError(images[0].problem or f"no readable image series in {folder}")
    chosen = readable[0]  # largest readable
    if len(images) > 1:
        others = "; ".join(
            f"{s.series_uid} ({s.modality} {s.description!r}, {len(s.files)} file(s))" for s in images if s is not chosen
        )
        warnings.warn(
            f"{folder} holds {len(images)} image series; reading the largest readable one, {chosen.series_uid} "
            f"({chosen.modality} {chosen.description!r}, {len(chosen.files)} slices). Others: {others}. "
            "Choose with --series UID (segdeep dicom-info lists them)",
            UserWarning,
            stacklevel=3,
        )
    return chosen, images


def read_dicom_series(
    folder: str | os.PathLike, series_uid: str | None = None, *, read_pixels: bool = True
) -> tuple[Volume, CTReference]:
    """Read one image series of ``folder`` as a Volume (LPS mm) with what references it.

    Parameters
    ----------
    folder : path-like
        A folder with DICOM files (searched recursively; other series and non-image objects
        such as RTSTRUCT are ignored).
    series_uid : str, optional
        Series Instance UID to read. By default the largest readable image series (a warning
        names the others when there are several).
    read_pixels : bool
        False: only the grid (the volume's array is all zeros, uint8; no pixel data is decoded),
        e.g. to rasterise an RT Structure Set onto the series.

    Returns
    -------
    volume, reference
        Voxel values in rescaled units (HU for CT), float32 unless they are integers that fit
        int16; ``reference`` gives the UIDs of every slice in ``volume.array`` order.

    Raises
    ------
    DicomSeriesError
        No image series, unknown UID, or a series that is not a regular grid (gantry tilt,
        irregular spacing, mixed sizes or orientations, a single slice) or cannot be decoded.
    """
    import pydicom

    folder = Path(folder)
    info, _ = _choose_series(folder, series_uid)
    if info.problem:
        raise DicomSeriesError(info.problem)
    headers = []
    for path in info.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if _is_image(ds):
            headers.append((path, ds))
    geometry = _series_geometry(headers, info.series_uid)
    ordered = [headers[i] for i in geometry["order"]]

    size = (geometry["columns"], geometry["rows"], len(ordered))
    check_voxel_limit(folder, size, np.dtype(np.float32 if read_pixels else np.uint8))
    if not read_pixels:
        shape = (len(ordered), geometry["rows"], geometry["columns"])
        volume = Volume(np.zeros(shape, np.uint8), geometry["spacing"], geometry["origin"], geometry["direction"])
        return volume, _reference(folder, info, ordered)
    slices = []
    integral = True
    for path, _ in ordered:
        ds = None
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many kinds (missing plug-in, corrupt data)
            if ds is None:  # the file changed or broke since its header was read
                raise DicomSeriesError(f"cannot read {path.name}: {exc}") from None
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(ts, "name", str(ts))
            raise DicomSeriesError(
                f"cannot decode the pixels of {path.name} (transfer syntax {name}): {exc}. Install a pydicom "
                "decoder for it (pylibjpeg with pylibjpeg-libjpeg/-openjpeg, or pyjpegls) or decompress the series"
            ) from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        integral = integral and slope.is_integer() and intercept.is_integer()
        slices.append(pixels.astype(np.float64) * slope + intercept if (slope != 1 or intercept != 0) else pixels)
    array = np.stack(slices)
    if integral and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    else:
        array = array.astype(np.float32)
    volume = Volume(array, geometry["spacing"], geometry["origin"], geometry["direction"])
    return volume, _reference(folder, info, ordered)


def _reference(folder: Path, info: SeriesInfo, ordered: Sequence[tuple[Path, Any]]) -> CTReference:
    datasets = [d for _, d in ordered]
    ds0 = datasets[0]
    return CTReference(
        folder=folder,
        series_uid=info.series_uid,
        study_uid=str(ds0.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "")),
        sop_class_uid=str(ds0.get("SOPClassUID", CT_IMAGE_STORAGE)),
        sop_instance_uids=[str(d.SOPInstanceUID) for d in datasets],
        files=[p for p, _ in ordered],
        datasets=datasets,
    )


# --------------------------------------------------------------------------------------------
# Writing a CT series
# --------------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    """A DS string of at most 16 characters for ``value`` (fixed-point, trailing zeros removed)."""

    return format_ds(value)


def write_ct_series(
    volume: Volume,
    folder: str | os.PathLike,
    *,
    patient_name: str = "Anonymous^Patient",
    patient_id: str = "SEGDEEP0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "CT written by SegDeep",
    patient_position: str = "HFS",
    transfer_syntax: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``volume`` (HU) as a DICOM CT Image Storage series, one file per slice.

    The slices are ``volume.array[k]`` with Image Orientation (Patient) from the i and j axes
    and Image Position (Patient) the LPS position of voxel (0, 0, k): the true geometry,
    oblique or not. Values are stored as int16 (rounded) with slope 1 and intercept 0.
    The series appears under ``folder`` only once every slice is written.

    Parameters
    ----------
    transfer_syntax : str, optional
        A transfer syntax UID; default Explicit VR Little Endian. RLE Lossless
        (``1.2.840.10008.1.2.5``) and others pydicom can encode (JPEG-LS with ``pyjpegls``)
        are accepted.

    Returns
    -------
    list of Path
        The files, in k order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    folder = Path(folder)
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    frame_of_reference_uid = frame_of_reference_uid or new_uid()
    array = np.rint(np.asarray(volume.array, dtype=np.float64))
    if array.min() < -32768 or array.max() > 32767:
        raise SegDeepError(f"values {array.min()}..{array.max()} do not fit a 16-bit CT")
    array = array.astype(np.int16)
    now = datetime.datetime.now()
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    d = volume.direction
    iop = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
    normal = np.cross(d[:, 0], d[:, 1])  # k may run against it (e.g. LPI): readers sort by position
    written: list[Path] = []
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for k in range(array.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            sop_uid = new_uid()
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time_
            ds.AccessionNumber = ""
            ds.Modality = "CT"
            ds.Manufacturer = "SegDeep"
            ds.ReferringPhysicianName = ""
            ds.SeriesDescription = series_description[:64]
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.KVP = ""
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = 1
            ds.Laterality = ""
            ds.PatientPosition = patient_position
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = k + 1
            ds.PatientOrientation = ""
            ds.FrameOfReferenceUID = frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
            ds.ImagePositionPatient = [_ds(v) for v in volume.index_to_physical([0, 0, k])]
            ds.ImageOrientationPatient = iop
            ds.SliceThickness = _ds(volume.spacing[2])
            ds.SliceLocation = _ds(float(volume.index_to_physical([0, 0, k]) @ normal))
            ds.PixelSpacing = [_ds(volume.spacing[1]), _ds(volume.spacing[0])]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.PixelData = array[k].tobytes()
            if transfer_syntax and UID(transfer_syntax) != ExplicitVRLittleEndian:
                ds.compress(UID(transfer_syntax))
            name = f"CT{k + 1:04d}.dcm"
            write_dicom_bytes(ds, tmp / name, enforce_file_format=True)
            # a short write fails here, before the folder is put in place
            verify_dicom_file(tmp / name, str(ds.SOPInstanceUID))  # compress() gave it a new UID
            written.append(folder / name)
    return written


def onto_grid(volume: Volume, grid: Volume, *, what: str = "the segmentation") -> Volume:
    """``volume`` (a label map) on ``grid`` when their voxel centres coincide (same voxels, axes maybe flipped/permuted).

    A NIfTI label map of a series is often stored with another axis order than the series' own
    (e.g. slices superior to inferior); that is the same set of voxels and is moved exactly.
    Anything that would need interpolation is refused (:class:`~SegDeepLogic.errors.GeometryMismatchError`).
    """

    if volume.same_grid(grid):
        return volume
    # Where does every grid axis go in the volume's index space? It must be a signed permutation
    # of unit steps and the grid's voxel (0, 0, 0) must be a voxel of the volume.
    start = volume.physical_to_index(grid.origin)
    steps = volume.physical_to_index(grid.index_to_physical(np.eye(3))) - start
    rounded = np.round(steps)
    ok = (
        np.allclose(steps, rounded, atol=1e-3)
        and np.allclose(start, np.round(start), atol=1e-3)
        and sorted(np.abs(rounded).sum(axis=1).tolist()) == [1.0, 1.0, 1.0]
        and np.all(np.abs(rounded).sum(axis=0) == 1)
    )
    if not ok:
        raise GeometryMismatchError(
            f"{what} is not on the CT series' voxel grid (its voxels do not coincide with the CT's: "
            f"size {volume.shape_ijk}, spacing {volume.spacing}, origin {volume.origin} vs size {grid.shape_ijk}, "
            f"spacing {grid.spacing}, origin {grid.origin}); resample it onto the CT first"
        )
    ni, nj, nk = grid.shape_ijk
    ii, jj, kk = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij")
    src = np.round(start).astype(int)[:, None] + rounded.astype(int).T @ np.stack([ii.ravel(), jj.ravel(), kk.ravel()])
    size = np.array(volume.shape_ijk)[:, None]
    inside = np.all((src >= 0) & (src < size), axis=0)
    out = np.zeros((nk, nj, ni), dtype=volume.array.dtype)
    flat = out.reshape(-1)
    target = (kk.ravel() * nj + jj.ravel()) * ni + ii.ravel()
    flat[target[inside]] = volume.array[src[2, inside], src[1, inside], src[0, inside]]
    lost = int(np.count_nonzero(volume.array)) - int(np.count_nonzero(out))
    if lost > 0:
        raise GeometryMismatchError(f"{lost} labelled voxel(s) of {what} lie outside the CT series")
    return grid.with_array(out)
