"""Training data: case discovery, partial labels, preloading at the model spacing, caching.

A *case* is one CT with binary masks of some structures. The folder convention is the one of
OpenKBP (``<root>/<case>/ct.nii.gz`` plus ``<structure>.nii.gz``); a CSV or JSON list can name
the files instead. A structure whose file is missing is **unknown** in that case (not
contoured), not background: :class:`PreparedCase` keeps a per-case availability vector that
the partial-label loss uses.

Preparation puts each case on the model grid exactly as inference does
(:func:`SegDeepLogic.model_input.prepare_ct`: the model orientation and spacing, centred on the CT,
anti-aliased; masks linear then >= 0.5 on the same grid), crops it to the body (plus a margin), and
stores it as int16 HU and a uint8 label map. :func:`load_cases` caches the result to an ``.npz`` so a second
run starts in seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..dicom_series import list_series
from ..errors import SegDeepError
from ..grid import orientation_code
from ..io import read_volume
from ..model_input import prepare_ct, resample_to_model_grid
from ..progress import CancelToken, ProgressCallback, report
from ..rtstruct import is_rtstruct, read_rtstruct
from ..volume import Volume

__all__ = [
    "CaseFiles",
    "PreparedCase",
    "find_cases",
    "load_cases",
    "prepare_case",
]

CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "image.nii.gz")


class TrainingDataError(SegDeepError, ValueError):
    """The training data is missing, empty or inconsistent."""


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """Paths of one case: the CT and the mask of each *contoured* structure."""

    case_id: str
    ct: Path
    masks: dict[str, Path]


@dataclasses.dataclass
class PreparedCase:
    """One case on the model grid (arrays ``[k, j, i]``, model orientation and spacing).

    Attributes
    ----------
    case_id : str
    image : ndarray of int16
        CT in HU, cropped to the body.
    labels : ndarray of uint8
        0 = background or unknown, ``c`` = structure ``structures[c - 1]``.
    available : ndarray of bool, shape (C,)
        Class ``c`` is contoured in this case (index 0, background, is always True).
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    available: np.ndarray


def _find_ct(folder: Path) -> Path | None:
    for name in CT_NAMES:
        if (folder / name).exists():
            return folder / name
    if _dicom_rtstructs(folder):
        return folder  # a DICOM case: CT series + RT Structure Set in one folder
    return None


def _dicom_rtstructs(folder: Path) -> list[tuple[Path, list[str]]]:
    """The RT Structure Sets (path, ROI names) of a folder that also holds an image series."""
    return _dicom_rtstructs_cached(str(folder), folder.stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _dicom_rtstructs_cached(name: str, mtime_ns: int) -> list[tuple[Path, list[str]]]:
    folder = Path(name)
    if not any(
        p.is_file() and not p.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".json", ".csv"))
        for p in folder.iterdir()
    ):
        return []

    try:
        series = list_series(folder)
    except SegDeepError:
        return []
    if not any(s.is_image for s in series):
        return []
    return [(s.files[0], s.roi_names) for s in series if s.modality == "RTSTRUCT"]


def _mask_path(folder: Path, structure: str) -> Path | None:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        p = folder / f"{structure}{suffix}"
        if p.exists():
            return p
    for path, rois in _dicom_rtstructs(folder) if folder.is_dir() else []:
        if any(r == structure or r.casefold() == structure.casefold() for r in rois):
            return path
    return None


def read_case_mask(case: CaseFiles, structure: str) -> Volume:
    """The reference mask of ``structure`` in ``case``, on the grid ``read_volume(case.ct)`` gives.

    A label file is read as it is; an RT Structure Set has the ROI named ``structure``
    (case-insensitive if unique) rasterised onto the CT series ``case.ct``.
    """

    path = case.masks[structure]
    if is_rtstruct(path):
        ct = case.ct if case.ct.is_dir() else None
        mask = next(iter(read_rtstruct(path, ct, names=[structure]).values()))
        return mask.with_array(mask.array.astype(np.uint8))
    return read_volume(path)


def find_cases(source: str | os.PathLike | Sequence[str | os.PathLike], structures: Sequence[str]) -> list[CaseFiles]:
    """List the cases of a data folder (OpenKBP layout) or of a CSV/JSON file list.

    Parameters
    ----------
    source : path or list of paths
        A folder whose sub-folders hold ``ct.nii.gz`` and ``<structure>.nii.gz``; or a CSV
        file with columns ``case``, ``ct`` and one column per structure (empty = not
        contoured); or a JSON list of ``{"case": ..., "ct": ..., "<structure>": ...}``.
        Relative paths in a list are relative to the list's folder. Several sources are
        concatenated.
    structures : sequence of str
        Structure names (mask file stems / column names).

    Returns
    -------
    list of CaseFiles, sorted by case id for folders (natural order), file order for lists.
    Cases without a CT are skipped; a folder without any case is an error.
    """
    if isinstance(source, (str, os.PathLike)):
        sources = [Path(source)]
    else:
        sources = [Path(s) for s in source]
    cases: list[CaseFiles] = []
    for src in sources:
        if not src.exists():
            raise TrainingDataError(f"no such data folder or list: {src}")
        if src.is_dir():
            folders = [d for d in src.iterdir() if d.is_dir() and _find_ct(d) is not None]
            folders.sort(key=_natural_key)
            for d in folders:
                masks = {}
                for s in structures:
                    p = _mask_path(d, s)
                    if p is not None:
                        masks[s] = p
                cases.append(CaseFiles(d.name, _find_ct(d), masks))  # type: ignore[arg-type]
        else:
            cases.extend(_cases_from_list(src, structures))
    if not cases:
        raise TrainingDataError(f"no case with a CT found in {', '.join(map(str, sources))}")
    return cases


