"""Cohort batches: segment many CTs with one model, resumably, on one machine or on a Ray cluster.

:func:`segment_cohort` is the engine of ``segdeep batch``. It takes a folder of CTs or a CSV
manifest (:func:`discover_cases`, :func:`read_manifest`), and for every case writes, under
``OUTDIR/cases/<case_id>/``:

* the segmentation (``segmentation.seg.nrrd``, ``segmentation.nii.gz`` with sidecars, or, for a
  case given as a DICOM series, ``rtstruct.dcm`` / ``segmentation.dcm`` (DICOM SEG)), written
  by :func:`~SegDeepLogic.segment.segment_file` exactly as ``segdeep segment`` writes it;
* optionally the uncertainty map (``uncertainty.nii.gz``);
* the per-case report (``report.html``, ``report.json``: threshold comparison, reference
  comparison where a reference is given, out-of-distribution check, mesh print-readiness) and the
  print meshes (``meshes/<structure>.stl``), from :func:`~SegDeepLogic.report.build_report`;
* ``case.json``, written last and atomically: the case's completion record (status, error,
  hashes of the input, the options and the model, volumes, metrics, timings, device, fallbacks).

Every file goes through the verified writers of :mod:`SegDeepLogic.atomic`; a case's files form
one :func:`~SegDeepLogic.atomic.atomic_outputs` group, so a case that fails half-way leaves only
its ``case.json``. ``OUTDIR`` is checked before any work (:func:`check_output_folder`). A
reference may be a DICOM RT Structure Set (read by the report's loader, rasterised onto the
case's series; ``reference_labels`` names the ROI).

A case counts as finished only when its ``case.json`` exists and its hashes match the current
input, options and model; anything else is (re)done, so a batch killed at any moment resumes
with the same command. A failed case (unreadable CT, out-of-distribution mismatch, out of memory,
...) is recorded with its error and skipped on the next run unless ``retry_failed``. ``OUTDIR``
is locked while a batch runs. The summary (``summary.csv`` and, with pyarrow, ``summary.parquet``)
has one row per case of the input.

Work runs in this process (one worker), in ``workers`` processes (one per GPU by default on
CUDA), or as Ray tasks (``ray="local"`` or a cluster address) that send their files back to
the driver, which writes them into ``OUTDIR``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import atomic_outputs, atomic_path, check_outputs, write_bytes, write_text
from .errors import CancelledError, MismatchError, SegDeepError
from .options import SegmentOptions, options_from
from .progress import CancelToken, ProgressCallback

CASES_DIR = "cases"
RECORD_FILE = "case.json"
LOCK_FILE = ".segdeep-batch.lock"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
RECORD_VERSION = 1

#: Segmentation file name per output format (the ``--format`` of ``segdeep segment``).
#: A new format is one entry here, once :func:`~SegDeepLogic.segment.segment_file` writes it.
#: ``rtstruct`` and ``dicom-seg`` reference the CT's DICOM series: the case's CT must be one.
SEGMENTATION_FILES = {
    "seg.nrrd": "segmentation.seg.nrrd",
    "nii.gz": "segmentation.nii.gz",
    "rtstruct": "rtstruct.dcm",
    "dicom-seg": "segmentation.dcm",
}
#: Output formats that need the case's CT as a DICOM series folder.
DICOM_FORMATS = ("rtstruct", "dicom-seg")
UNCERTAINTY_FILE = "uncertainty.nii.gz"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
MESH_DIR = "meshes"

#: CT file suffixes found in an input folder (``.seg.nrrd`` files are segmentations, never CTs).
CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: In a case sub-folder: the CT is ``ct.<suffix>``, the optional reference ``reference.<suffix>``.
CASE_FOLDER_CT = "ct"
CASE_FOLDER_REFERENCE = "reference"

#: Manifest columns: required, optional and per-case options (with their types).
MANIFEST_REQUIRED = ("case_id", "ct")
MANIFEST_OPTIONAL = ("reference",)
CASE_OPTION_TYPES: dict[str, type] = {
    "tta": bool,
    "refine": bool,
    "keep_largest": bool,
    "min_island_mm3": float,
    "overlap": float,
    "allow_mismatch": bool,
    "compare_threshold": str,
    "reference_labels": dict,
}
#: Ranges of the numeric per-case options: those of the same ``segdeep segment`` options
#: (keyword arguments of :func:`~SegDeepLogic.commands._common.number_in`).
CASE_OPTION_RANGES: dict[str, dict[str, Any]] = {
    "min_island_mm3": {"low": 0},
    "overlap": {"low": 0, "high": 1, "high_open": True},
}
_SAFE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class BatchError(SegDeepError):
    """A batch cannot start: bad input folder or manifest, unusable output folder, ..."""


class ManifestError(BatchError, ValueError):
    """The manifest is unusable as a whole (wrong columns, duplicate or unsafe case ids, bad values)."""


class BatchLockedError(BatchError):
    """Another batch is writing to the same output folder."""


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One CT of a cohort.

    Attributes
    ----------
    case_id : str
        Unique, file-name-safe identifier (letters, digits, ``._-``); the case's output folder.
    ct : str
        CT file or DICOM series folder.
    reference : str or None
        Optional reference segmentation on the CT's grid: a ``.seg.nrrd``, a label map, or a
        DICOM RT Structure Set (rasterised onto the case's CT series, or onto the series it
        references next to it; ``reference_labels`` picks ROIs by name).
    options : dict
        Per-case options (see :data:`CASE_OPTION_TYPES`) overriding the batch's.
    """

    case_id: str
    ct: str
    reference: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def _is_ct_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.endswith(".seg.nrrd") and name.endswith(CT_SUFFIXES) and not name.startswith(".")


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in CT_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _named(folder: Path, stem: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_ct_file(p) and _strip_suffix(p.name).lower() == stem) + sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.lower() in (f"{stem}.seg.nrrd",)
    )


