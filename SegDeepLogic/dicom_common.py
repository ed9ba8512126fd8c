"""Pieces shared by the DICOM writers (RTSTRUCT, SEG): DS strings, codes, modules copied from the CT."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_all
from .errors import WriteError
from .segmentation_io import Segmentation, SegmentInfo


def dicom_header_is(path: str | os.PathLike, sop_class_uid: str, modality: str) -> bool:
    """True if ``path`` is a DICOM file of this SOP class or modality (reads only those two tags)."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # not DICOM at all
        return False
    return str(ds.get("SOPClassUID", "")) == sop_class_uid or ds.get("Modality") == modality


MANUFACTURER = "SegDeep"
# SNOMED CT "Anatomical structure": the category of every organ segment unless its terminology says otherwise.
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
# DICOM CID 7162 "Artificial Intelligence" algorithm family.
AI_FAMILY = ("DCM", "123110", "Artificial Intelligence")


def format_ds(value: float) -> str:
    """``value`` as a DICOM Decimal String of at most 16 characters (fixed point, up to 6 decimals).

    Examples
    --------
    >>> format_ds(0.1 + 0.2), format_ds(-123.456789012345), format_ds(3.0), format_ds(-0.0000001)
    ('0.3', '-123.456789', '3', '0')
    """
    value = float(value)
    for decimals in (6, 5, 4, 3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if text in ("-0", ""):
            text = "0"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} cannot be written as a DICOM DS of 16 characters")


@dataclasses.dataclass(frozen=True)
class Code:
    """A coded concept (scheme designator, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str

    def dataset(self) -> Any:
        import pydicom

        ds = pydicom.Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning[:64]
        return ds


def terminology_codes(terminology: str | None) -> tuple[Code, Code] | None:
    """(category, type) codes from a card's terminology or a Slicer terminology entry.

    Accepts ``"SCT^91609006^Mandible"`` (category: Anatomical Structure) or Slicer's
    ``"context~SCHEME^VALUE^Category~SCHEME^VALUE^Type~modifier~region context~region~modifier"``.
    None when there is no usable code.

    Examples
    --------
    >>> cat, typ = terminology_codes("SCT^91609006^Mandible")
    >>> (cat.meaning, typ.scheme, typ.value, typ.meaning)
    ('Anatomical Structure', 'SCT', '91609006', 'Mandible')
    """
    if not terminology:
        return None

    def parse(text: str) -> Code | None:
        fields = text.split("^")
        if len(fields) != 3 or not fields[0] or not fields[1]:
            return None
        return Code(fields[0], fields[1], fields[2] or fields[1])

    parts = terminology.split("~")
    if len(parts) >= 3:
        category, kind = parse(parts[1]), parse(parts[2])
        if kind is None:
            return None
        return (category or Code(*ANATOMICAL_STRUCTURE), kind)
    kind = parse(terminology)
    return None if kind is None else (Code(*ANATOMICAL_STRUCTURE), kind)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """The algorithm that made a segmentation: model name, version and weights' SHA-256."""

    name: str
    version: str
    weights_sha256: str = ""

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any] | None) -> Algorithm | None:
        """From :attr:`SegmentationResult.parameters` (``{"model": {"name", "version", "weights_sha256"}}``)."""
        model = (parameters or {}).get("model") or {}
        if not model.get("name"):
            return None
        return cls(str(model["name"]), str(model.get("version") or ""), str(model.get("weights_sha256") or ""))

    @classmethod
    def from_card(cls, card: Any) -> Algorithm:
        """From a :class:`~SegDeepLogic.model_package.ModelCard`."""
        return cls(str(card.name), str(card.version or ""), str(card.weights_sha256 or ""))

    @property
    def description(self) -> str:
        """At most 64 characters (a DICOM LO): ``"SegDeep headneck-ct 1.0.0 sha256:52208245eeec"``."""
        text = f"{MANUFACTURER} {self.name} {self.version}".strip()
        if self.weights_sha256:
            text += f" sha256:{self.weights_sha256[:12]}"
        return text[:64]

    @property
    def parameters_text(self) -> str:
        return f"model={self.name}; version={self.version}; weights_sha256={self.weights_sha256 or 'unknown'}"

    def identification_dataset(self) -> Any:
        """A (3006,0037)-style Algorithm Identification item (family, name, version, parameters)."""
        import pydicom

        ds = pydicom.Dataset()
        ds.AlgorithmFamilyCodeSequence = [Code(*AI_FAMILY).dataset()]
        ds.AlgorithmName = f"{MANUFACTURER} {self.name}"[:64]
        ds.AlgorithmVersion = (self.version or "unknown")[:64]
        ds.AlgorithmParameters = self.parameters_text
        return ds


