"""The settings of one report, as one frozen object (:class:`ReportOptions`).

:func:`~SegDeepLogic.report.build_report` takes a segmentation result (or runs the network with
:class:`~SegDeepLogic.options.SegmentOptions`) and these options; ``segdeep report`` and the batch
build them once.

Examples
--------
>>> ReportOptions(threshold="300:", export_format="ply").replace(tolerance_mm=2.0).tolerance_mm
2.0
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

from ..compare import DEFAULT_ROI_MARGIN_MM
from ..errors import SegDeepError
from ..mesh import DEFAULT_SMOOTHING_FACTOR
from ..mesh_io import MESH_FORMATS

__all__ = ["ReportError", "ReportOptions"]


class ReportError(SegDeepError, ValueError):
    """Invalid report inputs (unknown structure, incompatible segmentation, bad threshold)."""


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What a report compares and exports.

    Attributes
    ----------
    threshold : str or (lower, upper)
        Threshold preset name or ``"LOWER:UPPER"`` HU (see
        :func:`~SegDeepLogic.report.parse_threshold`); default bone.
    threshold_structures : tuple of str, optional
        Structures compared with the threshold (default: the bone-like ones).
    threshold_margin_mm : float
        The threshold counts inside the structure grown by this distance (mm):
        :func:`~SegDeepLogic.compare.compare_with_threshold`'s ``roi_margin_mm``.
    tolerance_mm : float
        Surface Dice tolerance (mm).
    export_dir : path, optional
        Folder where :func:`~SegDeepLogic.report.write_report` writes the meshes.
    export_format : {"stl", "obj", "ply", "3mf"}
        Mesh file format.
    space : {"LPS", "RAS"}
        Coordinate system of the mesh files.
    smoothing, decimation : float
        Mesh smoothing factor (0..1) and fraction of triangles removed.
    title : str, optional
        Report title (default from the CT file name).
    """

    threshold: Any = "bone"
    threshold_structures: tuple[str, ...] | None = None
    threshold_margin_mm: float = DEFAULT_ROI_MARGIN_MM
    tolerance_mm: float = 1.0
    export_dir: str | os.PathLike | None = None
    export_format: str = "stl"
    space: str = "LPS"
    smoothing: float = DEFAULT_SMOOTHING_FACTOR
    decimation: float = 0.0
    title: str | None = None

    def __post_init__(self) -> None:
        if self.export_format not in MESH_FORMATS:
            raise ReportError(f"export_format must be one of {MESH_FORMATS}, got {self.export_format!r}")
        if self.space not in ("LPS", "RAS"):
            raise ReportError(f"space must be LPS or RAS, got {self.space!r}")
        margin = float(self.threshold_margin_mm)
        if not math.isfinite(margin) or margin < 0:
            raise ReportError(f"threshold_margin_mm must be >= 0, got {self.threshold_margin_mm}")
        object.__setattr__(self, "threshold_margin_mm", margin)
        if self.threshold_structures is not None:
            if isinstance(self.threshold_structures, str):
                raise ReportError(f"threshold_structures must be a sequence of names, got {self.threshold_structures!r}")
            object.__setattr__(self, "threshold_structures", tuple(str(n) for n in self.threshold_structures))
        if isinstance(self.threshold, Sequence) and not isinstance(self.threshold, str):
            object.__setattr__(self, "threshold", tuple(self.threshold))

    def replace(self, **changes: Any) -> ReportOptions:
        """A copy with some options changed (unknown names are an error)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise SegDeepError(f"unknown report option(s) {unknown}; the options are {sorted(names)}")
        return dataclasses.replace(self, **changes)