def _looks_like_dicom(folder: Path) -> bool:
    for p in folder.iterdir():
        if p.is_file():
            if p.suffix.lower() == ".dcm":
                return True
            try:
                with open(p, "rb") as f:
                    head = f.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                return True
    return False


def discover_cases(folder: str | os.PathLike) -> tuple[list[Case], list[str]]:
    """The cases of an input folder, sorted by case id, and notes on what was ignored.

    Discovery rules (one level deep, hidden entries ignored):

    * a CT file directly in ``folder`` (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``,
      ``.mhd``; not ``.seg.nrrd``) is a case named after the file without its suffix;
    * a sub-folder holding ``ct.<suffix>`` is a case named after the sub-folder; a
      ``reference.<suffix>`` or ``reference.seg.nrrd`` next to it is its reference segmentation
      (this is the OpenKBP-like layout ``pt_201/ct.nii.gz``);
    * otherwise a sub-folder holding DICOM files (``*.dcm`` or files with the DICOM preamble) is
      one case, a DICOM series, named after the sub-folder (the largest series is read);
    * anything else is ignored and listed in the notes.

    Parameters
    ----------
    folder : path-like
        The input folder.

    Returns
    -------
    cases, notes : list of Case, list of str

    Raises
    ------
    BatchError
        The folder does not exist, holds no case, or two entries give the same case id.
    """
    root = Path(folder)
    if not root.is_dir():
        raise BatchError(f"input folder not found: {root}")
    cases: list[Case] = []
    notes: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if _is_ct_file(entry):
                cases.append(Case(_strip_suffix(entry.name), str(entry)))
            elif not entry.name.lower().endswith((".csv", ".json", ".txt", ".md")):
                notes.append(f"ignored {entry.name}: not a CT file ({', '.join(CT_SUFFIXES)})")
            continue
        if not entry.is_dir():
            continue
        cts = [p for p in _named(entry, CASE_FOLDER_CT) if _is_ct_file(p)]
        if len(cts) > 1:
            notes.append(f"ignored {entry.name}/: several CT files ({', '.join(p.name for p in cts)})")
        elif cts:
            refs = _named(entry, CASE_FOLDER_REFERENCE)
            cases.append(Case(entry.name, str(cts[0]), str(refs[0]) if refs else None))
        elif _looks_like_dicom(entry):
            cases.append(Case(entry.name, str(entry)))
        else:
            notes.append(f"ignored {entry.name}/: no {CASE_FOLDER_CT}.<suffix> file and no DICOM files")
    if not cases:
        raise BatchError(f"no case found in {root} (expected CT files, <case>/ct.nii.gz or DICOM series folders)")
    _check_ids([c.case_id for c in cases], str(root))
    return sorted(cases, key=lambda c: c.case_id), notes


def _check_ids(ids: Sequence[str], source: str) -> None:
    bad = [i for i in ids if not i or i.startswith(".") or not set(i) <= _SAFE_ID_CHARS]
    if bad:
        raise ManifestError(
            f"{source}: case ids must be non-empty and use only letters, digits, '.', '_' and '-' (not starting with "
            f"'.'); bad: {', '.join(repr(b) for b in bad[:10])}"
        )
    seen: dict[str, int] = {}
    for i in ids:
        seen[i.lower()] = seen.get(i.lower(), 0) + 1
    dupes = sorted(i for i, n in seen.items() if n > 1)
    if dupes:
        raise ManifestError(f"{source}: duplicate case ids (compared ignoring case): {', '.join(dupes[:10])}")


def _parse_option(name: str, text: str, where: str) -> Any:
    kind = CASE_OPTION_TYPES[name]
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "y"):
            return True
        if low in ("0", "false", "no", "n"):
            return False
        raise ManifestError(f"{where}: column {name!r} must be true/false (or 1/0, yes/no), got {text!r}")
    if kind is float:
        import argparse

        from .commands._common import number_in

        try:
            return float(number_in(**CASE_OPTION_RANGES.get(name, {}))(text.strip()))
        except argparse.ArgumentTypeError as exc:
            raise ManifestError(f"{where}: column {name!r}: {exc}") from None
    if kind is dict:
        return parse_pairs(text.split(";"), where)
    return text.strip()