def _natural_key(path: Path) -> tuple:
    parts = path.name.replace("-", "_").split("_")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _cases_from_list(path: Path, structures: Sequence[str]) -> list[CaseFiles]:
    if path.suffix.lower() == ".json":
        rows = json.loads(path.read_text())
    elif path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise TrainingDataError(f"{path}: a case list must be .csv or .json")
    out = []
    for n, row in enumerate(rows):
        if "ct" not in row:
            raise TrainingDataError(f"{path}: entry {n} has no 'ct' path")
        ct = (path.parent / row["ct"]).resolve()
        masks = {s: (path.parent / row[s]).resolve() for s in structures if row.get(s)}
        out.append(CaseFiles(str(row.get("case") or ct.parent.name), ct, masks))
    return out


def prepare_case(
    case: CaseFiles,
    structures: Sequence[str],
    spacing_ijk_mm: Sequence[float],
    orientation: str | None = "LPI",
    *,
    crop_hu: float = -500.0,
    margin_mm: float = 20.0,
) -> PreparedCase:
    """Read one case and put it on the model grid (see the module notes).

    Where structures overlap, the later one in ``structures`` wins.
    """
    ct = read_volume(case.ct)
    target = tuple(float(s) for s in spacing_ijk_mm)
    grid, hu = prepare_ct(ct, orientation or orientation_code(ct.direction), target)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    labels = np.zeros(image.shape, np.uint8)
    available = np.zeros(len(structures) + 1, bool)
    available[0] = True
    for c, name in enumerate(structures, start=1):
        if name not in case.masks:
            continue
        m = read_case_mask(case, name)
        if not m.same_grid(ct):
            raise TrainingDataError(f"case {case.case_id}: {case.masks[name].name} is not on the CT grid")
        labels[resample_to_model_grid(m.with_array((m.array > 0).astype(np.float32)), grid) >= 0.5] = c
        available[c] = True
    box = _body_box(image, crop_hu, [int(np.ceil(margin_mm / s)) for s in target[::-1]])
    return PreparedCase(case.case_id, np.ascontiguousarray(image[box]), np.ascontiguousarray(labels[box]), available)


def _body_box(image: np.ndarray, hu: float, margin: Sequence[int]) -> tuple[slice, ...]:
    body = image > hu
    if not body.any():
        return tuple(slice(None) for _ in range(3))
    box = []
    for axis in range(3):
        hit = np.nonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        box.append(slice(max(0, int(hit[0]) - margin[axis]), min(image.shape[axis], int(hit[-1]) + 1 + margin[axis])))
    return tuple(box)


def _cache_key(cases: Sequence[CaseFiles], structures: Sequence[str], spacing: Sequence[float], orientation: str | None) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([list(structures), [float(s) for s in spacing], orientation, 3]).encode())  # 3: the model grid
    for c in cases:
        for p in [c.ct, *sorted(c.masks.values())]:
            st = p.stat()
            h.update(f"{c.case_id}|{p}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def load_cases(
    cases: Sequence[CaseFiles],
    structures: Sequence[str],
    spacing_ijk_mm: Sequence[float],
    orientation: str | None = "LPI",
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[PreparedCase]:
    """Prepare every case (:func:`prepare_case`), reading/writing an ``.npz`` cache if asked.

    The cache file name is a hash of the file list (paths, sizes, times), the structures, the
    spacing and the orientation, so a changed dataset never reuses a stale cache.
    """
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"segdeep_cases_{_cache_key(cases, structures, spacing_ijk_mm, orientation)}.npz"
        if cache.exists():
            with np.load(cache) as z:
                return [
                    PreparedCase(str(cid), z[f"image_{n}"], z[f"labels_{n}"], z[f"available_{n}"])
                    for n, cid in enumerate(z["case_ids"])
                ]
    out = []
    for n, case in enumerate(cases):
        report(progress, n / max(1, len(cases)), f"loading {case.case_id}", cancel)
        out.append(prepare_case(case, structures, spacing_ijk_mm, orientation))
    report(progress, 1.0, "loaded", cancel)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"case_ids": np.array([c.case_id for c in out])}
        for n, c in enumerate(out):
            arrays[f"image_{n}"], arrays[f"labels_{n}"], arrays[f"available_{n}"] = c.image, c.labels, c.available
        with atomic_path(cache) as tmp:  # verified, fsync-ed, renamed into place only when complete
            np.savez(tmp, **arrays)
    return out
