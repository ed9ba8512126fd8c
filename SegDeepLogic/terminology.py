"""3D Slicer terminology entries from model cards' codes.

A model card names each structure's concept as a DICOM coded concept ``"SCHEME^VALUE^MEANING"``
(``"SCT^91609006^Mandible"``). 3D Slicer stores a segment's terminology as a full entry in the
``TerminologyEntry`` tag of the segment (``.seg.nrrd`` header, MRML), seven ``~``-separated parts::

    <terminology context>~<category>~<type>~<type modifier>~<anatomic context>~<region>~<region modifier>

each coded part ``SCHEME^VALUE^MEANING`` (``^^`` when empty). Slicer
(``vtkSlicerTerminologiesModuleLogic::DeserializeTerminologyEntry``) and ``slicerio`` reject the short
code, so every file SegDeep writes carries the full entry built here, in the engine, from the card:
CLI, report, batch and the Slicer module all go through :func:`terminology_entry`
(:class:`~SegDeepLogic.segmentation_io.SegmentInfo` normalises its ``terminology`` with it).

The category follows Slicer's *General Anatomy* list: *Tissue* (``SCT^85756007``) for tissues
(bone, soft tissue, fat, muscle, cartilage), *Anatomical Structure* (``SCT^123037004``) otherwise; a
meaning ending in ``(left)``/``(right)`` becomes the type with the Left/Right modifier, as Slicer codes
paired organs.

Pure Python (no Slicer); runs on Python 3.9 (3D Slicer 5.8).
"""

from __future__ import annotations

from .errors import SegDeepError

__all__ = [
    "ANATOMIC_CONTEXT",
    "CATEGORY_CONTEXT",
    "TerminologyError",
    "entry_from_codes",
    "is_full_entry",
    "slicer_terminology_entry",
    "terminology_codes",
    "terminology_entry",
]

CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
"""The terminology context of 3D Slicer's General Anatomy list (categories and types)."""
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
"""The anatomic context Slicer names in every entry (regions; SegDeep leaves the region empty)."""
TISSUE = "SCT^85756007^Tissue"
ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
LATERALITY = {"left": "SCT^7771000^Left", "right": "SCT^24028007^Right"}
TISSUE_WORDS = ("bone", "tissue", "fat", "muscle", "cartilage")
EMPTY_CODE = "^^"


class TerminologyError(SegDeepError, ValueError):
    """A terminology that is neither a coded concept ``SCHEME^VALUE^MEANING`` nor a full Slicer entry."""


def _is_code(part: str, *, allow_empty: bool) -> bool:
    fields = part.split("^")
    if len(fields) != 3:
        return False
    if all(not f for f in fields):
        return allow_empty
    return bool(fields[0].strip() and fields[1].strip())


def is_full_entry(entry: str) -> bool:
    """Whether ``entry`` is a full Slicer terminology entry (seven parts, codes where codes belong).

    Examples
    --------
    >>> is_full_entry(terminology_entry("SCT^91609006^Mandible"))
    True
    >>> is_full_entry("SCT^91609006^Mandible")
    False
    """
    parts = entry.split("~")
    if len(parts) != 7 or not parts[0].strip():
        return False
    coded = [parts[1], parts[2], parts[3], parts[5], parts[6]]
    return (
        _is_code(coded[0], allow_empty=False)
        and _is_code(coded[1], allow_empty=False)
        and all(_is_code(c, allow_empty=True) for c in coded[2:])
    )