def parse_pairs(items: Sequence[str], where: str = "reference labels") -> dict[str, str]:
    """``["bone=mandible", ...]`` -> ``{"bone": "mandible"}`` (network structure -> reference segment).

    Examples
    --------
    >>> parse_pairs(["bone=mandible", " skull = cranium "])
    {'bone': 'mandible', 'skull': 'cranium'}
    """
    out = {}
    for item in items:
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ManifestError(f"{where}: expected STRUCTURE=SEGMENT pairs (separated by ';'), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def read_manifest(path: str | os.PathLike) -> list[Case]:
    """Read a CSV manifest: one row per case.

    Columns: ``case_id`` and ``ct`` (required), ``reference`` (optional) and the per-case
    options of :data:`CASE_OPTION_TYPES` (optional; an empty cell keeps the batch's setting).
    Relative paths are relative to the manifest's folder. Missing files are not an error here:
    such a case fails on its own, with its message, and the batch goes on.

    Raises
    ------
    ManifestError
        One message for the whole manifest: unreadable file, missing or unknown columns,
        empty, duplicate or unsafe case ids, or a bad option value (naming the row).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    allowed = (*MANIFEST_REQUIRED, *MANIFEST_OPTIONAL, *CASE_OPTION_TYPES)
    missing = [c for c in MANIFEST_REQUIRED if c not in columns]
    unknown = [c for c in columns if c not in allowed]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(repr(c) for c in unknown)}")
        raise ManifestError(
            f"manifest {path}: {'; '.join(parts)}; the columns are case_id, ct (required), reference and the per-case "
            f"options {', '.join(CASE_OPTION_TYPES)} (optional); found {', '.join(columns) or 'none'}"
        )
    cases = []
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            raise ManifestError(f"manifest {path}, line {line}: more cells than columns")
        if not any(row.values()):
            continue
        where = f"manifest {path}, line {line}"
        if not row["case_id"]:
            raise ManifestError(f"{where}: empty case_id")
        ct = row["ct"]
        if not ct:
            raise ManifestError(f"{where}: empty ct for case {row['case_id']!r}")
        options = {k: _parse_option(k, row[k], where) for k in CASE_OPTION_TYPES if row.get(k)}
        ref = row.get("reference") or None
        cases.append(Case(row["case_id"], str(path.parent / ct), str(path.parent / ref) if ref else None, options))
    if not cases:
        raise ManifestError(f"manifest {path} lists no case")
    _check_ids([c.case_id for c in cases], f"manifest {path}")
    return cases


def load_cases(source: str | os.PathLike | Sequence[Case]) -> tuple[list[Case], list[str]]:
    """Cases from a folder, a ``.csv`` manifest or a list of :class:`Case` (checked)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file():
            if path.suffix.lower() != ".csv":
                raise BatchError(f"{path} is a file but not a .csv manifest; give a folder of CTs or a CSV manifest")
            return read_manifest(path), []
        return discover_cases(path)
    cases = list(source)
    _check_ids([c.case_id for c in cases], "case list")
    return cases, []


# ------------------------------------------------------------------------------------------------
# Settings and hashes
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BatchSettings:
    """What is done to every case (per-case options of a manifest override some of it).

    Attributes
    ----------
    output_format : str
        Segmentation format, a key of :data:`SEGMENTATION_FILES`.
    uncertainty : bool
        Also write the uncertainty map.
    report : bool
        Write the report, the threshold and reference comparisons and the meshes.
    meshes : bool
        Write the print meshes (with the report).
    mesh_format : {"stl", "obj", "ply"}
    compare_threshold : str
        Threshold preset or ``"LOWER:UPPER"`` HU for the threshold comparison (default bone).
    reference_labels : dict, optional
        Network structure -> reference segment (default: matched by name, see
        :func:`~SegDeepLogic.report.build_report`).
    allow_mismatch : bool
        Keep the result of a CT the out-of-distribution check calls a mismatch (default: the
        case fails with that message and nothing but its report is written).
    segment_options : SegmentOptions
        The options of :func:`~SegDeepLogic.segment.segment_file` (device, precision, overlap,
        tta, refine, thresholds, keep_largest, ...); a dict is turned into one.
    """

    output_format: str = "seg.nrrd"
    uncertainty: bool = False
    report: bool = True
    meshes: bool = True
    mesh_format: str = "stl"
    compare_threshold: str = "bone"
    reference_labels: dict[str, str] | None = None
    allow_mismatch: bool = False
    segment_options: SegmentOptions = dataclasses.field(default_factory=SegmentOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.segment_options, SegmentOptions):
            self.segment_options = options_from(self.segment_options)

    def for_case(self, case: Case) -> BatchSettings:
        """These settings with the case's own options applied."""
        opts = dict(case.options)
        seg = {key: opts.pop(key) for key in ("tta", "refine", "keep_largest", "min_island_mm3", "overlap") if key in opts}
        return dataclasses.replace(self, segment_options=self.segment_options.replace(**seg), **opts)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change a case's outputs (the device, threads and batch size do not)."""
        seg = {k: v for k, v in self.segment_options.to_dict().items() if k not in _NOT_IDENTITY}
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "segment_options"}
        data = {k: _jsonable(v) for k, v in data.items()}
        data["segment_options"] = {k: _jsonable(v) for k, v in sorted(seg.items())}
        return data


