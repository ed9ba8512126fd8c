"""The options of one segmentation run, as one frozen object.

:class:`SegmentOptions` is built once by each front end -- the command line (``segdeep segment``,
``segdeep batch``, ``segdeep report``, ``segdeep evaluate``), the Slicer parameter node and the
worker's job file -- passed to :func:`SegDeepLogic.segment.segment_volume`, and recorded in the
result (:attr:`SegmentationResult.options`, its ``summary()`` and so the sidecars, the batch
summary and the report). It never imports torch, so the Slicer panel can build it.

Examples
--------
>>> opts = SegmentOptions(overlap=0.25, tta=True)
>>> opts.replace(device="cpu").device, opts.overlap
('cpu', 0.25)
>>> SegmentOptions.from_dict(opts.to_dict()) == opts
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from .errors import SegDeepError
from .refine import RefineOptions

__all__ = ["SegmentOptions", "options_from"]

_PER_LABEL = ("thresholds", "keep_largest", "min_island_mm3")


def _freeze_mapping(value: Any) -> Any:
    """A mapping as a sorted tuple of (key, value) pairs (hashable, comparable); others unchanged."""
    if isinstance(value, Mapping):
        return tuple(sorted(((k, v) for k, v in value.items()), key=lambda kv: (str(type(kv[0])), str(kv[0]))))
    return value


def _thaw(value: Any) -> Any:
    """The inverse of :func:`_freeze_mapping`: a tuple of pairs as a dict."""
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value) and value:
        return dict(value)
    return value


@dataclasses.dataclass(frozen=True)
class SegmentOptions:
    """How to segment a CT: every setting of :func:`~SegDeepLogic.segment.segment_volume`.

    Per-label settings (``thresholds``, ``keep_largest``, ``min_island_mm3``) take one value for
    every label or a mapping of label name/value to value; a mapping is stored as a sorted tuple
    of pairs (the object is frozen and hashable) and given back as a dict by :meth:`per_label`.

    Attributes
    ----------
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    precision : {"auto", "fp32", "fp16", "bf16"}
        ``"auto"``: bf16/fp16 autocast on GPUs, fp32 on the CPU.
    overlap : float in [0, 1)
        Sliding-window overlap.
    batch_size : int, optional
        Windows per network call (default: chosen from the patch size and device).
    tta : bool
        Mirroring test-time augmentation.
    tta_flips : tuple of tuples of int, optional
        The flips of the TTA (window tensor dims 2, 3, 4 = D, H, W); default all 8.
    thresholds : float or mapping, optional
        Probability thresholds instead of argmax (per label name/value in a mapping).
    keep_largest, min_island_mm3 : bool/float or mapping
        Per-label clean-up.
    model_postprocessing : bool
        Apply the model card's clean-up too.
    refine : bool
        Refine bone labels at the CT's resolution with a HU threshold.
    refine_labels : tuple of str or int, optional
        Labels to refine (default: those named after a bone).
    refine_options : RefineOptions, optional
        HU range, growth and clean-up of the refinement.
    antialias : bool
        Gaussian smoothing before downsampling to a coarser model spacing.
    uncertainty : bool
        Compute the uncertainty map and per-structure summary.
    uncertainty_band_mm, uncertainty_threshold : float
        Boundary band half-width and the entropy counted as uncertain.
    return_probabilities : bool
        Also return each structure's probability map.
    allow_mismatch : bool
        Keep the labels when the out-of-distribution check says "mismatch".
    num_threads : int, optional
        CPU threads for the network.
    restrict_to_body : bool
        Run the network only on a box around the body (:func:`~SegDeepLogic.body.find_body_crop`:
        the largest connected piece above -500 HU on the model grid, extended head-feet to every
        slice with body voxels, plus 10 mm); outside it the
        labels are background and the uncertainty 0. False runs it on the whole grid (the
        behaviour before this option).
    """

    device: str = "auto"
    precision: str = "auto"
    overlap: float = 0.5
    batch_size: int | None = None
    tta: bool = False
    tta_flips: tuple[tuple[int, ...], ...] | None = None
    thresholds: Any = None
    keep_largest: Any = False
    min_island_mm3: Any = 0.0
    model_postprocessing: bool = True
    refine: bool = False
    refine_labels: tuple[Any, ...] | None = None
    refine_options: RefineOptions | None = None
    antialias: bool = True
    uncertainty: bool = True
    uncertainty_band_mm: float = 2.0
    uncertainty_threshold: float = 0.5
    return_probabilities: bool = False
    allow_mismatch: bool = False
    num_threads: int | None = None
    restrict_to_body: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalise while frozen: str device, tuples, frozen mappings
        set_(self, "device", str(self.device))
        set_(self, "precision", str(self.precision))
        for name in _PER_LABEL:
            set_(self, name, _freeze_mapping(getattr(self, name)))
        if self.tta_flips is not None:
            set_(self, "tta_flips", tuple(tuple(int(a) for a in f) for f in self.tta_flips))
        if self.refine_labels is not None:
            if isinstance(self.refine_labels, (str, int)):
                raise SegDeepError(f"refine_labels must be a sequence of names or values, got {self.refine_labels!r}")
            set_(self, "refine_labels", tuple(self.refine_labels))
        if isinstance(self.refine_options, Mapping):
            set_(self, "refine_options", RefineOptions(**self.refine_options))
        try:
            overlap = float(self.overlap)
        except (TypeError, ValueError):
            raise SegDeepError(f"overlap must be a number in [0, 1), got {self.overlap!r}") from None
        if not 0.0 <= overlap < 1.0:
            raise SegDeepError(f"overlap must be in [0, 1), got {self.overlap}")
        set_(self, "overlap", overlap)
        if self.batch_size is not None:
            if int(self.batch_size) < 1:
                raise SegDeepError(f"batch_size must be >= 1, got {self.batch_size}")
            set_(self, "batch_size", int(self.batch_size))
        if self.num_threads is not None:
            set_(self, "num_threads", max(1, int(self.num_threads)))
        for name in ("uncertainty_band_mm", "uncertainty_threshold"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise SegDeepError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
            set_(self, name, value)
        for name in (
            "tta",
            "model_postprocessing",
            "refine",
            "antialias",
            "uncertainty",
            "return_probabilities",
            "allow_mismatch",
            "restrict_to_body",
        ):
            set_(self, name, bool(getattr(self, name)))

    # -- building ------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> SegmentOptions:
        """A copy with some options changed (unknown names are an error)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise SegDeepError(f"unknown segmentation option(s) {unknown}; the options are {sorted(self.names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentOptions:
        """Options from :meth:`to_dict`'s dictionary (e.g. a job file); unknown keys are an error."""
        return cls().replace(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (mappings as dicts with string keys, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, RefineOptions):
                value = value.as_dict()
            else:
                value = _thaw(value) if f.name in _PER_LABEL else value
                if isinstance(value, Mapping):
                    value = {str(k): v for k, v in value.items()}
                elif isinstance(value, tuple):
                    value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    # -- reading -------------------------------------------------------------------------------
    def per_label(self, name: str) -> Any:
        """A per-label option (``thresholds``, ``keep_largest``, ``min_island_mm3``) as given: a
        single value or a dict."""
        if name not in _PER_LABEL:
            raise SegDeepError(f"{name!r} is not a per-label option; those are {list(_PER_LABEL)}")
        return _thaw(getattr(self, name))

    def __repr__(self) -> str:
        changed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        return "SegmentOptions(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"


def options_from(options: SegmentOptions | Mapping[str, Any] | None = None, **changes: Any) -> SegmentOptions:
    """:class:`SegmentOptions` from an object, a dict or None (the defaults), with ``changes`` applied."""
    if options is None:
        base = SegmentOptions()
    elif isinstance(options, SegmentOptions):
        base = options
    elif isinstance(options, Mapping):
        base = SegmentOptions.from_dict(options)
    else:
        raise SegDeepError(f"options must be SegmentOptions, a dict or None, got {type(options).__name__}")
    return base.replace(**changes) if changes else base
