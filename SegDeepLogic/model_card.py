"""Model cards: what a network segments and how to feed it (``model.json``), torch-free.

A model package (:mod:`SegDeepLogic.model_package`) is a folder or ``.zip`` holding a card and a
weights file. This module reads and validates the card alone -- :func:`load_model_card`,
:class:`ModelCard` -- without importing PyTorch, so the report, the Slicer panel (listing models
with their labels) and any tool can use it; :func:`file_sha256` is the one file hash of the
engine. Architecture names and size divisors come from :mod:`SegDeepLogic.architectures` (also
torch-free).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ._compat import zip_strict
from .architectures import ARCHITECTURE_NAMES, network_size_divisor
from .errors import ModelPackageError
from .model_input import IntensityNormalization

if TYPE_CHECKING:
    from .segmentation_io import SegmentInfo

__all__ = [
    "CARD_FILE",
    "CARD_LIMITS",
    "FORMAT_VERSION",
    "ModelCard",
    "ModelPackageError",
    "file_sha256",
    "load_model_card",
]

FORMAT_VERSION = 1
"""The model-card format this version of SegDeep reads and writes."""
CARD_FILE = "model.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
MAX_CARD_BYTES = 1 << 20  # a card is a few KB; refuse anything that could exhaust memory
MAX_ARCHIVE_WEIGHTS_BYTES = 4 << 30  # what an archive may unpack into the temporary folder
_ORIENTATION_AXES = ("LR", "PA", "IS")
_HEX64 = re.compile(r"[0-9a-f]{64}")


# Bounds on card values, so that a card cannot make SegDeep allocate without limit or compute garbage.
CARD_LIMITS: dict[str, Any] = {
    "spacing_mm": (0.2, 20.0),  # model voxel size per axis
    "patch_side": 512,  # voxels per patch axis
    "patch_voxels": 192**3,  # voxels in a patch (the network's activations scale with it)
    "hu": 100_000.0,  # |clip_hu|, |subtract|
    "input_range": (1e-3, 1e4),  # network input: minimal span, largest magnitude
}


# --- card validation helpers ------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


class _Checker:
    """Builds card error messages that name the card and the offending key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ModelPackageError:
        return ModelPackageError(f"{self.source}: '{key}' {message}")

    def string(self, key: str, value: Any, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_type_name(value)} {value!r}")
        if not empty and not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def json_object(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a JSON object, got {_type_name(value)}")
        try:  # a deep copy that also proves the content can be written back as JSON
            return json.loads(json.dumps(dict(value), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise self.fail(key, f"must hold only JSON values (strings, numbers, lists, objects): {exc}") from exc

    def number(self, key: str, value: Any) -> float:
        if not _is_number(value) or not math.isfinite(float(value)):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        return float(value)

    def numbers(self, key: str, value: Any, n: int) -> list[float]:
        if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != n:
            raise self.fail(key, f"must be a list of {n} numbers, got {value!r}")
        return [self.number(f"{key}[{i}]", v) for i, v in enumerate(value)]


# --- the card ---------------------------------------------------------------------------------
class _Required:
    """Default of the card's required fields (``dataclass(kw_only=True)`` needs Python 3.10)."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a network segments and how to feed it: the content of ``model.json``.

    Every field is validated on construction (:class:`ModelPackageError` names the key and the
    problem). Field names are the JSON keys.

    Parameters
    ----------
    format_version : int
        Card format, :data:`FORMAT_VERSION` (1).
    name, version, description : str
        Model name (non-empty), version string and a one-paragraph description.
    architecture : str
        Key of :data:`SegDeepLogic.architectures.ARCHITECTURE_NAMES` (e.g. ``"unet3d"``).
    architecture_params : dict
        Keyword arguments of the architecture; ``in_channels``/``out_channels``, when given,
        must match ``in_channels`` and :attr:`num_classes` (``1 + len(labels)``).
    in_channels : int
        Input channels; SegDeep feeds one CT channel, so 1.
    labels : list of dict
        ``{"name": str, "value": int >= 1, "color": [r, g, b] in 0..1, "terminology": str}``
        (terminology optional, e.g. ``"SCT^91609006^Mandible"``). Value 0 is the background;
        values and names are unique. Stored normalised (``terminology`` None when absent).
    spacing_ijk_mm : 3 floats
        Voxel size (mm, i/j/k order) the network was trained at.
    orientation : str
        ITK/DICOMOrient code of the axes the network expects (e.g. ``"LPI"``: i towards
        Left, j towards Posterior, k towards Inferior).
    intensity : dict
        ``{"clip_hu": [lo, hi], "subtract": s, "divide": d}``; the network input is
        ``(clip(HU, lo, hi) - s) / d`` (:meth:`normalize_intensity`), ``d > 0``.
    patch_size_kji : 3 ints
        Sliding-window size in array order (D, H, W); divisible as the architecture requires.
    training, validation_metrics : dict
        Free-form provenance: data, citation, split, settings, code version; metric values.
    license : str
        Licence of the weights (SPDX identifier or text).
    weights_file : str
        Name of the weights file in the package (no folders), ``.safetensors``, ``.pt`` or
        ``.pth``.
    weights_sha256 : str
        Lower-case hex SHA-256 of the weights file; ``""`` for a card not yet saved
        (:func:`save_model_package` fills it in).
    limitations : str, optional
        Known failure modes, intended use.
    reference_statistics : dict, optional
        What the training (and validation) data looked like, for the out-of-distribution check
        (:mod:`SegDeepLogic.plausibility`): image features, structure volumes, the entropy seen
        on validation. Empty: the check is skipped and says so.
    extra : dict, optional
        Anything else (kept and written back).
    """

    format_version: int = FORMAT_VERSION
    name: str = _REQUIRED  # type: ignore[assignment]
    version: str = _REQUIRED  # type: ignore[assignment]
    description: str = ""
    architecture: str = _REQUIRED  # type: ignore[assignment]
    architecture_params: dict[str, Any] = _REQUIRED  # type: ignore[assignment]
    in_channels: int = 1
    labels: list[dict[str, Any]] = _REQUIRED  # type: ignore[assignment]
    spacing_ijk_mm: tuple[float, float, float] = _REQUIRED  # type: ignore[assignment]
    orientation: str = _REQUIRED  # type: ignore[assignment]
    intensity: dict[str, Any] = _REQUIRED  # type: ignore[assignment]
    patch_size_kji: tuple[int, int, int] = _REQUIRED  # type: ignore[assignment]
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    validation_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    license: str = _REQUIRED  # type: ignore[assignment]
    weights_file: str = "weights.safetensors"
    weights_sha256: str = ""
    limitations: str = ""
    reference_statistics: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    _OPTIONAL_KEYS = frozenset({"limitations", "reference_statistics", "extra"})

    def __post_init__(self) -> None:
        missing = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is _REQUIRED]
        if missing:
            raise TypeError(f"ModelCard() missing required keyword argument(s): {', '.join(missing)}")
        self._validate("model card")

    # Validation lives in one method so that from_dict can name the file in every message.
    def _validate(self, source: str) -> None:
        check = _Checker(source)
        put = object.__setattr__  # frozen dataclass: store the normalised values

        if not _is_int(self.format_version):
            raise check.fail("format_version", f"must be an integer, got {self.format_version!r}")
        if self.format_version != FORMAT_VERSION:
            raise check.fail(
                "format_version",
                f"is {self.format_version}; this SegDeep reads format {FORMAT_VERSION}"
                + (" (the package needs a newer SegDeep)" if self.format_version > FORMAT_VERSION else ""),
            )
        put(self, "format_version", int(self.format_version))
        check.string("name", self.name)
        check.string("version", self.version)
        check.string("description", self.description, empty=True)
        check.string("license", self.license)
        check.string("limitations", self.limitations, empty=True)
        put(self, "training", check.json_object("training", self.training))
        put(self, "validation_metrics", check.json_object("validation_metrics", self.validation_metrics))
        put(self, "reference_statistics", check.json_object("reference_statistics", self.reference_statistics))
        put(self, "extra", check.json_object("extra", self.extra))

        if not _is_int(self.in_channels) or self.in_channels != 1:
            raise check.fail("in_channels", f"must be 1 (SegDeep feeds the network one CT channel), got {self.in_channels!r}")
        put(self, "in_channels", 1)

        put(self, "labels", self._validated_labels(check))

        spacing = check.numbers("spacing_ijk_mm", self.spacing_ijk_mm, 3)
        if min(spacing) <= 0:
            raise check.fail("spacing_ijk_mm", f"must be positive in every axis, got {spacing} mm")
        lo_mm, hi_mm = CARD_LIMITS["spacing_mm"]
        if min(spacing) < lo_mm or max(spacing) > hi_mm:
            raise check.fail("spacing_ijk_mm", f"must be {lo_mm} to {hi_mm} mm in every axis, got {spacing} mm")
        put(self, "spacing_ijk_mm", tuple(spacing))

        orientation = check.string("orientation", self.orientation)
        letters = orientation.upper()
        axes_used = [next((a for a in _ORIENTATION_AXES if ch in a), None) for ch in letters]
        if len(letters) != 3 or None in axes_used or len(set(axes_used)) != 3:
            raise check.fail(
                "orientation",
                f"must be a 3-letter axis code using one of L/R, one of P/A and one of I/S (e.g. 'LPS', 'RAS', 'LPI'), got {orientation!r}",
            )
        put(self, "orientation", letters)

        put(self, "intensity", self._validated_intensity(check))

        patch = self.patch_size_kji
        if not isinstance(patch, (list, tuple, np.ndarray)) or len(patch) != 3 or not all(_is_int(p) and p >= 1 for p in patch):
            raise check.fail("patch_size_kji", f"must be 3 positive integers (D, H, W), got {patch!r}")
        side, total = CARD_LIMITS["patch_side"], CARD_LIMITS["patch_voxels"]
        if max(int(p) for p in patch) > side or int(np.prod([int(p) for p in patch])) > total:
            raise check.fail(
                "patch_size_kji",
                f"{[int(p) for p in patch]} is too large: at most {side} voxels per axis and {total} voxels in all "
                f"(that is {int(np.prod([int(p) for p in patch]))})",
            )
        put(self, "patch_size_kji", tuple(int(p) for p in patch))

        weights_file = check.string("weights_file", self.weights_file)
        if PurePosixPath(weights_file).name != weights_file or "\\" in weights_file or weights_file in (".", ".."):
            raise check.fail("weights_file", f"must be a plain file name inside the package (no folders), got {weights_file!r}")
        if not weights_file.lower().endswith(WEIGHT_SUFFIXES):
            raise check.fail("weights_file", f"must end with one of {', '.join(WEIGHT_SUFFIXES)}, got {weights_file!r}")
        sha = check.string("weights_sha256", self.weights_sha256, empty=True).strip().lower()
        if sha and not _HEX64.fullmatch(sha):
            raise check.fail("weights_sha256", f"must be 64 hexadecimal digits (a SHA-256), got {self.weights_sha256!r}")
        put(self, "weights_sha256", sha)

        self._validate_architecture(check)

    def _validated_labels(self, check: _Checker) -> list[dict[str, Any]]:
        labels = self.labels
        if not isinstance(labels, (list, tuple)) or not labels:
            raise check.fail("labels", f"must be a non-empty list of label objects, got {labels!r}")
        allowed = {"name", "value", "color", "terminology"}
        result: list[dict[str, Any]] = []
        for n, label in enumerate(labels):
            key = f"labels[{n}]"
            if not isinstance(label, Mapping):
                raise check.fail(key, f"must be an object with name, value and color, got {_type_name(label)}")
            missing = [k for k in ("name", "value", "color") if k not in label]
            if missing:
                raise check.fail(key, f"is missing {', '.join(missing)}")
            unknown = sorted(set(label) - allowed)
            if unknown:
                raise check.fail(key, f"has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
            name = check.string(f"{key}.name", label["name"])
            value = label["value"]
            if not _is_int(value):
                raise check.fail(f"{key}.value", f"must be an integer, got {value!r}")
            if value < 1:
                raise check.fail(
                    f"{key}.value", f"must be >= 1 (0 is the background, which is not listed as a label), got {value}"
                )
            color = check.numbers(f"{key}.color", label["color"], 3)
            if not all(0.0 <= c <= 1.0 for c in color):
                raise check.fail(f"{key}.color", f"must be 3 numbers (r, g, b) between 0 and 1, got {color}")
            terminology = label.get("terminology")
            if terminology is not None:
                check.string(f"{key}.terminology", terminology)
            result.append({"name": name, "value": int(value), "color": color, "terminology": terminology})
        for field in ("value", "name"):
            seen: dict[Any, int] = {}
            for n, label in enumerate(result):
                if label[field] in seen:
                    raise check.fail(
                        f"labels[{n}].{field}",
                        f"{label[field]!r} is already used by labels[{seen[label[field]]}]; label {field}s must be unique",
                    )
                seen[label[field]] = n
        return result

    def _validated_intensity(self, check: _Checker) -> dict[str, Any]:
        intensity = self.intensity
        if not isinstance(intensity, Mapping):
            raise check.fail("intensity", f"must be an object {{clip_hu, subtract, divide}}, got {_type_name(intensity)}")
        expected = {"clip_hu", "subtract", "divide"}
        missing, unknown = sorted(expected - set(intensity)), sorted(set(intensity) - expected)
        if missing or unknown:
            raise check.fail("intensity", f"must have exactly the keys {sorted(expected)}; missing {missing}, unknown {unknown}")
        lo, hi = check.numbers("intensity.clip_hu", intensity["clip_hu"], 2)
        if not lo < hi:
            raise check.fail("intensity.clip_hu", f"must be [lower, upper] with lower < upper, got {[lo, hi]}")
        subtract = check.number("intensity.subtract", intensity["subtract"])
        divide = check.number("intensity.divide", intensity["divide"])
        if divide <= 0:
            raise check.fail("intensity.divide", f"must be positive, got {divide}")
        bound = CARD_LIMITS["hu"]
        if max(abs(lo), abs(hi), abs(subtract)) > bound:
            raise check.fail("intensity", f"clip_hu and subtract must lie within +-{bound} HU, got {[lo, hi]} and {subtract}")
        in_lo, in_hi = CARD_LIMITS["input_range"]
        span = (hi - lo) / divide
        extreme = max(abs(lo - subtract), abs(hi - subtract)) / divide
        if not (in_lo <= span and extreme <= in_hi):
            raise check.fail(
                "intensity.divide",
                f"{divide:g} maps clip_hu {[lo, hi]} to a network input spanning {span:.3g} (largest magnitude "
                f"{extreme:.3g}); it must span at least {in_lo:g} and stay within +-{in_hi:g}",
            )
        return {"clip_hu": [lo, hi], "subtract": subtract, "divide": divide}

    def _validate_architecture(self, check: _Checker) -> None:
        architecture = check.string("architecture", self.architecture)
        if architecture not in ARCHITECTURE_NAMES:
            raise check.fail(
                "architecture",
                f"is {architecture!r}, an unknown architecture; known architectures: {', '.join(sorted(ARCHITECTURE_NAMES))}",
            )
        params = check.json_object("architecture_params", self.architecture_params)
        object.__setattr__(self, "architecture_params", params)
        if "in_channels" in params and params["in_channels"] != self.in_channels:
            raise check.fail(
                "architecture_params", f"in_channels={params['in_channels']!r} differs from in_channels={self.in_channels}"
            )
        if "out_channels" in params and params["out_channels"] != self.num_classes:
            raise check.fail(
                "architecture_params",
                f"out_channels={params['out_channels']!r} but the {len(self.labels)} label(s) need {self.num_classes} output "
                "channels (channel 0 the background, channel k the k-th label)",
            )
        try:
            divisor = network_size_divisor(architecture, params)
        except ModelPackageError as exc:
            raise check.fail("architecture_params", f"is invalid: {exc}") from exc
        if any(p % d for p, d in zip_strict(self.patch_size_kji, divisor)):
            raise check.fail(
                "patch_size_kji",
                f"{list(self.patch_size_kji)} is not divisible by {list(divisor)} (D, H, W), as architecture "
                f"{architecture!r} with these parameters requires",
            )

    # --- construction from / conversion to JSON ------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, source: str = "model card") -> ModelCard:
        """Validate a parsed ``model.json`` and build the card.

        Parameters
        ----------
        data : dict
            The parsed JSON object.
        source : str
            How to name the card in error messages (e.g. its path).

        Raises
        ------
        ModelPackageError
            Missing or unknown key, wrong type, or invalid value; the message names the key.

        Examples
        --------
        >>> card = ModelCard.from_dict(_EXAMPLE_CARD)
        >>> card.label_names, card.num_classes, card.spacing_ijk_mm
        (['bone'], 2, (2.0, 2.0, 2.0))
        >>> ModelCard.from_dict({**_EXAMPLE_CARD, "spacing_ijk_mm": [1, 0, 1]}, source="my/model.json")
        Traceback (most recent call last):
          ...
        SegDeepLogic.errors.ModelPackageError: my/model.json: 'spacing_ijk_mm' must be positive in every axis, got [1.0, 0.0, 1.0] mm
        """
        if not isinstance(data, Mapping):
            raise ModelPackageError(f"{source}: must be a JSON object, got {_type_name(data)}")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in fields if k not in data and k not in cls._OPTIONAL_KEYS]
        if missing:
            raise ModelPackageError(f"{source}: missing key(s) {', '.join(repr(k) for k in missing)}")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ModelPackageError(f"{source}: unknown key(s) {unknown}; put additional information under 'extra'")
        card = object.__new__(cls)
        for key in fields:
            default = "" if key == "limitations" else {}
            object.__setattr__(card, key, data.get(key, default))
        card._validate(source)
        return card

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON-ready dict (the content of ``model.json``); inverse of :meth:`from_dict`."""
        data: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            data[field.name] = list(value) if isinstance(value, tuple) else value
        data["labels"] = [{k: v for k, v in label.items() if v is not None} for label in self.labels]
        return json.loads(json.dumps(data))  # a deep copy: callers may edit it freely

    # --- derived values ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Output channels of the network: the background and one per label (``1 + len(labels)``)."""
        return 1 + len(self.labels)

    @property
    def channel_values(self) -> list[int]:
        """Label-map value of each output channel: ``[0, labels[0].value, labels[1].value, ...]``.

        ``np.asarray(card.channel_values)[logits.argmax(0)]`` turns the network output into a
        label map.
        """
        return [0, *self.label_values]

    @property
    def label_names(self) -> list[str]:
        return [label["name"] for label in self.labels]

    @property
    def label_values(self) -> list[int]:
        return [label["value"] for label in self.labels]

    @property
    def label_colors(self) -> list[tuple[float, float, float]]:
        return [tuple(label["color"]) for label in self.labels]  # type: ignore[misc]

    @property
    def segments(self) -> list[SegmentInfo]:
        """The labels as typed segments: name, value, colour and terminology of each structure."""
        from .segmentation_io import SegmentInfo  # it imports SimpleITK; the Slicer panel lists models without it

        return [
            SegmentInfo(str(label["name"]), int(label["value"]), tuple(label["color"]), label.get("terminology"))
            for label in self.labels
        ]

    @property
    def size_divisor(self) -> tuple[int, int, int]:
        """What every input size (D, H, W) must be divisible by for this architecture."""
        return network_size_divisor(self.architecture, self.architecture_params)

    def normalize_intensity(self, hu: Any) -> Any:
        """Map Hounsfield units to network input: ``(clip(hu, lo, hi) - subtract) / divide``.

        Accepts a NumPy array or a torch tensor and returns float32 of the same kind.

        Examples
        --------
        >>> import numpy as np
        >>> card = ModelCard.from_dict(_EXAMPLE_CARD)
        >>> card.normalize_intensity(np.array([-2000, 0, 500, 3000])).tolist()
        [-1.0, 0.0, 0.5, 1.0]
        """
        return IntensityNormalization.from_card(self).apply(hu)


_EXAMPLE_CARD: dict[str, Any] = {  # used by doctests
    "format_version": 1,
    "name": "example",
    "version": "1",
    "description": "",
    "architecture": "unet3d",
    "architecture_params": {"in_channels": 1, "out_channels": 2, "channels": [4, 8]},
    "in_channels": 1,
    "labels": [{"name": "bone", "value": 1, "color": [1, 1, 0.8]}],
    "spacing_ijk_mm": [2, 2, 2],
    "orientation": "LPS",
    "intensity": {"clip_hu": [-1000, 1000], "subtract": 0, "divide": 1000},
    "patch_size_kji": [8, 8, 8],
    "training": {},
    "validation_metrics": {},
    "license": "CC0-1.0",
    "weights_file": "weights.safetensors",
    "weights_sha256": "",
}


_card_init = ModelCard.__init__


def _keyword_only_init(self: ModelCard, **fields: Any) -> None:
    _card_init(self, **fields)


_keyword_only_init.__doc__ = _card_init.__doc__
ModelCard.__init__ = _keyword_only_init  # type: ignore[method-assign]  # every field by keyword, as kw_only=True did


# --- hashing and file access ------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """Lower-case hex SHA-256 of a file, read in chunks.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty"
    >>> _ = p.write_bytes(b"")
    >>> file_sha256(p)[:16]
    'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_card_file(path: Path) -> bytes:
    """The card's bytes; its size is checked (and a FIFO or device refused) before anything is read."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ModelPackageError(f"{path} is not a regular file")
        if st.st_size > MAX_CARD_BYTES:
            raise ModelPackageError(f"{path}: the card is {st.st_size} bytes; a model card is at most {MAX_CARD_BYTES} bytes")
        with open(path, "rb") as f:
            return f.read(MAX_CARD_BYTES + 1)  # a file that grew meanwhile is caught by _read_card
    except OSError as exc:
        raise ModelPackageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_card(data: bytes, source: str) -> ModelCard:
    if len(data) > MAX_CARD_BYTES:
        raise ModelPackageError(f"{source}: the card is {len(data)} bytes; a model card is at most {MAX_CARD_BYTES} bytes")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelPackageError(f"{source}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ModelPackageError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    return ModelCard.from_dict(parsed, source=source)


def _safe_member_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's path, or an error for anything that could escape a folder when extracted."""
    name = info.filename
    path = PurePosixPath(name)
    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
    if not name or "\\" in name or path.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in path.parts or is_link:
        raise ModelPackageError(
            f"unsafe entry {name!r} in the model archive: absolute paths, '..' components, drive letters, backslashes and "
            "links are refused"
        )
    return path


@contextlib.contextmanager
def _opened_package(path: str | os.PathLike, *, with_weights: bool) -> Iterator[tuple[ModelCard, Path | None, Path]]:
    """Yield (card, weights file or None, package path) for a folder, a model.json or a .zip.

    An archive is checked entry by entry first; the card is read from memory and the weights
    file, when asked for, is copied into a private temporary folder under a name we choose
    (never one taken from the archive), removed on exit.
    """
    package = Path(path)
    if not package.exists():
        raise ModelPackageError(f"model package not found: {package}")
    if package.is_file() and package.name == CARD_FILE:
        package = package.parent
    if package.is_dir():
        card_path = package / CARD_FILE
        if not card_path.is_file():
            raise ModelPackageError(
                f"no {CARD_FILE} in {package}; a model package is a folder holding {CARD_FILE} and the weights file"
            )
        card = _read_card(_read_card_file(card_path), str(card_path))
        weights = package / card.weights_file
        if with_weights and not weights.is_file():
            present = sorted(p.name for p in package.iterdir())
            raise ModelPackageError(
                f"weights file {card.weights_file!r} named by {card_path} is missing; the folder has {present}"
            )
        yield card, (weights if with_weights else None), package
        return
    if package.suffix.lower() != ".zip":
        raise ModelPackageError(f"{package} is not a model package: expected a folder with {CARD_FILE} or a .zip archive of one")
    try:
        archive = zipfile.ZipFile(package)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelPackageError(f"cannot open model archive {package}: {exc}") from exc
    with archive, tempfile.TemporaryDirectory(prefix="segdeep-model-") as tmp:
        members = {_safe_member_name(info): info for info in archive.infolist()}
        # The card sits at the root or in one top-level folder (a zipped package folder).
        cards = [p for p in members if p.name == CARD_FILE and len(p.parts) <= 2 and not members[p].is_dir()]
        if len(cards) != 1:
            raise ModelPackageError(
                f"model archive {package} must hold exactly one {CARD_FILE} at its root or in one top-level folder; found "
                f"{[str(c) for c in cards] or 'none'}"
            )
        source = f"{package}!{cards[0]}"
        info = members[cards[0]]
        if info.file_size > MAX_CARD_BYTES:
            raise ModelPackageError(
                f"{source}: the card is {info.file_size} bytes; a model card is at most {MAX_CARD_BYTES} bytes"
            )
        try:
            card = _read_card(archive.read(info), source)
            weights = None
            if with_weights:
                member = cards[0].parent / card.weights_file
                if member not in members:
                    raise ModelPackageError(f"weights file {str(member)!r} named by {source} is missing from the archive")
                if members[member].file_size > MAX_ARCHIVE_WEIGHTS_BYTES:
                    raise ModelPackageError(
                        f"{package}: {member} would unpack to {members[member].file_size} bytes, more than the "
                        f"{MAX_ARCHIVE_WEIGHTS_BYTES} accepted from an archive; unzip the package and load the folder"
                    )
                weights = Path(tmp) / card.weights_file  # a validated plain file name
                with archive.open(members[member]) as src, open(weights, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            raise ModelPackageError(f"model archive {package} is corrupt: {exc}") from exc
        yield card, weights, package


def load_model_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate only the card of a package (folder, ``model.json`` or ``.zip``).

    Cheap: no weights are read. Use it to list models with their labels and licences.
    """
    with _opened_package(path, with_weights=False) as (card, _, _):
        return card