# Settings that do not change a case's outputs (where and how fast it runs) or that the batch sets itself.
_NOT_IDENTITY = ("device", "num_threads", "batch_size", "precision", "progress", "cancel", "uncertainty", "allow_mismatch")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def path_sha256(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a file, or of a folder's files (names and contents, sorted); None if missing."""
    if path is None:
        return None
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        files = [(p.name, p)]
    elif p.is_dir():
        files = sorted((str(f.relative_to(p)), f) for f in p.rglob("*") if f.is_file())
    else:
        return None
    for name, f in files:
        h.update(name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _sha_of(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
# One case
# ------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 - Python 3.9


def _structure_columns(facts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in facts.get("structures", []):
        thr = s.get("threshold_comparison") or {}
        ref = s.get("reference_comparison") or {}
        out[s["name"]] = {
            "volume_ml": s.get("volume_ml"),
            "dice_threshold": thr.get("dice") if thr.get("applies") else None,
            "dice_reference": ref.get("dice"),
            "hd95_reference_mm": ref.get("hd95_mm"),
            "assd_reference_mm": ref.get("assd_mm"),
            "surface_dice_reference": ref.get("surface_dice"),
            "watertight": (s.get("mesh") or {}).get("watertight"),
        }
    return out


def process_case(
    case: Case,
    settings: BatchSettings,
    model: Any,
    case_dir: str | os.PathLike,
    *,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Segment one case into ``case_dir`` and return its record (without writing ``case.json``).

    Never raises for a problem of the case itself (unreadable CT, mismatch, out of memory, ...):
    the record then has ``status`` ``"failed"`` and the ``error``. Only cancellation and
    ``KeyboardInterrupt`` propagate.

    Parameters
    ----------
    case : Case
    settings : BatchSettings
        Already combined with the case's options (:meth:`BatchSettings.for_case`).
    model : ModelPackage
        The loaded model (loaded once per worker).
    case_dir : path-like
        The case's output folder (created).
    cancel : CancelToken, optional
    """

    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "case_id": case.case_id,
        "status": "failed",
        "error": None,
        "error_type": None,
        "ood_verdict": None,
        "device": None,
        "precision": None,
        "fallbacks": [],
        "structures": {},
        "withheld": [],
        "outputs": [],
        "timings_s": {},
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "started_utc": _now(),
    }
    t0 = time.perf_counter()
    try:
        # The case's files (segmentation, uncertainty, report, meshes) appear together or not at
        # all: a case that fails half-way leaves none of them (its case.json says why).
        with atomic_outputs():
            _case_work(case, settings, model, case_dir, record, t0, cancel)
    except (CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a case's failure is recorded, the batch goes on
        record["status"] = "failed"
        record["error"] = str(exc) or repr(exc)
        record["error_type"] = type(exc).__name__
        record["outputs"] = []
    record["timings_s"]["total"] = time.perf_counter() - t0
    record["finished_utc"] = _now()
    return record


def _case_work(
    case: Case,
    settings: BatchSettings,
    model: Any,
    case_dir: Path,
    record: dict[str, Any],
    t0: float,
    cancel: CancelToken | None,
) -> None:
    """The work of :func:`process_case`, filling ``record``; raises on a failure of the case."""
    from .report import ReportOptions, build_report, write_report
    from .segment import segment_file

    if not Path(case.ct).exists():
        raise BatchError(f"CT not found: {case.ct}")
    if case.reference and not Path(case.reference).exists():
        raise BatchError(f"reference segmentation not found: {case.reference}")
    if settings.output_format in DICOM_FORMATS and not Path(case.ct).is_dir():
        raise BatchError(
            f"--format {settings.output_format} references the CT's DICOM series, but this case's CT is the file "
            f"{Path(case.ct).name}: give the case as a DICOM series folder, or use --format seg.nrrd or nii.gz"
        )
    seg_path = case_dir / SEGMENTATION_FILES[settings.output_format]
    # The per-structure uncertainty summary is recorded in case.json for the review queue
    # (SegDeepLogic.review); the entropy is computed for the out-of-distribution check anyway.
    options = settings.segment_options.replace(uncertainty=True, allow_mismatch=settings.allow_mismatch)
    result = None
    try:
        result, written = segment_file(
            case.ct,
            seg_path,
            model,
            options=options,
            output_format=settings.output_format,
            uncertainty_path=case_dir / UNCERTAINTY_FILE if settings.uncertainty else None,
            overwrite=True,
            cancel=cancel,
        )
        record["outputs"] += [p.name for p in written]
        record["status"] = "done"
    except MismatchError as exc:  # recorded as a failure; the report still says why
        result = exc.result
        record["error"], record["error_type"] = str(exc), "MismatchError"
    record["timings_s"]["segment"] = time.perf_counter() - t0
    if result is not None:
        record["ood_verdict"] = (result.plausibility or {}).get("verdict")
        record["device"], record["precision"] = result.device, result.precision
        record["fallbacks"] = list(result.fallbacks)
        record["withheld"] = list(result.withheld)
        record["timings_s"]["network"] = float(result.timings_s.get("network", 0.0))
        record["uncertainty"] = [dict(row) for row in result.uncertainty_summary]
        record["ood_findings"] = [
            {k: f.get(k) for k in ("check", "severity", "message", "structure") if f.get(k) is not None}
            for f in (result.plausibility or {}).get("findings", [])
        ]
    if settings.report and result is not None:
        t = time.perf_counter()
        report_options = ReportOptions(
            threshold=settings.compare_threshold,
            export_dir=case_dir / MESH_DIR if settings.meshes and record["status"] == "done" else None,
            export_format=settings.mesh_format,
            title=f"SegDeep report: {case.case_id}",
        )
        facts = build_report(
            case.ct,
            result,
            report_options,
            reference=case.reference,
            reference_labels=settings.reference_labels,
            cancel=cancel,
        )
        write_report(facts, case_dir / REPORT_HTML, case_dir / REPORT_JSON, overwrite=True)
        record["outputs"] += [REPORT_HTML, REPORT_JSON] + [f"{MESH_DIR}/{p.name}" for p, _ in facts.meshes]
        record["structures"] = _structure_columns(facts.data)
        record["timings_s"]["report"] = time.perf_counter() - t
    elif result is not None:
        import numpy as np

        vox = result.labels.voxel_volume_mm3 / 1000.0
        values, counts = np.unique(result.labels.array, return_counts=True)
        found = dict(zip(values.tolist(), counts.tolist()))  # noqa: B905 - Python 3.9 has no strict=
        record["structures"] = {s.name: {"volume_ml": found.get(s.value, 0) * vox} for s in result.segments}
    for row in record.get("uncertainty") or []:  # summary columns <structure>_mean_entropy_boundary, ...
        columns = record["structures"].setdefault(row["name"], {})
        for key in UNCERTAINTY_COLUMNS:
            columns[key] = row.get(key)


#: Per-structure uncertainty values copied into case.json's ``structures`` (and so summary.csv).
UNCERTAINTY_COLUMNS = ("mean_entropy_inside", "mean_entropy_boundary", "uncertain_fraction")


# ------------------------------------------------------------------------------------------------
# Output folder: lock, records, summary
# ------------------------------------------------------------------------------------------------
class _Lock:
    """An exclusive lock on ``OUTDIR`` (``flock``; released by the OS when the process dies)."""

    def __init__(self, outdir: Path):
        self.path = outdir / LOCK_FILE
        self.file: Any = None

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open while the batch runs
        try:
            _try_lock(f)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            f.close()
            raise BatchLockedError(
                f"another segdeep batch is writing to {self.path.parent} ({holder}); wait for it to finish, or use "
                "another output folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {_now()}\n")
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.file is not None:
            self.file.close()  # releases the lock
            self.file = None


def _try_lock(f: Any) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def case_dir_of(outdir: str | os.PathLike, case_id: str) -> Path:
    """The output folder of a case."""
    return Path(outdir) / CASES_DIR / case_id


def read_record(outdir: str | os.PathLike, case_id: str) -> dict[str, Any] | None:
    """The case's completion record, or None when the case never finished (or the record is damaged)."""
    path = case_dir_of(outdir, case_id) / RECORD_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("case_id") == case_id else None


def _write_record(outdir: Path, record: Mapping[str, Any]) -> None:
    write_text(
        case_dir_of(outdir, record["case_id"]) / RECORD_FILE, json.dumps(record, indent=2, default=str, allow_nan=False) + "\n"
    )


def _clear_case(outdir: Path, case_id: str) -> Path:
    """Remove a case's record first (so it counts as unfinished), then its old outputs."""
    folder = case_dir_of(outdir, case_id)
    record = folder / RECORD_FILE
    if record.exists():
        record.unlink()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


SUMMARY_FIRST = [
    "case_id",
    "status",
    "error_type",
    "error",
    "ood_verdict",
    "device",
    "precision",
    "fallbacks",
    "time_total_s",
    "time_segment_s",
    "time_network_s",
    "time_report_s",
    "ct",
    "reference",
    "worker",
    "finished_utc",
    "input_sha256",
    "model_sha256",
]


def summary_row(case: Case, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """One summary row: the record flattened (structure columns ``<name>_<metric>``)."""
    if record is None:
        return {"case_id": case.case_id, "status": "pending", "ct": case.ct, "reference": case.reference}
    t = record.get("timings_s") or {}
    row: dict[str, Any] = {
        "case_id": case.case_id,
        "status": record.get("status"),
        "error_type": record.get("error_type"),
        "error": record.get("error"),
        "ood_verdict": record.get("ood_verdict"),
        "device": record.get("device"),
        "precision": record.get("precision"),
        "fallbacks": "; ".join(record.get("fallbacks") or []),
        "time_total_s": _round(t.get("total")),
        "time_segment_s": _round(t.get("segment")),
        "time_network_s": _round(t.get("network")),
        "time_report_s": _round(t.get("report")),
        "ct": record.get("ct", case.ct),
        "reference": record.get("reference", case.reference),
        "worker": record.get("worker"),
        "finished_utc": record.get("finished_utc"),
        "input_sha256": record.get("input_sha256"),
        "model_sha256": record.get("model_sha256"),
    }
    for name, values in (record.get("structures") or {}).items():
        for key, value in values.items():
            row[f"{name}_{key}"] = _round(value) if isinstance(value, float) else value
    return row


def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def write_summary(rows: Sequence[Mapping[str, Any]], outdir: str | os.PathLike, *, parquet: bool = True) -> list[Path]:
    """Write ``summary.csv`` (and ``summary.parquet`` when pyarrow is installed) atomically, each verified."""
    outdir = Path(outdir)
    columns = list(dict.fromkeys([*SUMMARY_FIRST, *(k for r in rows for k in r)]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    written = []
    written.append(write_text(outdir / SUMMARY_CSV, buf.getvalue()))
    if parquet:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return written
        table = pa.table({c: _arrow_column([r.get(c) for r in rows]) for c in columns})

        def verify(tmp: Path) -> None:  # read back: every row and column reached the disk
            meta = pq.read_metadata(str(tmp))
            if (meta.num_rows, meta.num_columns) != (table.num_rows, table.num_columns):
                raise SegDeepError(
                    f"{SUMMARY_PARQUET} reads back {meta.num_rows} rows x {meta.num_columns} columns, "
                    f"not {table.num_rows} x {table.num_columns}"
                )

        with atomic_path(outdir / SUMMARY_PARQUET, verify=verify) as tmp:
            pq.write_table(table, str(tmp))
        written.append(outdir / SUMMARY_PARQUET)
    return written


def _arrow_column(values: list[Any]) -> Any:
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


# ------------------------------------------------------------------------------------------------
# Executors
# ------------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _die_with_parent(parent_pid: int) -> None:
    """Linux: this worker is killed when the batch process dies (so no orphan writes into OUTDIR).

    If the batch died before this worker got here (it was still starting), exit at once.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _init_pool_worker(parent_pid: int, model_path: str, devices: Any, num_threads: int | None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch's business: finish the case
    _die_with_parent(parent_pid)
    from .segment import load_model

    _WORKER["device"] = devices.get() if devices is not None else None
    _WORKER["num_threads"] = num_threads
    _WORKER["model"] = load_model(model_path)


def _pool_case(case: Case, settings: BatchSettings, case_dir: str) -> dict[str, Any]:
    opts = settings.segment_options
    if _WORKER.get("device"):
        opts = opts.replace(device=_WORKER["device"])
    if _WORKER.get("num_threads") and not opts.num_threads:
        opts = opts.replace(num_threads=_WORKER["num_threads"])
    return process_case(case, dataclasses.replace(settings, segment_options=opts), _WORKER["model"], case_dir)


def _model_files(model_path: str) -> dict[str, bytes]:
    p = Path(model_path)
    if p.is_dir():
        return {f.name: f.read_bytes() for f in sorted(p.iterdir()) if f.is_file()}
    return {p.name: p.read_bytes()}


def _ray_case(case: Case, settings: BatchSettings, model_sha: str, model_files: dict[str, bytes]) -> tuple[dict, dict, str]:
    """Ray task: process one case in a private folder, return (record, files, that folder)."""
    from .segment import load_model

    cache = _WORKER.setdefault("ray_models", {})
    if model_sha not in cache:  # once per worker process
        folder = Path(tempfile.mkdtemp(prefix="segdeep-model-"))
        for name, data in model_files.items():
            (folder / name).write_bytes(data)
        target = folder if len(model_files) > 1 else folder / next(iter(model_files))
        cache[model_sha] = load_model(str(target))
    with tempfile.TemporaryDirectory(prefix=f"segdeep-case-{case.case_id}-") as tmp:
        record = process_case(case, settings, cache[model_sha], tmp)
        files = {
            str(f.relative_to(tmp)).replace(os.sep, "/"): f.read_bytes() for f in sorted(Path(tmp).rglob("*")) if f.is_file()
        }
        return record, files, str(Path(tmp).resolve())


def _relocate(data: bytes, old: str, new: str) -> bytes:
    """Replace the worker's folder by the case's folder in a text file (also in JSON-escaped form)."""
    out = data
    for a, b in ((old, new), (json.dumps(old)[1:-1], json.dumps(new)[1:-1])):
        out = out.replace(a.encode(), b.encode())
    return out


# ------------------------------------------------------------------------------------------------
# The batch
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CohortResult:
    """What :func:`segment_cohort` did.

    Attributes
    ----------
    outdir : Path
    rows : list of dict
        The summary rows, one per case of the input, in input order.
    done, failed, skipped, pending : list of str
        Case ids finished now, failed now, skipped (finished before, same hashes), and not run
        (stopped by cancellation).
    summary_files : list of Path
    notes : list of str
        What discovery ignored.
    stopped : bool
        True when cancelled (Ctrl-C): the cases in progress were finished, no new one started.
    """

    outdir: Path
    rows: list[dict[str, Any]]
    done: list[str]
    failed: list[str]
    skipped: list[str]
    pending: list[str]
    summary_files: list[Path]
    notes: list[str]
    stopped: bool = False


def default_workers(device: str = "auto") -> int:
    """One worker per CUDA GPU when the model runs on CUDA, else one."""
    if device == "cpu" or device.startswith("mps"):
        return 1
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        n = 0
    return max(1, n) if not device.startswith("cuda:") else 1


def segment_cohort(
    cases: str | os.PathLike | Sequence[Case],
    outdir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    *,
    settings: BatchSettings | None = None,
    workers: int | None = None,
    ray: str | None = None,
    ray_cpus_per_task: float = 1.0,
    retry_failed: bool = False,
    parquet: bool = True,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
) -> CohortResult:
    """Segment a cohort into ``outdir``; resumable, one summary row per case.

    Parameters
    ----------
    cases : path or sequence of Case
        An input folder (:func:`discover_cases`), a CSV manifest (:func:`read_manifest`) or cases.
    outdir : path-like
        Output folder: ``cases/<case_id>/...``, ``summary.csv``, ``summary.parquet``. Locked while
        the batch runs (:class:`BatchLockedError` for a second batch).
    model : path, optional
        Model package folder or ``.zip`` (default: the first bundled one). Loaded once per worker.
    settings : BatchSettings, optional
        What to write for each case (default :class:`BatchSettings`).
    workers : int, optional
        Worker processes on this machine (default :func:`default_workers`: one per CUDA GPU, else
        one, which runs in this process). Ignored with ``ray``.
    ray : str, optional
        ``"local"`` (start Ray on this machine, or use the Ray this process already started) or a
        cluster address (``"ray://head:10001"``, ``"auto"``): every case is a Ray task declaring
        ``ray_cpus_per_task`` CPUs and, when the model runs on CUDA, one GPU; a task whose worker
        dies is retried by Ray (3 times). CT and reference paths must be readable on the worker
        nodes; the outputs come back to this process and are written into ``outdir``.
    ray_cpus_per_task : float
        CPUs declared by each Ray task (also the network's thread count on CPU).
    retry_failed : bool
        Redo cases recorded as failed (by default they are skipped when their hashes match).
    parquet : bool
        Also write ``summary.parquet`` (needs pyarrow; silently skipped without it).
    progress : callable, optional
        ``progress(fraction, stage)`` after every case; ``stage`` reads ``"3 done, 1 failed"``.
    log : callable, optional
        Called with one line per case (and per note).
    cancel : CancelToken, optional
        When cancelled, no new case starts; those in progress finish and are recorded.

    Returns
    -------
    CohortResult
    """
    settings = settings or BatchSettings()
    if settings.output_format not in SEGMENTATION_FILES:
        raise BatchError(f"unknown output format {settings.output_format!r}; use one of {', '.join(SEGMENTATION_FILES)}")
    say = log or (lambda line: None)
    case_list, notes = load_cases(cases)
    for note in notes:
        say(note)
    from .segment import default_model_path

    model_path = str(model if model is not None else default_model_path())
    if not Path(model_path).exists():
        raise BatchError(f"model package not found: {model_path}")
    outdir = Path(outdir)
    check_output_folder(outdir, cases if isinstance(cases, (str, os.PathLike)) else None, model_path, case_list)
    with _Lock(outdir):
        return _run_batch(
            case_list,
            outdir,
            model_path,
            settings,
            workers,
            ray,
            ray_cpus_per_task,
            retry_failed,
            parquet,
            progress,
            say,
            cancel,
            notes,
        )


def check_output_folder(
    outdir: str | os.PathLike,
    source: str | os.PathLike | None,
    model_path: str | os.PathLike | None,
    cases: Sequence[Case] = (),
) -> None:
    """Before any work: ``outdir`` can be the batch's output folder (see :func:`~SegDeepLogic.atomic.check_outputs`).

    It may exist (a batch resumes into it) but must be a writable folder, and none of the
    inputs: the input folder or manifest, the model, a case's CT (a DICOM series folder) or
    reference. Raises :class:`~SegDeepLogic.errors.OutputError` naming every problem.
    """
    inputs: dict[str, Any] = {"INPUT": source, "model": model_path}
    for case in cases:
        inputs[f"CT of case {case.case_id}"] = case.ct
        inputs[f"reference of case {case.case_id}"] = case.reference
    check_outputs({"OUTDIR": outdir}, inputs=inputs, overwrite=True, folders=("OUTDIR",))


def _fingerprints(case: Case, settings: BatchSettings, model_sha: str) -> dict[str, Any]:
    case_settings = settings.for_case(case)
    ct_sha = path_sha256(case.ct)
    ref_sha = path_sha256(case.reference)
    options_sha = _sha_of(case_settings.fingerprint())
    return {
        "ct": case.ct,
        "reference": case.reference,
        "ct_sha256": ct_sha,
        "reference_sha256": ref_sha,
        "options_sha256": options_sha,
        "input_sha256": _sha_of([ct_sha, ref_sha, options_sha]),
        "model_sha256": model_sha,
    }


def _run_batch(
    cases: list[Case],
    outdir: Path,
    model_path: str,
    settings: BatchSettings,
    workers: int | None,
    ray: str | None,
    ray_cpus_per_task: float,
    retry_failed: bool,
    parquet: bool,
    progress: ProgressCallback | None,
    say: Callable[[str], None],
    cancel: CancelToken | None,
    notes: list[str],
) -> CohortResult:
    model_sha = path_sha256(model_path) or ""
    records: dict[str, dict[str, Any] | None] = {}
    todo: list[tuple[Case, dict[str, Any]]] = []
    skipped: list[str] = []
    for case in cases:
        prints = _fingerprints(case, settings, model_sha)
        old = read_record(outdir, case.case_id)
        same = old is not None and old.get("input_sha256") == prints["input_sha256"] and old.get("model_sha256") == model_sha
        if same and (old["status"] == "done" or (old["status"] == "failed" and not retry_failed)):
            records[case.case_id] = old
            skipped.append(case.case_id)
            continue
        records[case.case_id] = None
        todo.append((case, prints))
    if skipped:
        n_failed_before = sum(1 for c in skipped if (records[c] or {}).get("status") == "failed")
        say(
            f"{len(skipped)} case(s) already finished with the same input and model, skipped"
            + (f" ({n_failed_before} failed before; --retry-failed redoes them)" if n_failed_before else "")
        )
    done: list[str] = []
    failed: list[str] = []
    total = len(todo)

    def commit(case: Case, prints: dict[str, Any], record: dict[str, Any]) -> None:
        record.update(prints)
        record["record_version"] = RECORD_VERSION
        record["model"] = model_path
        record["segdeep_version"] = __version__
        record["python"] = platform.python_version()
        _write_record(outdir, record)
        records[case.case_id] = record
        (done if record["status"] == "done" else failed).append(case.case_id)
        n = len(done) + len(failed)
        t = (record.get("timings_s") or {}).get("total") or 0.0
        if record["status"] == "done":
            vols = ", ".join(
                f"{name} {v['volume_ml']:.1f} mL" for name, v in (record.get("structures") or {}).items() if v.get("volume_ml")
            )
            say(f"[{n}/{total}] {case.case_id}: done in {t:.1f} s ({vols or 'nothing found'}; OOD {record.get('ood_verdict')})")
        else:
            say(f"[{n}/{total}] {case.case_id}: FAILED ({record.get('error_type')}): {record.get('error')}")
        if progress is not None:
            progress(n / max(total, 1), f"{len(done)} done, {len(failed)} failed")

    stopped = False
    try:
        if todo:
            if ray is not None:
                stopped = _run_ray(todo, outdir, model_path, model_sha, settings, ray, ray_cpus_per_task, commit, cancel)
            else:
                n_workers = workers or default_workers(settings.segment_options.device)
                if n_workers <= 1:
                    stopped = _run_inline(todo, outdir, model_path, settings, commit, cancel)
                else:
                    stopped = _run_pool(todo, outdir, model_path, settings, n_workers, commit, cancel)
    finally:
        rows = [summary_row(c, records.get(c.case_id)) for c in cases]
        files = write_summary(rows, outdir, parquet=parquet)
    finished = set(done) | set(failed)
    pending = [c.case_id for c, _ in todo if c.case_id not in finished]
    if stopped and pending:
        say(f"stopped: {len(pending)} case(s) not started; run the same command again to continue")
    return CohortResult(outdir, rows, done, failed, skipped, pending, files, notes, stopped)


def _cancelled(cancel: CancelToken | None) -> bool:
    return cancel is not None and cancel.cancelled


def _run_inline(
    todo: list[tuple[Case, dict[str, Any]]],
    outdir: Path,
    model_path: str,
    settings: BatchSettings,
    commit: Callable[[Case, dict[str, Any], dict[str, Any]], None],
    cancel: CancelToken | None,
) -> bool:
    from .segment import load_model

    package = load_model(model_path)
    for case, prints in todo:
        if _cancelled(cancel):
            return True
        folder = _clear_case(outdir, case.case_id)
        commit(case, prints, process_case(case, settings.for_case(case), package, folder))
    return False


def _run_pool(
    todo: list[tuple[Case, dict[str, Any]]],
    outdir: Path,
    model_path: str,
    settings: BatchSettings,
    n_workers: int,
    commit: Callable[[Case, dict[str, Any], dict[str, Any]], None],
    cancel: CancelToken | None,
) -> bool:
    import concurrent.futures as cf
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    device = settings.segment_options.device
    devices = None
    threads = None
    gpus = default_workers(device) if device in ("auto", "cuda") else 0
    if gpus > 1 or (gpus == 1 and _cuda_available()):
        devices = ctx.Queue()
        for w in range(n_workers):
            devices.put(f"cuda:{w % gpus}")
    else:
        threads = max(1, (os.cpu_count() or 1) // n_workers)
    pending = list(todo)
    running: dict[Any, tuple[Case, dict[str, Any]]] = {}
    stopped = False
    with cf.ProcessPoolExecutor(
        n_workers, mp_context=ctx, initializer=_init_pool_worker, initargs=(os.getpid(), model_path, devices, threads)
    ) as pool:
        while pending or running:
            while pending and len(running) < n_workers and not _cancelled(cancel):
                case, prints = pending.pop(0)
                folder = _clear_case(outdir, case.case_id)
                running[pool.submit(_pool_case, case, settings.for_case(case), str(folder))] = (case, prints)
            if _cancelled(cancel) and pending:
                stopped = True
                pending = []
            if not running:
                break
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                case, prints = running.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # noqa: BLE001 - the worker died (e.g. killed for memory)
                    record = {
                        "case_id": case.case_id,
                        "status": "failed",
                        "error": f"the worker process died while segmenting this case: {exc!r}",
                        "error_type": type(exc).__name__,
                        "finished_utc": _now(),
                    }
                commit(case, prints, record)
    return stopped


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _run_ray(
    todo: list[tuple[Case, dict[str, Any]]],
    outdir: Path,
    model_path: str,
    model_sha: str,
    settings: BatchSettings,
    address: str,
    cpus_per_task: float,
    commit: Callable[[Case, dict[str, Any], dict[str, Any]], None],
    cancel: CancelToken | None,
) -> bool:
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs Ray: pip install 'segdeep[ray]'") from None
    started = False
    if not ray.is_initialized():
        package_root = str(Path(__file__).resolve().parents[1])
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}}
        if address == "local":
            ray.init(runtime_env=env, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        device = settings.segment_options.device
        gpus = ray.cluster_resources().get("GPU", 0) if device in ("auto", "cuda") or device.startswith("cuda") else 0
        opts = settings.segment_options
        if not opts.num_threads:
            opts = opts.replace(num_threads=max(1, int(cpus_per_task)))  # the CPUs the task declared
        if gpus:
            opts = opts.replace(device="cuda")  # Ray gives each task one GPU (CUDA_VISIBLE_DEVICES)
        elif device == "auto":
            opts = opts.replace(device="cpu")
        base = dataclasses.replace(settings, segment_options=opts)
        task = ray.remote(_ray_case).options(
            name="segdeep_case", num_cpus=cpus_per_task, num_gpus=1 if gpus else 0, max_retries=3, retry_exceptions=False
        )
        files_ref = ray.put(_model_files(model_path))
        capacity = max(1, int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1) // (1 if gpus else cpus_per_task)))
        pending = list(todo)
        running: dict[Any, tuple[Case, dict[str, Any]]] = {}
        stopped = False
        while pending or running:
            while pending and len(running) < capacity and not _cancelled(cancel):
                case, prints = pending.pop(0)
                running[task.remote(case, base.for_case(case), model_sha, files_ref)] = (case, prints)
            if _cancelled(cancel) and pending:
                stopped = True
                pending = []
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                case, prints = running.pop(ref)
                folder = _clear_case(outdir, case.case_id)
                try:
                    record, files, worker_dir = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - retries exhausted (worker lost) or Ray failure
                    record = {
                        "case_id": case.case_id,
                        "status": "failed",
                        "error": f"the Ray task failed after its retries: {exc}",
                        "error_type": type(exc).__name__,
                        "finished_utc": _now(),
                    }
                    files, worker_dir = {}, ""
                with atomic_outputs():  # the case's files appear together, before its record
                    for rel, data in files.items():
                        if rel.endswith((".json", ".html")) and worker_dir:
                            data = _relocate(data, worker_dir, str(folder.resolve()))
                        write_bytes(folder / rel, data)
                commit(case, prints, record)
        return stopped
    finally:
        if started:
            ray.shutdown()


def iter_records(outdir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every completion record under ``outdir`` (for tools that read a finished batch)."""
    for path in sorted((Path(outdir) / CASES_DIR).glob(f"*/{RECORD_FILE}")):
        record = read_record(outdir, path.parent.name)
        if record is not None:
            yield record
