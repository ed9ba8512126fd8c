"""DICOM Segmentation (SEG) objects with highdicom: write a label map, read it back.

:func:`write_dicom_seg` stores each segment as a BINARY segment of a Segmentation Storage
object that references the CT series (every source image, its Frame of Reference and Study):
segment label, the card's coded anatomy (Segmented Property Category/Type from the
terminology; "Tissue" otherwise), algorithm type ``AUTOMATIC`` with the model's identification
(family Artificial Intelligence, name, version, the weights' SHA-256 as a parameter) when the
segmentation came from a model, ``MANUAL`` otherwise, and the segment's colour as its
recommended CIELab display value. A paired organ's laterality (the Left/Right modifier of its
terminology) is its Segmented Property Type Modifier, so left and right parotid differ in code,
not only in name. Frames are on the CT slices (same plane positions and pixel grid), so
:func:`read_dicom_seg` gives back the identical masks on the identical grid, and
:func:`read_dicom_seg_segmentation` also the segments' colours and terminology.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .dicom_common import (
    MANUFACTURER,
    Algorithm,
    Code,
    segments_on_series,
    software_version,
    terminology_codes,
    verify_dicom_file,
    write_dicom_bytes,
)
from .dicom_series import CTReference, new_uid
from .errors import SegDeepError
from .segmentation_io import Segmentation, SegmentInfo, labelmap_from_masks
from .terminology import entry_from_codes
from .terminology import terminology_codes as entry_codes
from .volume import Volume

__all__ = ["DicomSegError", "read_dicom_seg", "read_dicom_seg_segmentation", "write_dicom_seg"]

TISSUE = Code("SCT", "85756007", "Tissue")


class DicomSegError(SegDeepError, ValueError):
    """A DICOM SEG cannot be written or read."""


def _srgb_to_lab(color: tuple[float, float, float]) -> list[int]:
    """sRGB 0..1 -> DICOM scaled CIELab (0..65535), as highdicom/Slicer use."""
    from highdicom.color import CIELabColor

    rgb = np.asarray(color, dtype=float)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ lin / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return list(
        CIELabColor(float(np.clip(lab[0], 0, 100)), float(np.clip(lab[1], -128, 127)), float(np.clip(lab[2], -128, 127))).value
    )


def _lab_to_srgb(value: Any) -> tuple[float, float, float]:
    """DICOM scaled CIELab (0..65535) -> sRGB 0..1: the inverse of :func:`_srgb_to_lab` (D65, as Slicer/dcmqi)."""
    scaled = np.asarray([float(v) for v in value], dtype=float)
    lab = (scaled[0] * 100 / 65535, scaled[1] * 255 / 65535 - 128, scaled[2] * 255 / 65535 - 128)
    fy = (lab[0] + 16) / 116
    f = np.array([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = np.where(f**3 > 216 / 24389, f**3, (116 * f - 16) / (24389 / 27)) * np.array([0.95047, 1.0, 1.08883])
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    lin = np.clip(np.linalg.solve(m, xyz), 0, 1)
    rgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return tuple(round(float(c), 4) for c in np.clip(rgb, 0, 1))  # type: ignore[return-value]


def write_dicom_seg(
    segmentation: Segmentation | Mapping[str | SegmentInfo, Volume],
    reference: CTReference,
    path: str | os.PathLike,
    *,
    ct_grid: Volume | None = None,
    algorithm: Algorithm | None = None,
    series_description: str = "SegDeep segmentation",
    overwrite: bool = False,
) -> Path:
    """Write ``segmentation`` (on the CT series' grid) as a binary DICOM SEG referencing ``reference``.

    Empty segments are kept in the segment list (with no frames). Returns the written path.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    items, grid = segments_on_series(segmentation, reference, ct_grid, DicomSegError)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite existing file: {path} (use overwrite)")
    source_images = [pydicom.dcmread(p, stop_before_pixels=True) for p in reference.files]
    descriptions = []
    for number, (info, _mask) in enumerate(items, start=1):
        coded = terminology_codes(info.terminology)
        category, kind = coded if coded else (Code("SCT", "123037004", "Anatomical Structure"), TISSUE)
        kwargs: dict[str, Any] = {}
        if algorithm is not None:
            kwargs["algorithm_type"] = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            kwargs["algorithm_identification"] = hd.AlgorithmIdentificationSequence(
                name=f"{MANUFACTURER} {algorithm.name}"[:64],
                family=codes.cid7162.ArtificialIntelligence,
                version=(algorithm.version or "unknown")[:64],
                parameters={"weights_sha256": algorithm.weights_sha256 or "unknown"},
            )
        else:
            kwargs["algorithm_type"] = hd.seg.SegmentAlgorithmTypeValues.MANUAL
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=info.name[:64],
            segmented_property_category=hd.sr.CodedConcept(category.value, category.scheme, category.meaning[:64]),
            segmented_property_type=hd.sr.CodedConcept(kind.value, kind.scheme, kind.meaning[:64]),
            tracking_uid=new_uid(),
            tracking_id=info.name[:64],
            **kwargs,
        )
        modifier = entry_codes(info.terminology)["type_modifier"] if info.terminology else None
        if modifier is not None:  # laterality: part of the type's code item (Segmented Property Type Modifier)
            item = description.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept(modifier[1], modifier[0], modifier[2][:64])]
        description.RecommendedDisplayCIELabValue = _srgb_to_lab(info.color)
        descriptions.append(description)
    pixels = np.stack([np.asarray(m.array, dtype=bool) for _, m in items], axis=-1).astype(np.uint8)
    ct0 = source_images[0]
    try:
        seg = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=new_uid(),
            series_number=int(ct0.get("SeriesNumber", 0) or 0) + 2000,
            sop_instance_uid=new_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=(algorithm.name if algorithm else MANUFACTURER)[:64],
            software_versions=software_version(),
            device_serial_number="0",
            series_description=series_description[:64],
            omit_empty_frames=True,
        )
    except (ValueError, TypeError) as exc:
        raise DicomSegError(f"cannot build the DICOM SEG: {exc}") from None
    uid = str(seg.SOPInstanceUID)
    with atomic_path(path, overwrite=overwrite, verify=lambda tmp: verify_dicom_file(tmp, uid)) as tmp:
        write_dicom_bytes(seg, tmp)
    return path


