"""Turn a reviewed, corrected segmentation into a training case that ``segdeep train`` reads.

The correction loop: ``segdeep batch`` segments a cohort, ``segdeep review-queue`` says which
case (and which structure) to look at first, a person corrects it (Slicer's Segment Editor), and
:func:`save_training_case` writes it into a dataset folder in the layout of
:mod:`SegDeepLogic.training.data`::

    <dataset_dir>/<case_id>/ct.nii.gz               the CT, unchanged (geometry kept, LPS)
    <dataset_dir>/<case_id>/<structure>.nii.gz      one 0/1 mask per *reviewed* structure
    <dataset_dir>/<case_id>/correction.json         provenance

A structure of the model's label set that was **not** reviewed gets no file: the training data
loader then marks it "not contoured" in that case (``PreparedCase.available`` False), and the
partial-label loss ignores it there -- the network's unchecked guess is never taught back to
it as truth. A reviewed structure that is empty (not in this CT) is written as an all-zero mask:
"checked, absent" is a label.

``segdeep train --init-from <package> --train <dataset_dir> --guard-validation <original validation>``
fine-tunes the model on the corrections (the loop's last step; see README).
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import atomic_outputs, check_outputs, write_text
from .errors import SegDeepError
from .io import write_volume
from .volume import Volume

__all__ = ["PROVENANCE_FILE", "CorrectionError", "save_training_case"]

#: The provenance file of a saved case (not read as a mask: the loader looks for ``<structure>.nii.gz``).
PROVENANCE_FILE = "correction.json"
CT_FILE = "ct.nii.gz"
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CorrectionError(SegDeepError, ValueError):
    """The correction cannot be saved as a training case (bad names, grids, or an existing case)."""


def _card_field(card: Any, name: str, default: Any = None) -> Any:
    if isinstance(card, Mapping):
        return card.get(name, default)
    return getattr(card, name, default)


def _label_names(card: Any) -> list[str]:
    names = _card_field(card, "label_names")
    if names is None:
        names = [d["name"] for d in _card_field(card, "labels", [])]
    return [str(n) for n in names]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 - Python 3.9


def save_training_case(
    ct: Volume,
    masks: Mapping[str, Volume | np.ndarray],
    model_card: Any,
    reviewed_structures: Sequence[str],
    dataset_dir: str | os.PathLike,
    case_id: str,
    *,
    annotator: str | None = None,
    model_weights_sha256: str | None = None,
    source: Mapping[str, Any] | None = None,
    notes: str = "",
    overwrite: bool = False,
) -> Path:
    """Save a corrected segmentation as a partially labelled training case.

    Parameters
    ----------
    ct : Volume
        The CT (HU), written unchanged as ``ct.nii.gz``.
    masks : mapping
        Structure name -> mask (Volume on the CT grid, or an array of the CT's shape); non-zero =
        inside. Must hold every reviewed structure; others are ignored.
    model_card : ModelCard or dict
        The card of the model that produced the starting segmentation: its label set is the
        dataset's, and its name, version and weights SHA-256 go into the provenance.
    reviewed_structures : sequence of str
        The structures the annotator checked (and corrected where needed), in the model's label
        set. Only these are written; the others stay unlabelled for this case.
    dataset_dir : path-like
        The dataset folder (created); the case goes to ``dataset_dir/case_id/``.
    case_id : str
        Letters, digits, ``.``, ``_``, ``-`` (a folder name).
    annotator : str, optional
        Who reviewed (default: the login name).
    model_weights_sha256 : str, optional
        The weights' SHA-256 when the card does not carry it.
    source : mapping, optional
        Where the case came from (e.g. ``{"ct": path, "segmentation": path}``), recorded.
    notes : str
        Free text, recorded.
    overwrite : bool
        Replace an existing case of that id (its masks of structures not reviewed now are
        removed, so they become unlabelled).

    Returns
    -------
    Path
        The case folder.

    Raises
    ------
    CorrectionError
        No or unknown reviewed structures, a reviewed structure without a mask, a mask off the CT
        grid, a bad case id, or an existing case without ``overwrite``.
    """
    label_set = _label_names(model_card)
    if not label_set:
        raise CorrectionError("the model card has no labels: cannot tell which structures the dataset holds")
    reviewed = list(dict.fromkeys(str(s) for s in reviewed_structures))
    if not reviewed:
        raise CorrectionError("no reviewed structure given: say which structures were checked (the others stay unlabelled)")
    unknown = [s for s in reviewed if s not in label_set]
    if unknown:
        raise CorrectionError(
            f"reviewed structure(s) {', '.join(unknown)} not in the model's label set ({', '.join(label_set)}): "
            "rename the segments to the model's structure names"
        )
    missing = [s for s in reviewed if s not in masks]
    if missing:
        raise CorrectionError(f"no mask for the reviewed structure(s) {', '.join(missing)}")
    if not _CASE_ID.match(str(case_id)):
        raise CorrectionError(f"case id {case_id!r}: use letters, digits, '.', '_' and '-' (at most 128, not starting with '.')")
    arrays: dict[str, Volume] = {}
    for name in reviewed:
        mask = masks[name]
        if isinstance(mask, Volume):
            if not mask.same_grid(ct):
                raise CorrectionError(
                    f"the mask of {name} is not on the CT's grid (shape {mask.array.shape} vs {ct.array.shape}, or spacing, origin "
                    "or direction differ): resample it onto the CT first"
                )
            array = mask.array
        else:
            array = np.asarray(mask)
            if array.shape != ct.array.shape:
                raise CorrectionError(f"the mask of {name} has shape {array.shape}, the CT {ct.array.shape}")
        arrays[name] = ct.with_array((np.asarray(array) != 0).astype(np.uint8))
    case_dir = Path(dataset_dir) / str(case_id)
    if case_dir.exists() and not overwrite:
        raise CorrectionError(f"{case_dir} exists: choose another case id, or overwrite it")
    files = {"ct": case_dir / CT_FILE, "provenance": case_dir / PROVENANCE_FILE}
    files.update({f"mask {n}": case_dir / f"{n}.nii.gz" for n in reviewed})
    check_outputs(files, inputs={}, overwrite=True)
    provenance = {
        "format": "segdeep-correction",
        "format_version": 1,
        "case_id": str(case_id),
        "saved_utc": _now(),
        "annotator": annotator or _login(),
        "model": {
            "name": _card_field(model_card, "name"),
            "version": _card_field(model_card, "version"),
            "weights_sha256": model_weights_sha256 or _card_field(model_card, "weights_sha256"),
            "labels": label_set,
        },
        "reviewed_structures": reviewed,
        "unlabelled_structures": [s for s in label_set if s not in reviewed],
        "label_files": {n: f"{n}.nii.gz" for n in reviewed},
        "voxels": {n: int(arrays[n].array.sum()) for n in reviewed},
        "ct": {"file": CT_FILE, "shape_kji": list(ct.array.shape), "spacing_ijk_mm": [float(s) for s in ct.spacing]},
        "coordinates": "LPS (the CT's geometry, unchanged)",
        "source": dict(source or {}),
        "notes": notes,
        "segdeep_version": __version__,
    }
    case_dir.mkdir(parents=True, exist_ok=True)
    stale = [case_dir / f"{s}{suffix}" for s in label_set if s not in reviewed for suffix in (".nii.gz", ".nii", ".nrrd", ".mha")]
    with atomic_outputs():
        write_volume(ct, files["ct"])
        for name in reviewed:
            write_volume(arrays[name], case_dir / f"{name}.nii.gz")
        write_text(files["provenance"], json.dumps(provenance, indent=2) + "\n")
    for path in stale:  # an earlier save's mask of a structure not reviewed now: it becomes unlabelled
        if path.exists():
            path.unlink()
    return case_dir


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container): record that
        return "unknown"