# Patient, study and equipment attributes copied from the referenced CT into a derived object.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def copy_patient_study(target: Any, source: Any) -> None:
    """Copy the Patient and General Study module attributes (Type 2 ones empty if absent)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(target, keyword, source.get(keyword))
        elif keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "StudyID",
            "AccessionNumber",
        ):
            setattr(target, keyword, "")


def now_date_time() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def software_version() -> str:
    return f"SegDeep {__version__}"


def verify_dicom_file(path: Path, sop_instance_uid: str | None = None) -> None:
    """Read a just-written DICOM file back whole; raise :class:`~SegDeepLogic.errors.WriteError` if it is short or corrupt.

    For :func:`SegDeepLogic.atomic.atomic_path`'s ``verify``: a writer that stopped early (disk
    full, a file size limit) leaves a file pydicom cannot read to its end, or one without the
    instance UID just written.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        short = ""
        encapsulated = bool(getattr(getattr(ds.file_meta, "TransferSyntaxUID", None), "is_encapsulated", False))
        if "PixelData" in ds and not encapsulated:  # native pixels: the element must hold every frame
            bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
            bits *= int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated)
            if len(ds.PixelData) < (bits + 7) // 8:
                short = f"its pixel data has {len(ds.PixelData)} of {(bits + 7) // 8} bytes"
    except Exception as exc:  # pydicom raises many kinds on a short file
        raise WriteError(f"the DICOM file just written cannot be read back: {exc}") from None
    if short:
        raise WriteError(f"the DICOM file just written cannot be read back: {short}")
    if sop_instance_uid is not None and uid != str(sop_instance_uid):
        raise WriteError(f"the DICOM file just written holds instance {uid}, not {sop_instance_uid}")


def write_dicom_bytes(ds: Any, path: Path, **save_options: Any) -> None:
    """Encode ``ds`` in memory and write it to ``path`` (a temporary from :func:`~SegDeepLogic.atomic.atomic_path`),
    checking that every byte reached the disk."""
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, **save_options)
    write_all(path, buffer.getvalue())


def segments_on_series(
    segmentation: Any, reference: Any, ct_grid: Any, error: type[Exception]
) -> tuple[list[tuple[Any, Any]], Any]:
    """``(segment info, mask)`` pairs and the grid of ``segmentation`` (a :class:`~SegDeepLogic.segmentation_io.Segmentation`
    or a ``{name or SegmentInfo: mask Volume}`` mapping), checked to lie on the CT series ``reference``.

    Shared by the RTSTRUCT and DICOM SEG writers; ``error`` is the writer's exception type.
    """

    if isinstance(segmentation, Segmentation):
        items = [(s, segmentation.mask(s.name)) for s in segmentation.segments]
        grid = segmentation.labelmap
    else:
        items = [
            (key if isinstance(key, SegmentInfo) else SegmentInfo(str(key), n), m)
            for n, (key, m) in enumerate(segmentation.items(), start=1)
        ]
        grid = items[0][1] if items else None
    if not items:
        raise error("no segment to write")
    if ct_grid is not None:
        ct_grid.require_same_grid(grid, "the segmentation and the CT series")
    nk = grid.array.shape[0]
    if nk != len(reference.sop_instance_uids):
        raise error(
            f"the segmentation has {nk} slices, the CT series {reference.series_uid} {len(reference.sop_instance_uids)}: "
            "it is not on that series' grid"
        )
    return items, grid
