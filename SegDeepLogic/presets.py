"""Named tissue constants shared by the engine, the report and the Slicer panel (torch-free, light).

* :data:`PRESETS` -- named Hounsfield-unit ranges (bone, compact bone, enamel) with their sources.
* :data:`BONE_KEYWORDS` / :func:`is_bone_like` -- which structure names are bone (refined with the
  bone threshold by ``segment_volume(refine=True)``, compared with the threshold by the report and
  chosen first by the panel's comparison).

Imports only the standard library, so Slicer's GUI process can read it at start-up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["BONE_KEYWORDS", "PRESETS", "ThresholdPreset", "is_bone_like"]

BONE_KEYWORDS = ("bone", "mandible", "maxilla", "skull", "cranium", "vertebra", "femur", "tibia", "pelvis", "rib", "teeth")
"""Structure names containing one of these (case-insensitive) are bone-like."""


def is_bone_like(name: str) -> bool:
    """True when a structure name contains a word of :data:`BONE_KEYWORDS` (case-insensitive).

    Examples
    --------
    >>> is_bone_like("Mandible"), is_bone_like("Esophagus")
    (True, False)
    """
    low = str(name).lower()
    return any(word in low for word in BONE_KEYWORDS)


@dataclasses.dataclass(frozen=True)
class ThresholdPreset:
    """A named Hounsfield-unit range for a tissue.

    Attributes
    ----------
    name : str
        Key in :data:`PRESETS`.
    lower_hu, upper_hu : float
        Inclusive HU bounds.
    description : str
        What the range selects, for menus and reports.
    source : str
        Where the numbers come from.
    title : str
        Short name for menus (the Slicer panel shows ``"<title> (<lower> to <upper> HU)"``).
    """

    name: str
    lower_hu: float
    upper_hu: float
    description: str
    source: str
    title: str = ""


_INVESALIUS = "InVesalius 3 (CTI Renato Archer), invesalius/presets.py, Presets.thresh_ct"

PRESETS: Mapping[str, ThresholdPreset] = MappingProxyType(
    {
        # InVesalius "Bone" = (226, 3071). 3071 HU is the top of the 12-bit CT range
        # (-1024 + 4095). 226 HU is also the bone range users commonly enter in 3D Slicer's
        # Segment Editor Threshold effect (which itself ships no HU presets).
        "bone": ThresholdPreset(
            "bone",
            226.0,
            3071.0,
            "All bone (cortical and most trabecular bone) and teeth; also contrast agent and metal below 3071 HU",
            f'{_INVESALIUS}["Bone"] = (226, 3071)',
            "Bone",
        ),
        # InVesalius "Compact Bone (Adult)" = (662, 1988).
        "compact_bone_adult": ThresholdPreset(
            "compact_bone_adult",
            662.0,
            1988.0,
            "Compact (cortical) bone of an adult; leaves out most trabecular bone",
            f'{_INVESALIUS}["Compact Bone (Adult)"] = (662, 1988)',
            "Compact bone, adult",
        ),
        # InVesalius "Enamel (Adult)" = (1553, 2850).
        "teeth_enamel_adult": ThresholdPreset(
            "teeth_enamel_adult",
            1553.0,
            2850.0,
            "Tooth enamel of an adult (the densest tissue in the body)",
            f'{_INVESALIUS}["Enamel (Adult)"] = (1553, 2850)',
            "Tooth enamel, adult",
        ),
    }
)
"""Named HU ranges, read-only: ``name -> ThresholdPreset``.

Examples
--------
>>> PRESETS["bone"].lower_hu, PRESETS["bone"].upper_hu
(226.0, 3071.0)
>>> sorted(PRESETS)
['bone', 'compact_bone_adult', 'teeth_enamel_adult']
"""
