"""Which case should a person correct first? A review queue from a batch output folder.

:func:`review_queue` ranks the cases of a ``segdeep batch`` output folder by the model's own
signals, recorded per case in ``cases/<case_id>/case.json``:

* **uncertainty inside each structure** -- the mean normalised entropy of the class
  probabilities inside the structure (:func:`SegDeepLogic.uncertainty.summarize_uncertainty`;
  0 = certain, 1 = all classes equally likely). Uncertainty concentrates on boundaries, where a
  voxel half in the structure is legitimately 50/50; a high mean *inside* is the warning sign
  (the same signal the out-of-distribution check uses). The case's uncertainty is its worst
  structure's: one badly drawn structure is reason enough to look. The uncertain fraction (of
  the structure and its 2 mm band, entropy above 0.5) and the boundary-band mean are given in
  the reasons and the batch records;
* **out-of-distribution verdict** (:mod:`SegDeepLogic.plausibility`): a "caution" adds
  :data:`OOD_WEIGHT` ``["caution"]`` to the score;
* **volume plausibility**: each structure whose volume is outside every training contour's
  adds :data:`VOLUME_FINDING_WEIGHT`.

The first version scored the uncertain fraction; on the bundled model it was 0 for 156 of the
175 contoured structures it found on the 33 OpenKBP validation CTs (the normalised entropy over 8
classes rarely passes 0.5), so it could not rank anything, and the mean entropy inside replaced it.
docs/review_queue.md reports how the queue ranks the real error there (not well at the case
level: small uncertain detections of structures without a clinical contour lead the queue).

Cases come in priority groups before the score: failed cases first (nothing to correct, but a
person must look), then cases whose output was withheld as a "mismatch" (not the anatomy the
model knows), then all others by descending score. Each :class:`ReviewItem` says why it is
where it is (``reasons``) and which structure to look at first (``most_uncertain_structure``).

The weights are set by hand, not fitted (``scripts/review_queue_eval.py`` measures the ranking).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import SegDeepError

__all__ = [
    "OOD_WEIGHT",
    "VOLUME_FINDING_WEIGHT",
    "ReviewItem",
    "ReviewQueueError",
    "case_score",
    "review_queue",
    "review_rows",
    "structure_score",
]

#: Added to the score of a case by its out-of-distribution verdict.
OOD_WEIGHT = {"ok": 0.0, "unchecked": 0.0, "caution": 0.02, "mismatch": 1.0}
#: Added per structure whose volume is outside the training contours' range.
VOLUME_FINDING_WEIGHT = 0.02
#: Priority groups (lower comes first).
PRIORITY_FAILED, PRIORITY_MISMATCH, PRIORITY_SCORED = 0, 1, 2


class ReviewQueueError(SegDeepError, ValueError):
    """The batch output folder cannot be ranked (missing, empty, or without uncertainty records)."""


@dataclasses.dataclass(frozen=True)
class ReviewItem:
    """One case of the review queue.

    Attributes
    ----------
    rank : int
        1 = review first.
    case_id : str
    score : float or None
        Higher = more in need of review (None for a failed case).
    priority : int
        0 failed, 1 out-of-distribution mismatch, 2 scored by uncertainty.
    most_uncertain_structure : str or None
        The structure to look at first (largest mean entropy inside).
    structure_scores : dict
        Mean entropy inside, per structure the network found.
    reasons : list of str
        Why the case is ranked where it is, most important first.
    ood_verdict : str or None
    status : str
        The batch status of the case ("done" or "failed").
    ct : str or None
        The case's CT (as the batch read it).
    segmentation : str or None
        The segmentation file the batch wrote (absolute), None if none.
    uncertainty : str or None
        The uncertainty map the batch wrote (``--uncertainty``), None if none.
    model : str or None
        The model package the batch used.
    batch : str or None
        The batch output folder (absolute).
    """

    rank: int
    case_id: str
    score: float | None
    priority: int
    most_uncertain_structure: str | None
    structure_scores: dict[str, float]
    reasons: list[str]
    ood_verdict: str | None
    status: str
    ct: str | None
    segmentation: str | None
    uncertainty: str | None
    model: str | None = None
    batch: str | None = None

    def as_row(self) -> dict[str, Any]:
        """A flat row for a CSV table (reasons joined by "; ")."""
        row = dataclasses.asdict(self)
        row["reasons"] = "; ".join(self.reasons)
        row["structure_scores"] = ";".join(f"{k}={v:.4f}" for k, v in self.structure_scores.items())
        return row


def structure_score(row: Mapping[str, Any]) -> float | None:
    """The review score of one structure: its mean entropy inside (None if the network did not find it).

    Parameters
    ----------
    row : mapping
        One :func:`~SegDeepLogic.uncertainty.summarize_uncertainty` row.

    Examples
    --------
    >>> structure_score({"voxels": 10, "mean_entropy_inside": 0.25, "uncertain_fraction": 0.0})
    0.25
    >>> structure_score({"voxels": 0, "mean_entropy_inside": None}) is None
    True
    """
    if not row.get("voxels") or row.get("mean_entropy_inside") is None:
        return None
    return float(row["mean_entropy_inside"])


def case_score(
    uncertainty_rows: Sequence[Mapping[str, Any]],
    ood_verdict: str | None = None,
    findings: Sequence[Mapping[str, Any]] = (),
) -> tuple[float, str | None, dict[str, float], list[str]]:
    """Score one case from its per-structure uncertainty and out-of-distribution findings.

    Returns
    -------
    score, most_uncertain_structure, structure_scores, reasons

    Examples
    --------
    >>> rows = [{"name": "a", "voxels": 5, "mean_entropy_inside": 0.1}, {"name": "b", "voxels": 5, "mean_entropy_inside": 0.3}]
    >>> s, worst, per, why = case_score(rows, "caution", [{"check": "volume", "structure": "a", "message": "a is small"}])
    >>> round(s, 3), worst
    (0.34, 'b')
    """
    per: dict[str, float] = {}
    fractions: dict[str, Any] = {}
    missing: list[str] = []
    for row in uncertainty_rows:
        value = structure_score(row)
        if value is None:
            missing.append(str(row.get("name")))
        else:
            per[str(row["name"])] = value
            fractions[str(row["name"])] = row.get("uncertain_fraction")
    reasons: list[str] = []
    worst = max(per, key=per.get) if per else None
    score = per[worst] if worst is not None else 0.0
    if worst is not None:
        others = sorted(((v, k) for k, v in per.items() if k != worst), reverse=True)[:2]
        text = f"most uncertain structure {worst}: mean entropy {per[worst]:.3f} inside"
        if fractions.get(worst) is not None:
            text += f", {fractions[worst]:.1%} of it and its 2 mm band above 0.5"
        if others:
            text += " (next: " + ", ".join(f"{k} {v:.3f}" for v, k in others) + ")"
        reasons.append(text)
    verdict = ood_verdict or "unchecked"
    if OOD_WEIGHT.get(verdict, 0.0):
        score += OOD_WEIGHT[verdict]
        reasons.append(f"out-of-distribution verdict {verdict}")
    for f in findings:
        if f.get("severity") == "info":
            continue
        if f.get("check") == "volume":
            score += VOLUME_FINDING_WEIGHT
            reasons.append(f"volume: {f.get('message')}")
        elif f.get("check") in ("image", "anatomy", "uncertainty"):
            reasons.append(f"{f.get('check')}: {f.get('message')}")
    if missing:
        reasons.append(f"not found by the network: {', '.join(missing)}")
    return score, worst, per, reasons


def _output(case_dir: Path, record: Mapping[str, Any], suffixes: tuple[str, ...]) -> str | None:
    for name in record.get("outputs") or []:
        if str(name).endswith(suffixes) and (case_dir / name).exists():
            return str((case_dir / name).resolve())
    return None


def review_queue(batch_dir: str | os.PathLike) -> list[ReviewItem]:
    """Rank the cases of a ``segdeep batch`` output folder for review (first = review first).

    Parameters
    ----------
    batch_dir : path-like
        A ``segdeep batch`` output folder (``cases/<case_id>/case.json``).

    Returns
    -------
    list of ReviewItem
        Sorted by priority group, then descending score, then case id.

    Raises
    ------
    ReviewQueueError
        The folder is not a batch output, holds no finished case, or its records predate the
        per-structure uncertainty (rerun the batch into a new folder).
    """
    from .cohort import CASES_DIR, SEGMENTATION_FILES, UNCERTAINTY_FILE, iter_records

    root = Path(batch_dir)
    if not root.is_dir():
        raise ReviewQueueError(f"batch output folder not found: {root}")
    if not (root / CASES_DIR).is_dir():
        raise ReviewQueueError(f"{root} is not a segdeep batch output folder (no {CASES_DIR}/ folder)")
    records = list(iter_records(root))
    if not records:
        raise ReviewQueueError(f"{root} holds no finished case (no {CASES_DIR}/<case>/case.json): run segdeep batch first")
    scored: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for record in records:
        case_id = str(record["case_id"])
        case_dir = root / CASES_DIR / case_id
        status = str(record.get("status"))
        verdict = record.get("ood_verdict")
        rows = record.get("uncertainty")
        item: dict[str, Any] = {
            "case_id": case_id,
            "status": status,
            "ood_verdict": verdict,
            "ct": record.get("ct"),
            "segmentation": _output(case_dir, record, tuple(SEGMENTATION_FILES.values())),
            "uncertainty": _output(case_dir, record, (UNCERTAINTY_FILE,)),
            "model": record.get("model"),
            "batch": str(root.resolve()),
        }
        if status == "failed" and verdict != "mismatch":  # no usable segmentation: a person must look
            item.update(
                score=None,
                priority=PRIORITY_FAILED,
                most_uncertain_structure=None,
                structure_scores={},
                reasons=[f"failed: {record.get('error_type')}: {record.get('error')}"],
            )
            scored.append(((PRIORITY_FAILED, 0.0, case_id), item))
            continue
        if rows is None:
            raise ReviewQueueError(
                f"case {case_id} in {root} has no per-structure uncertainty record (a batch from an older SegDeep): "
                "run segdeep batch again into a new output folder"
            )
        score, worst, per, reasons = case_score(rows, verdict, record.get("ood_findings") or [])
        priority = PRIORITY_MISMATCH if verdict == "mismatch" else PRIORITY_SCORED
        if priority == PRIORITY_MISMATCH:
            reasons.insert(0, "output withheld: the CT does not look like the anatomy the model knows (mismatch)")
        item.update(
            score=round(score, 4),
            priority=priority,
            most_uncertain_structure=worst,
            structure_scores={k: round(v, 4) for k, v in per.items()},
            reasons=reasons,
        )
        scored.append(((priority, -score, case_id), item))
    scored.sort(key=lambda t: t[0])
    return [ReviewItem(rank=n, **item) for n, (_, item) in enumerate(scored, start=1)]


def review_rows(items: Sequence[ReviewItem]) -> list[dict[str, Any]]:
    """Flat rows (one per case, in rank order) for a CSV or JSON table."""
    return [item.as_row() for item in items]