def read_dicom_seg(path: str | os.PathLike, reference: CTReference, ct_grid: Volume) -> dict[str, Volume]:
    """The segments of a DICOM SEG as boolean masks on the CT series' grid (``{label: mask}``).

    Frames are placed by their referenced source SOP Instance UID; a SEG that references
    images not in ``reference`` is an error.
    """
    return {info.name: mask for info, mask in _read_segments(path, reference, ct_grid)}


def read_dicom_seg_segmentation(path: str | os.PathLike, reference: CTReference, ct_grid: Volume) -> Segmentation:
    """A DICOM SEG as one label map on the CT series' grid, with each segment's colour and terminology.

    The value of a segment is its segment number; its colour comes from the recommended CIELab
    display value (None without one: the default colour); its terminology is the full 3D Slicer
    entry of its Segmented Property Category, Type and Type Modifier (laterality). Overlapping
    segments are an error (:class:`~SegDeepLogic.errors.SegmentationFileError`), as for any
    label map.
    """
    items = _read_segments(path, reference, ct_grid)
    if not items:
        raise DicomSegError(f"{Path(path).name} has no segments")
    return labelmap_from_masks(dict(items), reference=ct_grid)


def _coded(item: Any) -> tuple[str, str, str]:
    return (str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning))


def _segment_info(description: Any, number: int) -> SegmentInfo:
    label = str(description.SegmentLabel)
    color = None
    if "RecommendedDisplayCIELabValue" in description:
        color = _lab_to_srgb(description.RecommendedDisplayCIELabValue)
    terminology = None
    types = description.get("SegmentedPropertyTypeCodeSequence") or []
    if types:
        categories = description.get("SegmentedPropertyCategoryCodeSequence") or []
        modifiers = types[0].get("SegmentedPropertyTypeModifierCodeSequence") or []
        terminology = entry_from_codes(
            _coded(categories[0]) if categories else None, _coded(types[0]), _coded(modifiers[0]) if modifiers else None
        )
    return SegmentInfo(label, number, color, terminology)


def _read_segments(path: str | os.PathLike, reference: CTReference, ct_grid: Volume) -> list[tuple[SegmentInfo, Volume]]:
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom/pydicom raise many kinds for a non-SEG file
        raise DicomSegError(f"{path} is not a readable DICOM SEG: {exc}") from None
    if str(seg.FrameOfReferenceUID) != reference.frame_of_reference_uid:
        raise DicomSegError(
            f"{path.name} is in Frame of Reference {seg.FrameOfReferenceUID}, the CT in {reference.frame_of_reference_uid}"
        )
    numbers = list(seg.segment_numbers)
    out = []
    nk, nj, ni = ct_grid.array.shape
    present = {uid for _, _, uid in seg.get_source_image_uids()}
    missing = [u for u in present if u not in reference.sop_instance_uids]
    if missing and not (set(reference.sop_instance_uids) & present):
        raise DicomSegError(f"{path.name} references images that are not in the CT series {reference.series_uid}")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=reference.sop_instance_uids,
        segment_numbers=numbers,
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=False,
    )
    for c, number in enumerate(numbers):
        info = _segment_info(seg.get_segment_description(number), int(number))
        mask = np.asarray(pixels[..., c] > 0)
        if mask.shape != (nk, nj, ni):
            raise DicomSegError(f"{path.name}: frames of {mask.shape[1:]} pixels, the CT slices {(nj, ni)}")
        out.append((info, ct_grid.with_array(mask)))
    return out