def terminology_entry(code: str | None, name: str = "") -> str | None:
    """The full 3D Slicer terminology entry of a model card's terminology.

    Parameters
    ----------
    code : str or None
        ``"SCHEME^VALUE^MEANING"`` (a model card's code), or a full entry (returned as it is).
        None or blank: no terminology.
    name : str
        The structure's name; helps choose the *Tissue* category (``"bone"``).

    Returns
    -------
    str or None

    Raises
    ------
    TerminologyError
        ``code`` is neither a coded concept nor a full entry.

    Examples
    --------
    >>> print(terminology_entry("SCT^91609006^Mandible"))
    Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^91609006^Mandible~^^~Anatomic codes - DICOM master list~^^~^^
    >>> terminology_entry("SCT^45289007^Parotid gland (left)").split("~")[2:4]
    ['SCT^45289007^Parotid gland', 'SCT^7771000^Left']
    >>> terminology_entry("SCT^272673000^Bone").split("~")[1]
    'SCT^85756007^Tissue'
    """
    if code is None or not str(code).strip():
        return None
    code = str(code).strip()
    if "~" in code:
        if not is_full_entry(code):
            raise TerminologyError(f"not a 3D Slicer terminology entry (seven '~'-separated parts): {code!r}")
        return code
    if not _is_code(code, allow_empty=False):
        raise TerminologyError(f"terminology must be 'SCHEME^VALUE^MEANING' (e.g. 'SCT^91609006^Mandible'), got {code!r}")
    scheme, value, meaning = (f.strip() for f in code.split("^"))
    modifier = EMPTY_CODE
    head, sep, tail = meaning.rstrip().rpartition("(")
    side = tail.rstrip(")").strip().lower()
    if sep and side in LATERALITY:
        modifier = LATERALITY[side]
        meaning = head.strip()
    words = f"{meaning} {name}".lower()
    category = TISSUE if any(w in words for w in TISSUE_WORDS) else ANATOMICAL_STRUCTURE
    return "~".join(
        [CATEGORY_CONTEXT, category, f"{scheme}^{value}^{meaning}", modifier, ANATOMIC_CONTEXT, EMPTY_CODE, EMPTY_CODE]
    )


def slicer_terminology_entry(code: str | None, name: str = "") -> str | None:
    """The ``TerminologyEntry`` tag a 3D Slicer segment gets for a model card's terminology.

    The one conversion the Slicer module uses (``SegDeepLib.mrml``): :func:`terminology_entry`,
    except that a terminology it cannot interpret gives None -- the segment is still created,
    without a terminology, rather than the whole result being refused in the panel. (The file
    writers are strict: :class:`~SegDeepLogic.segmentation_io.SegmentInfo` raises instead.)

    Examples
    --------
    >>> slicer_terminology_entry("SCT^91609006^Mandible") == terminology_entry("SCT^91609006^Mandible")
    True
    >>> slicer_terminology_entry("nonsense") is None and slicer_terminology_entry(None) is None
    True
    """
    try:
        return terminology_entry(code, name)
    except TerminologyError:
        return None


def terminology_codes(entry: str | None) -> dict[str, tuple[str, str, str] | None]:
    """The coded parts of a full entry: ``category``, ``type``, ``type_modifier``, ``region``, ``region_modifier``.

    Each is ``(scheme, value, meaning)`` or None when empty (all None without an entry).

    Examples
    --------
    >>> terminology_codes(terminology_entry("SCT^45289007^Parotid gland (right)"))["type_modifier"]
    ('SCT', '24028007', 'Right')
    """
    keys = ("category", "type", "type_modifier", "region", "region_modifier")
    if not entry or not is_full_entry(entry):
        return dict.fromkeys(keys)
    parts = entry.split("~")
    coded = [parts[1], parts[2], parts[3], parts[5], parts[6]]
    out: dict[str, tuple[str, str, str] | None] = {}
    for key, part in zip(keys, coded):
        fields = part.split("^")
        out[key] = None if not any(fields) else (fields[0], fields[1], fields[2])
    return out


def entry_from_codes(
    category: tuple[str, str, str] | None,
    type_: tuple[str, str, str],
    type_modifier: tuple[str, str, str] | None = None,
) -> str:
    """The full 3D Slicer entry of coded concepts read from a file (a DICOM SEG's segment).

    The inverse of :func:`terminology_codes` for the category, type and type modifier; the
    region stays empty, as SegDeep writes it. A missing category becomes *Anatomical Structure*.

    Examples
    --------
    >>> entry = entry_from_codes(None, ("SCT", "45289007", "Parotid gland"), ("SCT", "7771000", "Left"))
    >>> entry == terminology_entry("SCT^45289007^Parotid gland (left)")
    True
    """

    def part(code: tuple[str, str, str] | None) -> str:
        return EMPTY_CODE if code is None else "^".join(str(f).replace("~", " ").replace("^", " ") for f in code)

    return "~".join(
        [
            CATEGORY_CONTEXT,
            part(category) if category is not None else ANATOMICAL_STRUCTURE,
            part(type_),
            part(type_modifier),
            ANATOMIC_CONTEXT,
            EMPTY_CODE,
            EMPTY_CODE,
        ]
    )
